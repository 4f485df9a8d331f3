"""What a disk holds at the top level, from util-linux's own probes: a partition table read by
sfdisk (MBR with logical partitions, GPT), a file system or other known content with no table
(blkid), or nothing recognised.

Both tools take an image file as readily as a disk, and blkid probes at an offset, so partitions
inside image files are identified without loop devices.
"""

import json
import subprocess
import typing

from ..errors import Error

# MBR types of extended partitions: containers of logical partitions, not partitions themselves.
# Their own sectors (the chain of extended boot records) lie outside every logical partition,
# so they are read in full like every other area between partitions.
EXTENDED_TYPES = {"5", "f", "85"}


class Entry(typing.NamedTuple):
    number: typing.Optional[int]   # None: the whole source, which holds no partition table
    start: int                     # bytes
    size: int
    type: typing.Optional[str]     # the table's type code or GUID


class Content(typing.NamedTuple):
    """What blkid recognised in a range: TYPE ('ext4', 'swap', 'crypto_LUKS'), or the partition
    table type (PTTYPE: 'gpt', 'dos') for a disk."""
    type: typing.Optional[str]
    table: typing.Optional[str]
    ambivalent: bool    # more than one signature: nothing can be trusted


def _run(argv):
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError:
        package = {"sfdisk": "fdisk", "blkid": "util-linux"}[argv[0]]
        raise Error(f"{argv[0]} is not installed (Debian package {package}); --used-only needs it "
                    "to read partition tables") from None


def probe(path, offset=0, size=None):
    """What blkid recognises in [offset, offset + size) of path (a file or a device)."""
    argv = ["blkid", "-p", "-o", "export", "-O", str(offset)]
    if size is not None:
        argv += ["-S", str(size)]
    result = _run(argv + [path])
    facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    # blkid exits 8 when signatures contradict each other ("ambivalent result").
    return Content(facts.get("TYPE"), facts.get("PTTYPE"), result.returncode == 8)


def partitions(path):
    """The Entries of the partition table of path, in order of start (logical partitions
    included, extended containers left out), and the table's sector size in bytes."""
    result = _run(["sfdisk", "--json", path])
    if result.returncode != 0:
        raise Error(f"sfdisk cannot read the partition table of {path}: "
                    f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no reason given'}")
    table = json.loads(result.stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    entries = []
    for number, part in enumerate(table.get("partitions", []), 1):
        # sfdisk names nodes PATH1, PATH2 (or PATHp1) in table order; the number is the node's.
        node = part.get("node", "")
        digits = len(node) - len(node.rstrip("0123456789"))
        entry_number = int(node[-digits:]) if digits else number
        if str(part.get("type", "")).lower() in EXTENDED_TYPES:
            continue
        entries.append(Entry(entry_number, part["start"] * sector, part["size"] * sector,
                             part.get("type")))
    return sorted(entries, key=lambda e: e.start), sector

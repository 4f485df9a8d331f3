"""Facts about block devices from the kernel: sizes, sector sizes, identity, partitions, what is
mounted or in use, the disk the running system lives on, and what the first bytes of a disk hold.

Devices are identified by their device number (st_rdev), which is what /proc and /sys speak.
"""

import fcntl
import os
import stat
import struct
import typing

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B


def device_size(fd):
    return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]


def sector_sizes(fd):
    """(logical, physical) sector size in bytes."""
    logical = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
    physical = struct.unpack("I", fcntl.ioctl(fd, BLKPBSZGET, b"\0" * 4))[0]
    return logical, physical


def _devno(rdev):
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def sysfs_path(rdev):
    """/sys/devices/... directory of a block device number, or None when sysfs doesn't know it."""
    path = f"/sys/dev/block/{_devno(rdev)}"
    return os.path.realpath(path) if os.path.exists(path) else None


def _read_sysfs(path):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").strip()
        return text or None
    except OSError:
        return None


def _rdev_of_sysfs(path):
    text = _read_sysfs(os.path.join(path, "dev"))
    if not text:
        return None
    major, minor = text.split(":")
    return os.makedev(int(major), int(minor))


def device_name(rdev):
    """Kernel name ('sda1') of a device number, or its number when sysfs doesn't know it."""
    path = sysfs_path(rdev)
    return os.path.basename(path) if path else _devno(rdev)


def is_partition(rdev):
    path = sysfs_path(rdev)
    return bool(path) and os.path.exists(os.path.join(path, "partition"))


def whole_disk(rdev):
    """The disk a partition belongs to; a whole disk is its own."""
    if is_partition(rdev):
        parent = _rdev_of_sysfs(os.path.dirname(sysfs_path(rdev)))
        if parent is not None:
            return parent
    return rdev


def partitions(rdev):
    """[(rdev, name, start_byte, size_bytes)] of a disk's partitions, in order of start."""
    path = sysfs_path(rdev)
    found = []
    if not path or is_partition(rdev):
        return found
    for name in os.listdir(path):
        child = os.path.join(path, name)
        if os.path.exists(os.path.join(child, "partition")):
            start = int(_read_sysfs(os.path.join(child, "start")) or 0) * 512
            size = int(_read_sysfs(os.path.join(child, "size")) or 0) * 512
            found.append((_rdev_of_sysfs(child), name, start, size))
    return sorted(found, key=lambda p: p[2])


def identity(rdev):
    """{'model': ..., 'serial': ...} as far as sysfs exposes them (None where it doesn't)."""
    path = sysfs_path(whole_disk(rdev)) or ""
    model = _read_sysfs(os.path.join(path, "device", "model"))
    serial = (_read_sysfs(os.path.join(path, "device", "serial"))
              or _read_sysfs(os.path.join(path, "serial"))
              or _read_sysfs(os.path.join(path, "device", "wwid")))
    return {"model": model, "serial": serial}


def _stacked(starts, link):
    """Devices reachable from starts through sysfs `link` directories ('holders': what is stacked
    on top, device mapper or md; 'slaves': what lies below). Returns (all seen, the leaves)."""
    seen, leaves = set(), set()
    todo = list(starts)
    while todo:
        dev = todo.pop()
        if dev is None or dev in seen:
            continue
        seen.add(dev)
        path = sysfs_path(dev)
        links = os.path.join(path, link) if path else ""
        names = os.listdir(links) if links and os.path.isdir(links) else []
        todo.extend(_rdev_of_sysfs(os.path.join(links, name)) for name in names)
        if not names:
            leaves.add(dev)
    return seen, leaves


def _holders_tree(rdev):
    """The device, its partitions, and everything stacked on them, as rdevs."""
    return set(_ranged_holders(rdev, 0, None))


def _ranged_holders(rdev, start, end):
    """{device: (start, end)} of the device, its partitions and everything stacked on them, each
    with the byte range of rdev it shows (end None: to the end). Something stacked on a partition
    (device mapper, md) is given the partition's whole range: where inside it sits is its own
    business, and the whole range is the safe answer."""
    found = {}
    for member, first, last in [(rdev, start, end)] + [
            (part, start + part_start, start + part_start + part_size)
            for part, _, part_start, part_size in partitions(rdev)]:
        for dev in _stacked([member], "holders")[0]:
            found.setdefault(dev, (first, last))
    return found


def _underlying_disks(rdev):
    """Whole disks below a device, following device-mapper and md slaves down to the hardware."""
    return {whole_disk(dev) for dev in _stacked([rdev], "slaves")[1]}


def mounts():
    """[(rdev, mount_point, read_write, source)] for every mount backed by a device number."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            major, minor = fields[2].split(":")
            options = fields[5].split(",")
            source = fields[sep + 2] if len(fields) > sep + 2 else ""
            device = os.makedev(int(major), int(minor))
            if int(major) == 0 and source.startswith("/dev/"):
                # btrfs (and overlay-style) mounts report an anonymous device number: the
                # device they are mounted from is the source's.
                try:
                    st = os.stat(_unescape(source))
                    if stat.S_ISBLK(st.st_mode):
                        device = st.st_rdev
                except OSError:
                    pass
            found.append((device, _unescape(fields[4]), "rw" in options, source))
    return found


def _unescape(text):
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return text.encode().decode("unicode_escape") if "\\" in text else text


def swap_devices():
    found = set()
    try:
        with open("/proc/swaps", encoding="utf-8", errors="replace") as f:
            next(f, None)
            for line in f:
                path = line.split()[0]
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISBLK(st.st_mode):
                    found.add(st.st_rdev)
    except OSError:
        pass
    return found


def loop_backings():
    """{loop device: (os.stat_result of what backs it (a file or a block device), offset,
    sizelimit or None)} of the attached loop devices; one whose backing file is gone or out of
    reach is left out."""
    found = {}
    for name in os.listdir("/sys/block"):
        backing = _read_sysfs(f"/sys/block/{name}/loop/backing_file")
        if backing is None:
            continue  # not a loop device, or one with nothing attached
        try:
            offset = int(_read_sysfs(f"/sys/block/{name}/loop/offset") or 0)
            sizelimit = int(_read_sysfs(f"/sys/block/{name}/loop/sizelimit") or 0) or None
            found[_rdev_of_sysfs(f"/sys/block/{name}")] = (os.stat(backing), offset, sizelimit)
        except (OSError, ValueError):
            continue
    return found


class View(typing.NamedTuple):
    """A block device through which part of a disk or file can be read or written."""
    chain: list   # (subject, predicate, object) steps from the disk or file to it; see data_views
    start: int    # the byte range of the disk or file it shows; end None: to the end
    end: typing.Optional[int]


def data_views(rdev=None, file_stat=None, name=None):
    """Every block device through which the data of the device rdev (or of the file whose stat is
    file_stat, called name) can be read or written, as {device: View}: the device itself, its
    partitions and what device mapper or md stack on them (sysfs holders), and loop devices backed
    by any of these or by the file, followed through loops backed by loops, at any offset. The
    kernel links no holders for loop devices: /sys/block/loopN/loop/backing_file names them.
    A view's chain lists the steps (subject, 'backs /dev/loopN', '/dev/loopN') from the device or
    file to a loop device; it is empty for the device, its partitions and holders."""
    backings = loop_backings()
    views = {}
    todo = []

    def add(dev, chain, start, end):
        for member, (first, last) in _ranged_holders(dev, start, end).items():
            if member not in views:
                views[member] = View(chain, first, last)
                todo.append(member)

    def backed(matches, subject, view):
        for loop, (backing, offset, sizelimit) in backings.items():
            if loop not in views and matches(backing):
                loop_name = f"/dev/{device_name(loop)}"
                start = view.start + offset
                ends = [end for end in (view.end, sizelimit and start + sizelimit) if end]
                add(loop, view.chain + [(subject, f"backs {loop_name}", loop_name)], start,
                    min(ends) if ends else None)

    if rdev is not None:
        add(rdev, [], 0, None)
    else:
        backed(lambda st: not stat.S_ISBLK(st.st_mode)
               and (st.st_dev, st.st_ino) == (file_stat.st_dev, file_stat.st_ino), name,
               View([], 0, None))
    while todo:
        dev = todo.pop()
        backed(lambda st: stat.S_ISBLK(st.st_mode) and st.st_rdev == dev,
               f"/dev/{device_name(dev)}", views[dev])
    return views


def _describe_chain(steps):
    """'/dev/loop2 backs /dev/loop6, which backs /dev/loop7, which is mounted at /mnt'."""
    text, previous = "", None
    for subject, predicate, obj in steps:
        if previous is None:
            text = f"{subject} {predicate}"
        elif subject == previous:
            text += f", which {predicate}"
        else:
            text += f"; {subject} {predicate}"
        previous = obj
    return text


class Use(typing.NamedTuple):
    """A mount or swap area on a view of a disk or file."""
    description: str   # '/dev/loop5 is mounted at /mnt/x (read-write)', with the chain to it
    start: int         # the byte range of the disk or file it uses; end None: to the end
    end: typing.Optional[int]
    writable: bool     # mounted read-write, or swap


def uses(rdev=None, file_stat=None, name=None):
    """The mounts and swap areas on the device (or the file: see data_views) or anything on it or
    backed by it, as Use. Devices stacked on it (LVM, RAID, LUKS) appear as in use through their
    own mounts, loop devices as chains ('tgt.img backs /dev/loop5, which is mounted at /mnt/x
    (read-write)')."""
    views = data_views(rdev, file_stat, name)
    found = []
    for dev, point, read_write, _ in mounts():
        if dev in views:
            found.append(Use(_describe_chain(views[dev].chain + [
                (f"/dev/{device_name(dev)}",
                 f"is mounted at {point} ({'read-write' if read_write else 'read-only'})", None)]),
                views[dev].start, views[dev].end, read_write))
    for dev in swap_devices() & views.keys():
        found.append(Use(_describe_chain(views[dev].chain + [
            (f"/dev/{device_name(dev)}", "is in use as swap", None)]),
            views[dev].start, views[dev].end, True))
    return found


def uses_of(rdev=None, file_stat=None, name=None):
    """Human descriptions of the uses() of a device or file."""
    return [use.description for use in uses(rdev, file_stat, name)]


def read_write_mounts(rdev):
    """[(device name, mount point)] of read-write mounts of the device or its partitions."""
    tree = _holders_tree(rdev)
    return [(device_name(dev), point) for dev, point, read_write, _ in mounts()
            if dev in tree and read_write]


def system_disks():
    """Whole disks holding the root file system (the disk the running system lives on)."""
    root = os.stat("/").st_dev
    disks = _underlying_disks(root) if sysfs_path(root) else set()
    # Root on btrfs reports an anonymous device number; mounts() gives the device behind it.
    for dev, point, _, _ in mounts():
        if point == "/" and sysfs_path(dev):
            disks |= _underlying_disks(dev)
    return disks


# ---------------------------------------------------------------------------------------------
# What the first bytes of a disk hold

SIGNATURE_BYTES = 64 << 10

# (offset, magic, description)
_SIGNATURES = [
    (1080, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (65600, b"_BHRfS_M", "a btrfs file system"),
    (3, b"NTFS    ", "an NTFS file system"),
    (3, b"EXFAT   ", "an exFAT file system"),
    (82, b"FAT32   ", "a FAT32 file system"),
    (54, b"FAT12   ", "a FAT file system"),
    (54, b"FAT16   ", "a FAT file system"),
    (32769, b"CD001", "an ISO 9660 file system"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (536, b"LVM2 001", "an LVM physical volume"),
    (4086, b"SWAPSPACE2", "a swap area"),
    (0, b"\x28\xb5\x2f\xfd", "zstd data"),
    (0, b"\x5b\x2a\x4d\x18\x14\x00\x00\x00mirrorpipe", "a mirrorpipe compressed stream"),
]


def partition_table(data, sector_size=512):
    """'gpt', 'mbr' or None for the first sectors of a disk."""
    if data[sector_size:sector_size + 8] == b"EFI PART" or data[4096:4104] == b"EFI PART":
        return "gpt"
    if len(data) >= 512 and data[510:512] == b"\x55\xaa":
        entries = [data[446 + 16 * i:462 + 16 * i] for i in range(4)]
        # A FAT or NTFS boot sector also ends in 55 AA; a partition table has valid entries.
        valid = [e for e in entries if e[4] != 0 and e[0] in (0x00, 0x80)]
        if valid and len(valid) == sum(1 for e in entries if e[4] != 0):
            return "mbr"
    return None


def describe_contents(data, sector_size=512):
    """A phrase for what the first SIGNATURE_BYTES of a disk hold ('a GPT partition table',
    'an ext2/3/4 file system'), or None when they are blank or unrecognised."""
    table = partition_table(data, sector_size)
    if table:
        return f"{'a GPT' if table == 'gpt' else 'an MBR'} partition table"
    for offset, magic, description in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return description
    return None

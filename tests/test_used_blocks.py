"""read-disk --used-only on real file systems (ext4, xfs, btrfs, vfat, ntfs), alone and as
partitions of GPT and MBR disks with a swap area and a partition of unknown type: restored by the
stock tools and by write-disk, every file identical, each file system clean by its own fsck, the
partition table identical, the free space zeros and a deleted file's contents gone; mounted file
systems; damaged bitmaps read in full."""

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy
import pytest

from conftest import MIB, assert_one_line_error, need_root, need_tools, sh
from filesystems import (BUILDERS, MARKER, TOOLS, attached, build_disk, ext4_free_extents,
                         fsck_command, files_of, make_tree, mounted, run, swap_image, unknown_image)
from mirrorpipe.stream.streams import is_zero

KINDS = list(BUILDERS)
# blkid's TYPE for each file system built here
BLKID_TYPE = {"ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs", "vfat": "vfat", "ntfs": "ntfs",
              "swap": "swap", "unknown": None}
# The tool that may give each file system's map (partclone.fat is partclone.vfat; btrfs: its
# own dump-tree, exact where partclone.btrfs keeps whole 16 KiB nodes around each extent).
MAP_TOOLS = {"ext4": ("dumpe2fs",), "xfs": ("partclone.xfs",), "btrfs": ("btrfs",),
             "vfat": ("partclone.vfat", "partclone.fat"), "ntfs": ("partclone.ntfs",)}
# What the kernel must have to mount each (vfat is read with mtools, never mounted).
KERNEL_FILE_SYSTEM = {"ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs", "ntfs": "fuseblk"}
SUMMARY = re.compile(r"read-disk: read [\d.]+ \w+ of [\d.]+ \w+: used blocks of (\d+) file systems?"
                     r"(?: and the header of \d+ swap areas?)?; [\d.]+ \w+ of free space written as zeros")


def need_file_systems(*kinds):
    """Skip unless the tools for kinds are here and the kernel mounts those that need a mount."""
    need_root()
    need_tools("blkid", "sfdisk", "zstd",
               *(tool for kind in kinds for tool in TOOLS[kind] + MAP_TOOLS[kind][:1]))
    with open("/proc/filesystems") as f:
        known = f.read().split()
    lacking = [KERNEL_FILE_SYSTEM[kind] for kind in kinds
               if kind in KERNEL_FILE_SYSTEM and KERNEL_FILE_SYSTEM[kind] not in known]
    if lacking:
        pytest.skip(f"this kernel cannot mount {', '.join(lacking)}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    need_root()
    return tmp_path_factory.mktemp("used_blocks")


@pytest.fixture(scope="module")
def tree(work):
    return make_tree(work / "tree")


@pytest.fixture(scope="module")
def file_system(work, tree):
    """Factory: the image of a file system of a kind (built once), holding tree and MARKER
    in its free space."""
    built = {}

    def image(kind):
        need_file_systems(kind)
        if kind not in built:
            built[kind] = work / f"{kind}.img"
            BUILDERS[kind](built[kind], tree)
        return built[kind]

    return image


class Backup:
    """`read-disk --used-only --info FILE SOURCE | compress`, restored by `zstd -d | dd` (.image)
    and by `compress -d | write-disk`, which must give the same bytes."""

    def __init__(self, directory, source):
        directory.mkdir()
        self.source = source
        result = sh(f"read-disk --used-only --info {directory}/info.json {source} "
                    f"| compress -q > {directory}/image.zst")
        assert result.returncode == 0, result.stderr_text
        self.stderr = result.stderr_text
        self.info = json.loads((directory / "info.json").read_text())
        self.image = directory / "stock.img"
        sh(f"zstd -d -q < {directory}/image.zst | dd of={self.image} bs=1M conv=sparse status=none",
           check=True)
        written = directory / "write-disk.img"
        sh(f"compress -d < {directory}/image.zst | write-disk -q {written}", check=True)
        assert sh(f"cmp {self.image} {written}").returncode == 0, "write-disk restored other bytes than dd"
        written.unlink()


def zeroed_bytes(restored, source, start=0, size=None):
    """Bytes of [start, start + size) that the restore holds as zeros where the source held
    anything else; every other sector of the restore must be the source's own."""
    size = os.path.getsize(source) - start if size is None else size
    zeroed = 0
    with open(restored, "rb") as r, open(source, "rb") as s:
        for offset in range(start, start + size, 4 * MIB):
            length = min(4 * MIB, start + size - offset)
            got = numpy.frombuffer(os.pread(r.fileno(), length, offset), numpy.uint8).reshape(-1, 512)
            had = numpy.frombuffer(os.pread(s.fileno(), length, offset), numpy.uint8).reshape(-1, 512)
            same = (got == had).all(axis=1)
            zero = ~got.any(axis=1)
            wrong = numpy.flatnonzero(~(same | zero))
            assert not len(wrong), \
                f"sector at byte {offset + int(wrong[0]) * 512} is neither the source's nor zeros"
            zeroed += int((~same).sum()) * 512
    return zeroed


def marker_at(path):
    """The offset of the first MARKER in the file at path, or None."""
    with open(path, "rb") as f:
        for offset in range(0, os.path.getsize(path), 64 * MIB):
            found = os.pread(f.fileno(), 64 * MIB, offset).find(MARKER)
            if found >= 0:      # the deleted file was MARKER over and over: a whole copy in any block
                return offset + found
    return None


def plain_image_holds_marker(source):
    """Whether MARKER is in `read-disk SOURCE`'s output (without it there, a test of its absence
    shows nothing)."""
    return sh(f"read-disk {source} | grep -c -a -F {MARKER.decode()}").returncode == 0


def check_file_system(restored, kind, tree, start=0, size=None):
    """The file system at [start, start + size) of restored: every file of tree identical, clean by
    its own fsck, and (ext4, whose free blocks dumpe2fs lists) every free block zeros."""
    with attached(restored, start, size) as device:
        with files_of(device, kind) as files:
            # vfat has no symlinks (mcopy stored the file it points to): compared dereferenced.
            diff = sh(f"diff -r -x lost+found {'' if kind == 'vfat' else '--no-dereference'} {tree} {files}")
            assert diff.returncode == 0, f"{kind}: files differ: {diff.stdout.decode()[:2000]}"
        fsck = subprocess.run(fsck_command(kind, device), capture_output=True, text=True)
        assert fsck.returncode == 0, \
            f"{kind}: {' '.join(fsck.args)}: {fsck.stdout[-2000:]}{fsck.stderr[-2000:]}"
        if kind == "ext4":
            with open(device, "rb") as f:
                for offset, length in ext4_free_extents(device):
                    assert is_zero(os.pread(f.fileno(), length, offset)), \
                        f"free ext4 block at {offset} not zero"


def check_used_blocks_info(entry, kind, used_at_least):
    """An --info partition entry of a file system read by its used blocks."""
    assert entry["filesystem"] == BLKID_TYPE[kind]
    assert entry["read"] == "used blocks", entry
    assert entry["map"] in MAP_TOOLS[kind], entry
    assert used_at_least <= entry["used_bytes"] < entry["size"], entry
    assert entry["why"], entry


def tree_bytes(tree):
    return sum(path.stat().st_size for path in Path(tree).rglob("*")
               if path.is_file() and not path.is_symlink())


# ---------------------------------------------------------------------------------------------
# Each file system alone (no partition table)

@pytest.mark.parametrize("kind", KINDS)
def test_a_bare_file_system_keeps_every_file_and_drops_deleted_contents(kind, file_system, tree, work):
    source = file_system(kind)
    backup = Backup(work / f"bare-{kind}", source)

    assert os.path.getsize(backup.image) == os.path.getsize(source)
    check_file_system(backup.image, kind, tree)
    assert zeroed_bytes(backup.image, source) >= 64 * 1024      # the deleted file at least
    found = marker_at(backup.image)
    assert found is None, f"the deleted file's contents kept, at byte {found}"
    assert plain_image_holds_marker(source)

    [entry] = backup.info["partitions"]
    assert entry["number"] is None and entry["start"] == 0 and entry["size"] == os.path.getsize(source)
    check_used_blocks_info(entry, kind, tree_bytes(tree))
    used_only = backup.info["used_only"]
    assert used_only["read_bytes"] + used_only["zero_bytes"] == entry["size"]
    assert used_only["read_bytes"] >= entry["used_bytes"]
    summary = SUMMARY.search(backup.stderr)
    assert summary and summary.group(1) == "1", backup.stderr
    assert "read in full" not in backup.stderr, backup.stderr


# ---------------------------------------------------------------------------------------------
# Disks

def read_in_full_line(backup, number, filesystem=""):
    """The why of the summary's line `read-disk: partition N (FILESYSTEM...) read in full: WHY`,
    or None."""
    line = re.search(rf"^read-disk: partition {number} \({filesystem}\b.*?\) read in full: (.+)$",
                     backup.stderr, re.M)
    return line and line.group(1)


def partition_table(image):
    """sfdisk's dump of image's partition table, the image's own name taken out."""
    return run("sfdisk", "-d", image).replace(str(image), "DISK")


def check_disk(backup, partitions, tree):
    """A restored disk: its length, table and the areas outside partitions as the source's, each
    file system's files and fsck, each swap area's header only, each unknown partition whole."""
    restored, source = backup.image, backup.source
    assert os.path.getsize(restored) == os.path.getsize(source)
    assert partition_table(restored) == partition_table(source)
    size = os.path.getsize(source)
    with open(restored, "rb") as r, open(source, "rb") as s:
        for offset in (0, size - MIB):
            assert os.pread(r.fileno(), MIB, offset) == os.pread(s.fileno(), MIB, offset)
        # Everything outside the partitions (tables, the random bytes in the gap) is kept.
        edges = [0] + [edge for p in partitions for edge in (p.start, p.start + p.size)] + [size]
        for start, end in zip(edges[::2], edges[1::2]):
            assert os.pread(r.fileno(), end - start, start) == os.pread(s.fileno(), end - start, start)
        for p in partitions:
            if p.kind == "swap":
                assert os.pread(r.fileno(), 4096, p.start) == os.pread(s.fileno(), 4096, p.start)
                assert is_zero(os.pread(r.fileno(), p.size - 4096, p.start + 4096)), "swap pages kept"
                with attached(restored, p.start, p.size) as device:
                    assert run("blkid", "-o", "value", "-s", "TYPE", device).strip() == "swap"
            elif p.kind == "unknown":
                assert os.pread(r.fileno(), p.size, p.start) == os.pread(s.fileno(), p.size, p.start)
            else:
                check_file_system(restored, p.kind, tree, p.start, p.size)
    assert zeroed_bytes(restored, source) > 0
    found = marker_at(restored)
    assert found is None, f"the deleted file's contents kept, at byte {found}"
    assert plain_image_holds_marker(source)


def check_disk_info(backup, partitions, tree):
    """--info's partitions and used_only, and the summary, for a disk of partitions."""
    entries = backup.info["partitions"]
    assert [(e["number"], e["start"], e["size"]) for e in entries] == \
        [(p.number, p.start, p.size) for p in partitions]
    for entry, p in zip(entries, partitions):
        assert entry["filesystem"] == BLKID_TYPE[p.kind], entry
        if p.kind == "unknown":
            assert entry["read"] == "in full" and entry["why"] and entry["map"] is None, entry
            assert entry["used_bytes"] is None, entry
            assert read_in_full_line(backup, p.number), backup.stderr
        elif p.kind == "swap":
            assert entry["read"] == "used blocks" and entry["used_bytes"] == 4096, entry
        else:
            check_used_blocks_info(entry, p.kind, tree_bytes(tree))
    used_only = backup.info["used_only"]
    size = os.path.getsize(backup.source)
    assert used_only["read_bytes"] + used_only["zero_bytes"] == size
    assert used_only["zero_bytes"] <= size - sum(e["used_bytes"] or e["size"] for e in entries)
    file_systems = sum(1 for p in partitions if p.kind in BUILDERS)
    summary = SUMMARY.search(backup.stderr)
    assert summary and int(summary.group(1)) == file_systems, backup.stderr
    in_full = [line for line in backup.stderr.splitlines() if "read in full" in line]
    assert len(in_full) == sum(1 for p in partitions if p.kind == "unknown"), backup.stderr


@pytest.fixture(scope="module")
def gpt_disk(work, file_system):
    """A GPT disk of every file system here, a partition of unknown type and a swap area; its
    partitions and its --used-only backup."""
    need_file_systems(*KINDS)
    members = [(kind, file_system(kind)) for kind in KINDS]
    members += [("unknown", unknown_image(work / "unknown.img")), ("swap", swap_image(work / "swap.img"))]
    partitions = build_disk(work / "gpt.img", "gpt", members)
    return partitions, Backup(work / "gpt-backup", work / "gpt.img")


def test_a_gpt_disk_of_every_file_system_keeps_every_file_table_and_gap(gpt_disk, tree):
    partitions, backup = gpt_disk
    check_disk(backup, partitions, tree)


def test_a_gpt_disk_says_how_each_partition_was_read(gpt_disk, tree):
    partitions, backup = gpt_disk
    assert backup.info["partition_table"] == "gpt"
    check_disk_info(backup, partitions, tree)


def test_an_mbr_disk_keeps_every_file(work, file_system, tree):
    need_file_systems("ext4", "vfat")
    members = [("ext4", file_system("ext4")), ("vfat", file_system("vfat"))]
    partitions = build_disk(work / "mbr.img", "dos", members)
    backup = Backup(work / "mbr-backup", work / "mbr.img")
    check_disk(backup, partitions, tree)
    check_disk_info(backup, partitions, tree)


# ---------------------------------------------------------------------------------------------
# Mounted file systems

def test_an_ext4_file_system_mounted_read_write_is_refused(file_system, work):
    need_file_systems("ext4")
    image = work / "mounted-read-write.img"
    shutil.copy(file_system("ext4"), image)
    with attached(image, read_only=False) as device, mounted(device, "ext4", read_only=False) as directory:
        result = sh(f"read-disk --used-only {device} > /dev/null")
        assert result.returncode == 1
        assert_one_line_error(result, "read-disk", str(directory))


def test_an_ext4_file_system_mounted_read_only_is_imaged(file_system, tree, work):
    need_file_systems("ext4")
    image = file_system("ext4")
    with attached(image) as device, mounted(device, "ext4"):
        backup = Backup(work / "mounted-read-only", device)
    assert os.path.getsize(backup.image) == os.path.getsize(image)
    check_file_system(backup.image, "ext4", tree)
    assert zeroed_bytes(backup.image, image) >= 64 * 1024
    assert marker_at(backup.image) is None
    [entry] = backup.info["partitions"]
    check_used_blocks_info(entry, "ext4", tree_bytes(tree))


# ---------------------------------------------------------------------------------------------
# Damaged maps: the partition read in full, and said so

def flip_random_bits(path, start, length, count, seed):
    """Flip count random bits in [start, start + length) of the file at path."""
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for _ in range(count):
            offset = start + rng.randrange(length)
            byte = os.pread(f.fileno(), 1, offset)[0]
            os.pwrite(f.fileno(), bytes([byte ^ (1 << rng.randrange(8))]), offset)


def partclone_map_status(kind, image):
    """The exit status of `partclone.KIND -D` mapping image (its map to stdout, dropped)."""
    return subprocess.run([f"partclone.{kind}", "-D", "-s", image, "-o", "-"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode


def check_read_in_full(work, name, damaged, kind, intact_ext4):
    """damaged (a file system image) as partition 1 of an MBR disk beside an intact ext4:
    the damaged one read in full, said so on stderr and in --info, the other by its used blocks."""
    disk = work / f"{name}-disk.img"
    partitions = build_disk(disk, "dos", [(kind, damaged), ("ext4", intact_ext4)])
    backup = Backup(work / f"{name}-backup", disk)
    first, second = partitions
    zeroed = zeroed_bytes(backup.image, backup.source, first.start, first.size)
    assert zeroed == 0, f"{zeroed} bytes of the damaged file system were left out as free"
    entry = backup.info["partitions"][0]
    assert entry["read"] == "in full" and entry["map"] is None and entry["used_bytes"] is None, entry
    assert entry["why"], entry
    why = read_in_full_line(backup, 1, BLKID_TYPE[kind])
    assert why == entry["why"], backup.stderr
    assert backup.info["partitions"][1]["read"] == "used blocks"
    assert zeroed_bytes(backup.image, backup.source, second.start, second.size) > 0


def test_an_ext4_block_bitmap_damaged_is_read_in_full(file_system, work):
    need_file_systems("ext4")
    need_tools("partclone.ext4")
    damaged = work / "damaged-bitmap-ext4.img"
    shutil.copy(file_system("ext4"), damaged)
    text = run("dumpe2fs", damaged)
    block = int(re.search(r"^Block size:\s+(\d+)", text, re.M).group(1))
    bitmap = int(re.search(r"Block bitmap at (\d+)", text).group(1))
    # The first group's first blocks hold its metadata and files: flips there turn used blocks
    # free and free blocks used.
    flip_random_bits(damaged, bitmap * block, 256, 8, seed=12)
    assert partclone_map_status("ext4", damaged) != 0, "partclone.ext4 maps this bitmap"
    check_read_in_full(work, "damaged-ext4", damaged, "ext4", file_system("ext4"))


def test_a_fat_whose_tables_differ_is_read_in_full(file_system, work):
    need_file_systems("vfat", "ext4")
    damaged = work / "damaged-fat.img"
    shutil.copy(file_system("vfat"), damaged)
    with open(damaged, "r+b") as f:
        boot = os.pread(f.fileno(), 512, 0)
        # The first FAT's entries of clusters 100-149 (files' clusters) say free; the second
        # FAT still holds their chains.
        first_fat = int.from_bytes(boot[11:13], "little") * int.from_bytes(boot[14:16], "little")
        os.pwrite(f.fileno(), bytes(4 * 50), first_fat + 4 * 100)
    # partclone.vfat maps those clusters free without a word; fsck.vfat sees the damage.
    assert partclone_map_status("vfat", damaged) == 0
    assert subprocess.run(["fsck.vfat", "-n", damaged], capture_output=True).returncode != 0
    check_read_in_full(work, "damaged-fat", damaged, "vfat", file_system("ext4"))

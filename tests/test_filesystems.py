"""The engine under read-disk --used-only (mirrorpipe/disk/filesystems.py, usedblocks.py,
partitiontable.py, loopdevice.py): bad sectors in free space, partclone run for all partitions at
once and ended once its map is whole, loop devices that go away however read-disk ends, MBR
logical partitions, btrfs mapped from its own trees (chunks out of order on the device, a map cut
at its memory bound, what is read in full and why). test_used_blocks.py has the file systems
restored end to end."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import MIB, assert_one_line_error, make_ext4_image, need_root, need_tools, random_data, sh
from faultfs import SECTOR
from filesystems import (MARKER, attached, build_btrfs, build_disk, build_vfat, make_tree, mounted, run,
                         sparse_file)
from mirrorpipe.disk.filesystems import BtrfsFreeSpace, Place
from mirrorpipe.errors import EXIT_SECTORS_FILLED


def free_and_used_bytes(image):
    """(the offset of a free block, of a used block) of an ext4 image, from dumpe2fs."""
    text = run("dumpe2fs", image)
    block = int(text.split("Block size:")[1].split()[0])
    free = [line.split(":")[1].split(",")[0].strip() for line in text.splitlines()
            if line.startswith("  Free blocks:") and line.split(":")[1].strip()]
    return int(free[-1].split("-")[0]) * block, 2048   # 2 KiB: superblock or descriptors, used


def test_a_bad_sector_in_free_space_is_no_error_but_one_in_a_used_block_is(tmp_path, faultfs):
    need_tools("mkfs.ext4", "dumpe2fs", "ddrescuelog")
    image = str(make_ext4_image(tmp_path / "disk.img", size="32M"))
    free, used = free_and_used_bytes(image)
    disk = faultfs.mount(image, bad=[(free // SECTOR + 1, 1)])
    out = tmp_path / "out.img"
    result = sh(f"read-disk --used-only --map {tmp_path}/free.map {disk.path} > {out}")
    assert result.returncode == 0, result.stderr_text
    assert run("ddrescuelog", "-l-", tmp_path / "free.map").split() == []
    assert out.read_bytes()[free:free + 1024] == bytes(1024)

    disk = faultfs.mount(image, bad=[(used // SECTOR, 1)])
    result = sh(f"read-disk --used-only --map {tmp_path}/used.map {disk.path} > {out}")
    assert result.returncode == EXIT_SECTORS_FILLED, result.stderr_text
    assert run("ddrescuelog", "-l-", tmp_path / "used.map").split() == [str(used // SECTOR)]


@pytest.fixture(scope="module")
def fat_disk(tmp_path_factory):
    """A GPT disk of three FAT partitions (each mapped by partclone.fat through a loop device)."""
    need_root()
    need_tools("mkfs.vfat", "mcopy", "partclone.fat", "sfdisk")
    work = tmp_path_factory.mktemp("fat")
    tree = make_tree(work / "tree")
    image = work / "fs.img"
    build_vfat(image, tree)
    disk = work / "disk.img"
    build_disk(disk, "gpt", [("vfat", image)] * 3)
    return disk


def loops_backed_by(path):
    found = []
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                if f.read().strip() == str(path):
                    found.append(name)
        except OSError:
            continue
    return found


def partclones():
    return subprocess.run(["pgrep", "-x", "partclone.fat"], capture_output=True, text=True).stdout.split()


def test_partclone_maps_are_made_at_once_and_not_waited_for(fat_disk, tmp_path):
    """partclone sleeps 2 s after its map: three partitions one after the other would take 6 s
    (2 s if run together and waited for)."""
    started = time.monotonic()
    result = sh(f"read-disk --used-only --info {tmp_path}/info.json {fat_disk} > /dev/null")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr_text
    assert "used blocks of 3 file systems" in result.stderr_text
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert partclones() == [] and loops_backed_by(fat_disk) == []


def test_a_killed_read_disk_leaves_no_loop_device(fat_disk):
    """The loop devices are made with LO_FLAGS_AUTOCLEAR: the kernel removes them when the last
    holder (read-disk, then partclone) closes them, however it ends."""
    reader = subprocess.Popen(["read-disk", "--used-only", str(fat_disk)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(loops_backed_by(fat_disk)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(loops_backed_by(fat_disk)) == 3
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    reader.stdout.close()
    deadline = time.monotonic() + 10     # partclone, left behind, ends after its 2 s sleep
    while (loops_backed_by(fat_disk) or partclones()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loops_backed_by(fat_disk) == [] and partclones() == []


def test_logical_partitions_are_mapped_and_the_extended_boot_records_kept(tmp_path):
    need_tools("mkfs.ext4", "sfdisk", "dumpe2fs")
    first = make_ext4_image(tmp_path / "a.img", size="24M", seed=1)
    second = make_ext4_image(tmp_path / "b.img", size="24M", seed=2)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MIB)
    # One primary, then an extended partition holding one logical: its boot record sits in the
    # extended partition's first sector, outside every file system.
    run("sfdisk", "-q", disk, input="label: dos\nstart=2048, size=49152, type=83\n"
                                    "start=53248, size=77824, type=5\n"
                                    "start=55296, size=49152, type=83\n")
    for image, start in ((first, 2048 * 512), (second, 55296 * 512)):
        run("dd", f"if={image}", f"of={disk}", "bs=1M", f"seek={start}", "oflag=seek_bytes",
            "conv=notrunc", "status=none")
    out = tmp_path / "out.img"
    result = sh(f"read-disk --used-only --info {tmp_path}/info.json {disk} > {out}")
    assert result.returncode == 0, result.stderr_text
    assert "used blocks of 2 file systems" in result.stderr_text
    source, copy = disk.read_bytes(), out.read_bytes()
    assert copy[53248 * 512:55296 * 512] == source[53248 * 512:55296 * 512]   # the EBR and its gap
    assert copy[:2048 * 512] == source[:2048 * 512]
    for start in (2048 * 512, 55296 * 512):
        part = tmp_path / "part.img"
        part.write_bytes(copy[start:start + 24 * MIB])
        run("e2fsck", "-fn", part)
        assert run("debugfs", "-R", "ls -l /", part) == run(
            "debugfs", "-R", "ls -l /", first if start == 2048 * 512 else second)


# ---------------------------------------------------------------------------------------------
# btrfs, mapped from its own extent and chunk trees

def btrfs_stripes(image):
    """[(logical, physical)] of each stripe of each chunk of the btrfs in image, in logical order."""
    text = run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", image)
    stripes = []
    for chunk in re.split(r"\n\titem \d+ key \(FIRST_CHUNK_TREE CHUNK_ITEM ", text)[1:]:
        logical = int(chunk.split(")")[0])
        stripes += [(logical, int(physical)) for physical in re.findall(r"stripe \d+ devid \d+ offset (\d+)", chunk)]
    return sorted(stripes)


@pytest.fixture(scope="module")
def scattered_btrfs(tmp_path_factory):
    """A btrfs holding the test tree and 24 MiB more (three data chunks), MARKER in its free space;
    mkfs puts its second data chunk at 1 MiB, below the first and the metadata: the device's
    order is not the extent tree's."""
    need_root()
    need_tools("mkfs.btrfs", "btrfs")
    work = tmp_path_factory.mktemp("btrfs")
    tree = make_tree(work / "tree")
    for number in range(6):
        (tree / f"big{number}.bin").write_bytes(random_data(4 * MIB, 40 + number))
    image = work / "fs.img"
    build_btrfs(image, tree)
    return image, tree


def test_a_btrfs_whose_chunks_lie_out_of_order_is_mapped_to_the_byte(scattered_btrfs, tmp_path):
    image, tree = scattered_btrfs
    physical = [p for _, p in btrfs_stripes(image)]
    assert physical != sorted(physical), "the chunks lie in logical order: nothing is tested"
    out = tmp_path / "out.img"
    result = sh(f"read-disk --used-only --info {tmp_path}/info.json {image} > {out}")
    assert result.returncode == 0, result.stderr_text
    [entry] = json.loads((tmp_path / "info.json").read_text())["partitions"]
    assert entry["map"] == "btrfs" and entry["read"] == "used blocks", entry
    assert MARKER not in out.read_bytes(), "the deleted file's contents kept"
    assert MARKER in image.read_bytes()
    # Every data block against its checksum, every tree block against its own.
    check = subprocess.run(["btrfs", "check", "--readonly", "--check-data-csum", out], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    with attached(out) as device, mounted(device, "btrfs") as files:
        diff = sh(f"diff -r --no-dereference {tree} {files}")
        assert diff.returncode == 0, diff.stdout.decode()[:2000]


def test_a_btrfs_map_past_its_memory_bound_leaves_the_rest_to_be_read(scattered_btrfs):
    """With no range allowed to wait for a stripe lower on the device, the map stops where the
    first one would have to: nothing past it is said free, and `how` says it is read in full."""
    image, _ = scattered_btrfs
    with open(image, "rb") as f:
        place = Place(f.fileno(), 0, os.path.getsize(image))
        maps = [BtrfsFreeSpace(place), BtrfsFreeSpace(place)]
        maps[1].BUFFERED_RANGES = 0
        try:
            for free_space in maps:
                free_space.check()
            whole, cut = (list(free_space.free_ranges()) for free_space in maps)
        finally:
            for free_space in maps:
                free_space.close()
    assert maps[0].cut is None and maps[1].cut is not None
    assert all(end <= maps[1].cut for _, end in cut) and cut == whole[:len(cut)]
    assert sum(end - start for start, end in whole) > sum(end - start for start, end in cut)
    assert f"from byte {maps[1].cut} on read in full" in maps[1].how
    assert "read in full" not in maps[0].how


def used_only_info(source, tmp_path):
    """`read-disk --used-only --info` of source: (its partition entry, its stderr)."""
    result = sh(f"read-disk --used-only --info {tmp_path}/info.json {source} > /dev/null")
    assert result.returncode == 0, result.stderr_text
    [entry] = json.loads((tmp_path / "info.json").read_text())["partitions"]
    return entry, result.stderr_text


def assert_read_in_full(entry, stderr, why):
    assert entry["read"] == "in full" and entry["map"] is None, entry
    assert why in entry["why"], entry
    assert f"read in full: {entry['why']}" in stderr, stderr


def test_a_btrfs_on_two_devices_is_read_in_full(tmp_path):
    need_root()
    need_tools("mkfs.btrfs")
    with attached(sparse_file(tmp_path / "a.img", 128 * MIB), read_only=False) as first, \
            attached(sparse_file(tmp_path / "b.img", 128 * MIB), read_only=False) as second:
        run("mkfs.btrfs", "-q", "-d", "raid1", "-m", "raid1", first, second)
        entry, stderr = used_only_info(first, tmp_path)
    assert_read_in_full(entry, stderr, "it spans 2 devices")


def test_a_btrfs_with_a_log_tree_is_read_in_full(scattered_btrfs, tmp_path):
    """A file fsynced and the file system not committed since (a crash): its log tree holds the
    file's blocks, which the extent tree does not list yet."""
    image, _ = scattered_btrfs
    working, crashed = tmp_path / "working.img", tmp_path / "crashed.img"
    shutil.copy(image, working)
    with mounted(working, "btrfs", read_only=False, options=["loop", "commit=300", "nodiscard"]) as files:
        with open(files / "fsynced.bin", "wb") as f:
            f.write(random_data(MIB, 9))
            f.flush()
            os.fsync(f.fileno())
        shutil.copy(working, crashed)
    assert not re.search(r"^log_root\s+0$", run("btrfs", "inspect-internal", "dump-super", crashed), re.M)
    entry, stderr = used_only_info(crashed, tmp_path)
    assert_read_in_full(entry, stderr, "log tree")


def test_a_btrfs_whose_extent_tree_is_damaged_is_read_in_full(scattered_btrfs, tmp_path):
    image, _ = scattered_btrfs
    damaged = tmp_path / "damaged.img"
    shutil.copy(image, damaged)
    text = run("btrfs", "inspect-internal", "dump-tree", "-t", "extent", damaged)
    root = re.search(r"^(?:leaf|node) (\d+) ", text, re.M).group(1)
    # Both copies (DUP metadata) of the extent tree's root block overwritten in their middle.
    for physical in re.findall(r"physical (\d+)", run("btrfs-map-logical", "-l", root, damaged)):
        with open(damaged, "r+b") as f:
            os.pwrite(f.fileno(), b"damage" * 100, int(physical) + 4096)
    entry, stderr = used_only_info(damaged, tmp_path)
    assert_read_in_full(entry, stderr, "dump-tree finds it damaged: ")
    assert "extent tree" in entry["why"] or "checksum verify failed" in entry["why"], entry


def test_a_btrfs_mounted_read_only_is_imaged_and_read_write_refused(scattered_btrfs, tmp_path):
    image, tree = scattered_btrfs
    with attached(image) as device, mounted(device, "btrfs"):
        out = tmp_path / "out.img"
        result = sh(f"read-disk --used-only --info {tmp_path}/info.json {device} > {out}")
        assert result.returncode == 0, result.stderr_text
    [entry] = json.loads((tmp_path / "info.json").read_text())["partitions"]
    assert entry["read"] == "used blocks" and entry["map"] == "btrfs", entry
    assert MARKER not in out.read_bytes()
    check = subprocess.run(["btrfs", "check", "--readonly", "--check-data-csum", out], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    writable = tmp_path / "writable.img"
    shutil.copy(image, writable)
    with attached(writable, read_only=False) as device, \
            mounted(device, "btrfs", read_only=False, options=["nodiscard"]) as directory:
        result = sh(f"read-disk --used-only {device} > /dev/null")
        assert result.returncode == 1
        assert_one_line_error(result, "read-disk", str(directory))

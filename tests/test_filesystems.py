"""The engine under read-disk --used-only (mirrorpipe/disk/filesystems.py, usedblocks.py,
partitiontable.py, loopdevice.py): bad sectors in free space, partclone run for all partitions at
once and ended once its map is whole, loop devices that go away however read-disk ends, MBR
logical partitions. test_used_blocks.py has the file systems restored end to end."""

import os
import signal
import subprocess
import time

import pytest

from conftest import MIB, make_ext4_image, need_root, need_tools, sh
from faultfs import SECTOR
from filesystems import build_btrfs, build_disk, make_tree, run
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
def btrfs_disk(tmp_path_factory):
    """A GPT disk of three btrfs partitions (each mapped by partclone through a loop device)."""
    need_root()
    need_tools("mkfs.btrfs", "partclone.btrfs", "sfdisk")
    work = tmp_path_factory.mktemp("btrfs")
    tree = make_tree(work / "tree")
    image = work / "fs.img"
    build_btrfs(image, tree)
    disk = work / "disk.img"
    build_disk(disk, "gpt", [("btrfs", image)] * 3)
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
    return subprocess.run(["pgrep", "-x", "partclone.btrfs"], capture_output=True, text=True).stdout.split()


def test_partclone_maps_are_made_at_once_and_not_waited_for(btrfs_disk, tmp_path):
    """partclone sleeps 2 s after its map: three partitions one after the other would take 6 s
    (2 s if run together and waited for)."""
    started = time.monotonic()
    result = sh(f"read-disk --used-only --info {tmp_path}/info.json {btrfs_disk} > /dev/null")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr_text
    assert "used blocks of 3 file systems" in result.stderr_text
    assert elapsed < 4, f"{elapsed:.1f} s"
    assert partclones() == [] and loops_backed_by(btrfs_disk) == []


def test_a_killed_read_disk_leaves_no_loop_device(btrfs_disk):
    """The loop devices are made with LO_FLAGS_AUTOCLEAR: the kernel removes them when the last
    holder (read-disk, then partclone) closes them, however it ends."""
    reader = subprocess.Popen(["read-disk", "--used-only", str(btrfs_disk)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(loops_backed_by(btrfs_disk)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(loops_backed_by(btrfs_disk)) == 3
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    reader.stdout.close()
    deadline = time.monotonic() + 10     # partclone, left behind, ends after its 2 s sleep
    while (loops_backed_by(btrfs_disk) or partclones()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loops_backed_by(btrfs_disk) == [] and partclones() == []


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

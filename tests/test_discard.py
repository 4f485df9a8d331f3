"""write-disk --discard: at the first byte a block device is made to read as zeros whole
(fallocate punch-hole), so the zero runs of a stream (the free space of a read-disk --used-only
image) are skipped and cost nothing; a device that cannot is named and zeroed run by run."""

import errno
import fcntl
import os
import re
import subprocess
import time

import pytest

from conftest import (MIB, assert_one_line_error, make_ext4_image, need_root, need_tools, sh)

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81


def random_disk(path, size):
    """A backing file full of old, non-zero data: whatever shows through was not zeroed."""
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    return path


def allocated(path):
    return os.stat(path).st_blocks * 512


def data_blocks(image):
    """Bytes in the 1 MiB blocks of image that are not all zeros (write-disk's unit)."""
    with open(image, "rb") as f:
        return sum(len(block) for block in iter(lambda: f.read(MIB), b"") if block.count(0) != len(block))


def need_punch_hole(directory):
    probe = directory / "punch-probe"
    probe.write_bytes(b"x" * 8192)
    result = subprocess.run(["fallocate", "--punch-hole", "--offset", "0", "--length", "4096", str(probe)],
                            capture_output=True, text=True)
    probe.unlink()
    if result.returncode != 0:
        pytest.skip(f"the file system under {directory} cannot punch holes: {result.stderr.strip()}")


@pytest.fixture
def used_disk(tmp_path, loop_device):
    """Factory: a loop device of size bytes over a file of old random data; (device, backing)."""
    need_punch_hole(tmp_path)

    def make(size):
        backing = random_disk(tmp_path / "old-disk.img", size)
        return loop_device(backing), backing
    return make


@pytest.fixture
def undiscardable_loop_device(tmp_path):
    """Factory: a loop device over a file with discards turned off (discard_max_bytes 0), which
    makes the loop driver refuse write-zeroes as well (EOPNOTSUPP): a device that cannot be
    discarded to zeros, for real. The kernel keeps that limit across a detach and refuses to raise
    it again, so the device is made for the test (LOOP_CTL_ADD, at a number losetup -f reaches last)
    and removed afterwards, never one that other tests share."""
    need_root()
    need_tools("losetup")
    control = os.open("/dev/loop-control", os.O_RDWR)
    made = []

    def attach(image):
        for number in range(512, 1024):
            try:
                fcntl.ioctl(control, LOOP_CTL_ADD, number)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                pytest.skip(f"cannot make a loop device: {exc.strerror}")
            made.append(number)
            device = f"/dev/loop{number}"
            deadline = time.monotonic() + 10
            while not os.path.exists(device) and time.monotonic() < deadline:
                time.sleep(0.01)
            if subprocess.run(["losetup", device, str(image)], capture_output=True).returncode != 0:
                continue  # taken by a losetup -f meanwhile: the next number
            with open(f"/sys/block/loop{number}/queue/discard_max_bytes", "w") as limit:
                limit.write("0")
            return device
        pytest.skip("no loop device number free between 512 and 1023")

    yield attach
    for number in made:
        subprocess.run(["losetup", "-d", f"/dev/loop{number}"], stderr=subprocess.DEVNULL)
        for _ in range(50):   # udev may still hold it for a moment
            try:
                fcntl.ioctl(control, LOOP_CTL_REMOVE, number)
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                time.sleep(0.1)
    os.close(control)


def test_a_discarded_restore_is_identical_and_its_zero_runs_cost_nothing(tmp_path, used_disk):
    """A real disk image restored over old data: byte for byte the source, and the loop device's
    backing file allocated only where the stream had data: the zero runs were neither written nor
    zeroed (BLKZEROOUT would have allocated zeroed extents for them)."""
    image = make_ext4_image(tmp_path / "source.img", size="64M")
    device, backing = used_disk(64 * MIB)
    result = sh(f"read-disk {image} | compress | compress -d | write-disk --force --discard {device}")
    assert result.returncode == 0, result.stderr_text
    assert "warning" not in result.stderr_text
    assert sh(f"cmp {device} {image}").returncode == 0
    assert sh(f"cmp {backing} {image}").returncode == 0
    needed = data_blocks(image)
    assert needed < 32 * MIB  # the image is mostly zeros, or the test shows nothing
    assert allocated(backing) <= needed + MIB, (allocated(backing), needed)


def test_the_disk_past_the_stream_reads_as_zeros_and_verify_passes(tmp_path, used_disk):
    device, backing = used_disk(24 * MIB)
    stream = tmp_path / "stream"
    stream.write_bytes(os.urandom(MIB) + bytes(6 * MIB) + os.urandom(MIB) + bytes(4 * MIB))
    result = sh(f"write-disk --progress --force --discard --verify {device} < {stream}")
    assert result.returncode == 0, result.stderr_text
    assert result.stderr_text.endswith("flushed to stable storage, verified; the rest of the disk "
                                       "was discarded (reads as zeros)\n"), result.stderr_text
    with open(device, "rb") as f:
        assert f.read() == stream.read_bytes() + bytes(12 * MIB)
    assert allocated(backing) <= 2 * MIB


def test_a_discarded_restore_cut_short_says_the_rest_reads_as_zeros(tmp_path, used_disk):
    device, backing = used_disk(32 * MIB)
    source = tmp_path / "source.img"
    source.write_bytes(os.urandom(4 * MIB) + bytes(8 * MIB) + os.urandom(12 * MIB))
    sh(f"compress < {source} > {tmp_path}/source.zst", check=True)
    cut = os.path.getsize(tmp_path / "source.zst") * 3 // 4
    result = sh(f"set +o pipefail; head -c {cut} {tmp_path}/source.zst | compress -d | "
                f"write-disk --force --discard {device}; exit ${{PIPESTATUS[-1]}}")
    error = assert_one_line_error(result, "write-disk", f"{device} holds a partial image")
    last = re.search(r"bytes 0-(\d+) were written from the stream, the rest of the disk was "
                     r"discarded \(reads as zeros\)$", error)
    assert last, error
    written = int(last.group(1)) + 1
    assert 4 * MIB < written < 24 * MIB, error
    with open(device, "rb") as f:
        now = f.read()
    assert now[:written] == source.read_bytes()[:written]
    assert now[written:] == bytes(32 * MIB - written)


def test_nothing_changes_before_the_first_byte(used_disk):
    """write-disk --discard waiting for its input has discarded nothing, and an input that ends
    without a byte leaves the device as it was."""
    device, backing = used_disk(16 * MIB)
    old, old_allocated = backing.read_bytes(), allocated(backing)
    read_end, write_end = os.pipe()
    process = subprocess.Popen(["write-disk", "--force", "--discard", device], stdin=read_end,
                               stderr=subprocess.PIPE)
    os.close(read_end)
    try:
        deadline = time.monotonic() + 30
        while not any(os.path.realpath(f"/proc/{process.pid}/fd/{fd}") == device
                      for fd in os.listdir(f"/proc/{process.pid}/fd")):
            assert time.monotonic() < deadline, "write-disk never opened its target"
            time.sleep(0.01)
        time.sleep(0.2)
        assert backing.read_bytes() == old and allocated(backing) == old_allocated
    finally:
        os.close(write_end)
    process.wait(timeout=30)
    process.stderr_text = process.stderr.read().decode()
    assert_one_line_error(process, "write-disk", f"nothing was written; {device} is unchanged")
    assert backing.read_bytes() == old and allocated(backing) == old_allocated


def test_a_device_that_cannot_discard_is_named_and_still_restored(tmp_path, undiscardable_loop_device):
    backing = random_disk(tmp_path / "old-disk.img", 24 * MIB)
    device = undiscardable_loop_device(backing)
    stream = tmp_path / "stream"
    stream.write_bytes(os.urandom(MIB) + bytes(10 * MIB) + os.urandom(MIB) + bytes(3 * MIB))
    old_tail = backing.read_bytes()[15 * MIB:]
    result = sh(f"write-disk --force --discard {device} < {stream}")
    assert result.returncode == 0, result.stderr_text
    warnings = [line for line in result.stderr_text.splitlines() if line.strip()]
    assert warnings == [f"write-disk: warning: cannot discard {device} so that it reads as zeros "
                        "(Operation not supported): the stream's zero runs will be zeroed one by "
                        "one (BLKZEROOUT) or written instead"], result.stderr_text
    with open(device, "rb") as f:
        assert f.read() == stream.read_bytes() + old_tail  # zeroed runs; the rest unchanged

"""The fault injection itself: chosen sectors fail with EIO from the kernel, the others read
the image's bytes, through the FUSE file and through a loop device over it."""

import mmap
import os
import subprocess

from faultfs import SECTOR


SIZE = 4 << 20


def make_image(tmp_path, size=SIZE):
    path = tmp_path / "image"
    path.write_bytes(os.urandom(size))
    return str(path)


def read_sector(fd, sector, buffer):
    """The sector's bytes, or the errno of the failed read."""
    try:
        n = os.preadv(fd, [buffer], sector * SECTOR)
    except OSError as exc:
        return exc.errno
    return bytes(buffer[:n])


def test_chosen_sectors_fail_and_the_others_read(tmp_path, faultfs):
    image = make_image(tmp_path)
    data = open(image, "rb").read()
    disk = faultfs.mount(image, bad=[(10, 1), (100, 3), (2047, 2)])
    bad = {10, 100, 101, 102, 2047, 2048}
    buffer = memoryview(mmap.mmap(-1, SECTOR))
    fd = os.open(disk.path, os.O_RDONLY)
    try:
        for sector in range(0, 3000):
            got = read_sector(fd, sector, buffer)
            if sector in bad:
                assert got == 5, f"sector {sector} should fail with EIO"
            else:
                assert got == data[sector * SECTOR:(sector + 1) * SECTOR], f"sector {sector}"
        # A read touching one bad sector fails as a whole, as a disk command does.
        try:
            os.pread(fd, 4 * SECTOR, 8 * SECTOR)
            raise AssertionError("a read across sector 10 succeeded")
        except OSError as exc:
            assert exc.errno == 5
    finally:
        os.close(fd)
    assert disk.stats()["failed"] == len(bad) + 1


def test_dd_sees_the_errors(tmp_path, faultfs):
    disk = faultfs.mount(make_image(tmp_path), bad=[(10, 1)])
    failing = subprocess.run(["dd", f"if={disk.path}", "of=/dev/null", "bs=512", "skip=10", "count=1"],
                             capture_output=True, text=True)
    assert failing.returncode != 0 and "Input/output error" in failing.stderr
    healthy = subprocess.run(["dd", f"if={disk.path}", "of=/dev/null", "bs=512", "skip=11", "count=1"],
                             capture_output=True, text=True)
    assert healthy.returncode == 0


def test_errors_healed_by_retrying_and_a_disk_that_stops_answering(tmp_path, faultfs):
    image = make_image(tmp_path)
    data = open(image, "rb").read()
    disk = faultfs.mount(image, bad=[(20, 1, 2)], fail_from=SIZE // 2)
    buffer = memoryview(mmap.mmap(-1, SECTOR))
    fd = os.open(disk.path, os.O_RDONLY)
    try:
        assert [read_sector(fd, 20, buffer) for _ in range(3)][:2] == [5, 5]
        assert read_sector(fd, 20, buffer) == data[20 * SECTOR:21 * SECTOR]
        last_good = SIZE // 2 // SECTOR - 1
        assert read_sector(fd, last_good, buffer) == data[last_good * SECTOR:(last_good + 1) * SECTOR]
        assert all(read_sector(fd, s, buffer) == 5 for s in range(last_good + 1, SIZE // SECTOR, 97))
    finally:
        os.close(fd)


def test_loop_device_has_bad_sectors_like_a_disk(tmp_path, faultfs, faulty_loop_device):
    image = make_image(tmp_path)
    data = open(image, "rb").read()
    disk = faultfs.mount(image, bad=[(10, 1)])
    device = faulty_loop_device(disk.path)
    buffer = memoryview(mmap.mmap(-1, 1 << 20))
    # O_DIRECT reads bypass the page cache: exactly sector 10 fails.
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        for sector in range(0, 32):
            got = read_sector(fd, sector, buffer[:SECTOR])
            assert got == (5 if sector == 10 else data[sector * SECTOR:(sector + 1) * SECTOR])
    finally:
        os.close(fd)
    # Buffered reads go through 4 KiB pages: the page around sector 10 fails as a whole, and a
    # long read stops short before it.
    fd = os.open(device, os.O_RDONLY)
    try:
        assert [read_sector(fd, s, buffer[:SECTOR]) == 5 for s in range(0, 24)] == \
            [False] * 8 + [True] * 8 + [False] * 8
        assert os.preadv(fd, [buffer], 0) == 8 * SECTOR
    finally:
        os.close(fd)

"""Writing a raw stream to a block device or a file, safely and durably.

Before a byte is written, a block device target is refused when it (or a partition on it) is
mounted or used as swap, or when it holds the running system, and it is opened exclusively so the
kernel refuses it while anything else claims it. File targets get holes for all-zero blocks.
Success is reported only after the data reached stable storage.
"""

import errno
import fcntl
import mmap
import os
import stat
import struct

import xxhash

from . import blockdev
from .errors import Error, UsageError
from .streams import BLOCK_SIZE, ZEROS, Writeback, fsync_directory, is_zero, read_full, write_all

BLKZEROOUT = 0x127F

# Stream hashes for --verify cover segments of this size, so a mismatch is located within one
# segment while the list of hashes stays small even for very large disks.
VERIFY_SEGMENT = 64 << 20


class Target:
    """A write-disk target: open it with open_target(), then write_stream()."""

    def __init__(self, path, fd, kind, capacity):
        self.path = path
        self.fd = fd
        self.kind = kind            # "block device", "file" or "stream"
        self.capacity = capacity    # bytes a block device holds; None otherwise
        self.zero_out_works = kind == "block device"

    def close(self):
        os.close(self.fd)

    def existing_contents(self):
        """What the first bytes of a block device hold ('an ext2/3/4 file system'), or None."""
        if self.kind != "block device":
            return None
        head = os.pread(self.fd, min(blockdev.SIGNATURE_BYTES, self.capacity), 0)
        return blockdev.describe_contents(head)

    def write_stream(self, src_fd, progress=None, verify=False):
        """Copy src_fd to the target, flush it to stable storage; return the bytes written.
        With verify, read the target back afterwards and compare."""
        buf = bytearray(BLOCK_SIZE)
        view = memoryview(buf)
        segment_hashes = []
        hasher = xxhash.xxh3_128() if verify else None
        pos = 0
        zero_run = 0    # all-zero bytes just before pos, skipped over but not yet zeroed
        writeback = Writeback(self.fd)
        while True:
            got = read_full(src_fd, view)
            if got == 0:
                break
            if self.capacity is not None and pos + got > self.capacity:
                self._zero(pos - zero_run, zero_run)
                self._flush()
                raise Error(f"target too small: {self.path} holds {self.capacity} bytes but the "
                            f"stream is longer (at least {pos + got} bytes); its first "
                            f"{pos} bytes were written, nothing past its end")
            if self.kind != "stream" and is_zero(buf, 0, got):
                os.lseek(self.fd, got, os.SEEK_CUR)
                zero_run += got
            else:
                self._zero(pos - zero_run, zero_run)
                zero_run = 0
                self._write(view[:got], pos)
            if hasher:
                hasher.update(view[:got])
                if (pos + got) % VERIFY_SEGMENT == 0:
                    segment_hashes.append(hasher.digest())
                    hasher = xxhash.xxh3_128()
            pos += got
            writeback.wrote_up_to(pos)
            if progress:
                progress.advance(got)
            if got < len(view):
                break
        self._zero(pos - zero_run, zero_run)
        if hasher and pos % VERIFY_SEGMENT:
            segment_hashes.append(hasher.digest())
        if self.kind == "file":
            os.ftruncate(self.fd, pos)  # a trailing run of zeros is a hole up to the true length
        self._flush()
        if verify:
            self._verify(pos, segment_hashes, progress)
        return pos

    def _zero(self, start, length):
        """Make [start, start + length) read as zeros. A file target was emptied when opened, so
        its skipped runs already are holes; a block device is asked to zero the range itself
        (BLKZEROOUT: a loop device punches a hole, an SSD may unmap), else gets zeros written."""
        if not length or self.kind == "file":
            return
        if self.zero_out_works:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", start, length))
                return
            except OSError:
                self.zero_out_works = False  # not supported here: write zeros from now on
        try:
            for offset in range(start, start + length, BLOCK_SIZE):
                os.pwrite(self.fd, memoryview(ZEROS)[:min(BLOCK_SIZE, start + length - offset)], offset)
        except OSError as exc:
            raise Error(f"write error on {self.path} at byte {start}: {exc.strerror}") from None

    def _write(self, data, pos):
        try:
            write_all(self.fd, data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise Error(f"no space left on the device holding {self.path} after {pos} bytes") from None
            raise Error(f"write error on {self.path} at byte {pos}: {exc.strerror}") from None

    def _flush(self):
        try:
            os.fsync(self.fd)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EROFS) and self.kind == "stream":
                return  # pipes and character devices have nothing to flush
            raise Error(f"flushing {self.path} to stable storage failed: {exc.strerror}; "
                        "the data may not be durable") from None
        if self.kind == "file":
            fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def _verify(self, length, segment_hashes, progress):
        """Read the target back, past the page cache where the kernel allows, and compare."""
        fd = _open_uncached(self.path)
        # O_DIRECT needs an aligned buffer: an anonymous mmap is page-aligned.
        buf = mmap.mmap(-1, BLOCK_SIZE)
        view = memoryview(buf)
        try:
            pos = 0
            for index, expected in enumerate(segment_hashes):
                hasher = xxhash.xxh3_128()
                end = min(length, (index + 1) * VERIFY_SEGMENT)
                while pos < end:
                    got = os.preadv(fd, [view], pos)
                    got = min(got, end - pos)
                    if got <= 0:
                        raise Error(f"verification failed: {self.path} ends at byte {pos}, "
                                    f"before the {length} bytes written")
                    hasher.update(view[:got])
                    pos += got
                if hasher.digest() != expected:
                    raise Error(f"verification failed: {self.path} differs from the stream between "
                                f"bytes {index * VERIFY_SEGMENT} and {end}; the device may be failing")
        finally:
            view.release()
            buf.close()
            os.close(fd)


def _open_uncached(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # file systems without O_DIRECT (tmpfs): drop the cache
            raise
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def open_target(path):
    """Open a write-disk target after the safety checks; raise Error naming why it is refused."""
    if path == "-":
        raise UsageError("write-disk writes to a block device or a file, not to standard output; "
                         "to pass the stream on, leave write-disk out of the pipeline")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        return _open_block_device(path, st.st_rdev)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise Error(f"{path} is a directory; give a block device or a file to write the image to")
    if st is None or stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise Error(f"cannot create {path}: {exc.strerror}") from None
        return Target(path, fd, "file", None)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    return Target(path, fd, "stream", None)


def _open_block_device(path, rdev):
    disk = blockdev.whole_disk(rdev)
    if disk in blockdev.system_disks():
        raise Error(f"refusing to write to {path}: it is (or is on) /dev/{blockdev.device_name(disk)}, "
                    "the disk the running system lives on")
    uses = blockdev.uses_of(rdev)
    if uses:
        raise Error(f"refusing to write to {path}: {uses[0]}; unmount it first")
    try:
        # O_EXCL on a block device: the kernel refuses while a file system, RAID or LVM holds it.
        fd = os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise Error(f"refusing to write to {path}: it is in use (mounted, part of RAID/LVM/LUKS, "
                        "or held by another program)") from None
        raise Error(f"cannot open {path} for writing: {exc.strerror}") from None
    return Target(path, fd, "block device", blockdev.device_size(fd))

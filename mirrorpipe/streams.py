"""Moving bytes between file descriptors in large buffers, spotting all-zero blocks, and
writing small files durably.

Every command moves data through these helpers so that the hot loops stay free of per-byte work.
"""

import os

BLOCK_SIZE = 1 << 20

# A bytes object of zeros: bytearray.startswith(ZEROS, pos) compares with memcmp at memory speed
# without copying the block, unlike any(), count() or memoryview comparisons.
ZEROS = bytes(BLOCK_SIZE)


def is_zero(buf, start=0, length=None):
    """True when buf[start:start+length] holds only zero bytes."""
    if length is None:
        length = len(buf) - start
    while length > 0:
        n = min(length, BLOCK_SIZE)
        if not buf.startswith(ZEROS if n == BLOCK_SIZE else ZEROS[:n], start):
            return False
        start += n
        length -= n
    return True


def read_full(fd, view):
    """Fill the writable memoryview from fd; return how many bytes arrived (less only at end of input)."""
    got = 0
    size = len(view)
    while got < size:
        try:
            n = os.readv(fd, [view[got:]])
        except InterruptedError:
            continue
        if n == 0:
            break
        got += n
    return got


def write_all(fd, data):
    """Write every byte of data to fd, however many calls the kernel needs."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


def pwrite_all(fd, data, offset):
    """Write all of data at offset (positional writes may be partial)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def write_zeros(fd, count):
    """Write count zero bytes to fd."""
    while count > 0:
        n = min(count, BLOCK_SIZE)
        write_all(fd, ZEROS if n == BLOCK_SIZE else memoryview(ZEROS)[:n])
        count -= n


class Writeback:
    """Has the kernel write what a file or device received to disk a window at a time, so the
    fsync at the end has little left to wait for and a long write does not flood the page cache.
    On Linux, POSIX_FADV_DONTNEED starts writeback of dirty pages and drops clean ones: the window
    before the newest, written back meanwhile, leaves the page cache."""

    WINDOW = 32 << 20

    def __init__(self, fd):
        self.fd = fd
        self.window_start = 0    # of the last window whose writeback was started
        self.window_end = 0

    def wrote_up_to(self, position):
        if position - self.window_end < self.WINDOW:
            return
        try:
            os.posix_fadvise(self.fd, self.window_start, position - self.window_start,
                             os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # a pipe or character device: nothing to write back
        self.window_start, self.window_end = self.window_end, position


def fsync_directory(path):
    """Make a file's creation or rename in directory path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path, text):
    """Replace path with text so that a reader sees the old file or the whole new one, never
    part of it, and the new one survives a crash once this returns."""
    partial = path + ".part"
    with open(partial, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))

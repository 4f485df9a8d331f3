"""Moving bytes between file descriptors in large buffers, spotting all-zero blocks, and
opening the outputs named on a command line so that they destroy nothing.

Every command moves data through these helpers so that the hot loops stay free of per-byte work.
"""

import errno
import os
import re
import stat

from ..errors import Error, UsageError

# Bytes moved per read or write on the data path, everywhere: with 1 MiB pipes (cli) a filter
# passes a stream on faster than `cat | cat`; a parity block and its scaled copy still stay in
# the CPU cache.
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


def read_full(source, view):
    """Fill the writable buffer VIEW from SOURCE, a file descriptor or a file object (through its
    readinto), however many reads it takes; how many bytes came (fewer only at the end of input).
    An OSError on the way carries in `received` the bytes that came before it."""
    if isinstance(source, int):
        return _fill(view, lambda part, done: os.readv(source, [part]))
    return _fill(view, lambda part, done: source.readinto(part))


def pread_full(fd, view, offset):
    """read_full from file descriptor FD at OFFSET (preadv: FD's file position is left alone)."""
    return _fill(view, lambda part, done: os.preadv(fd, [part], offset + done))


def _fill(view, read):
    """The loop of read_full: read(the part of VIEW still empty, bytes so far) -> bytes read.
    (Since Python 3.5 a signal never interrupts a read with InterruptedError: PEP 475 retries.)"""
    got = 0
    with memoryview(view).cast("B") as whole:
        try:
            while got < len(whole):
                count = read(whole[got:], got)
                if not count:
                    break
                got += count
        except OSError as exc:
            exc.received = got
            raise
    return got


def write_all(fd, data):
    """Write every byte of data to fd, however many calls the kernel needs."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


def refuse_binary_terminal(fd, hint, name=None, reading=False):
    """Raise a usage error when fd is a terminal: binary data would garble it (or, read, be typed)."""
    if os.isatty(fd):
        where = f"the terminal {name}" if name else "a terminal"
        verb = "read binary data from" if reading else "write binary data to"
        raise UsageError(f"refusing to {verb} {where}; {hint}")


# A name of an open descriptor (/dev/stdout, /dev/fd/N, /proc/self/fd/N) resolves to this.
_DESCRIPTOR_NAME = re.compile(r"/proc/(\d+)/fd/(\d+)")
_MAX_LINKS = 40   # Linux's limit on links followed in one lookup (ELOOP beyond)


def _follow_links(path):
    """The path that path's symbolic links lead to, even when the last one dangles; a name of an
    open descriptor (/dev/stdout) ends the walk as /proc/PID/fd/N, which is not followed: what it
    leads to is an open file, a pipe or a socket that has no path to be replaced."""
    path = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if _DESCRIPTOR_NAME.fullmatch(path) or not os.path.islink(path):
            return path
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    raise Error(f"cannot write {path}: too many levels of symbolic links")


class NamedOutput:
    """A file named on the command line as an output (-o, --map, --info), open for writing.

    A regular file, or a new one, is written beside itself as NAME.part and renamed over NAME by
    commit(), so that a reader sees the old file or the whole new one, never part of it, and a run
    that dies leaves only a .part; a symbolic link is followed and its target replaced, the link
    kept. Anything else (a device node, a FIFO, a socket, /dev/stdout) is written in place: a
    rename would put a regular file where the device or FIFO was. Binary data is refused for a
    terminal; text (a map, a sum line, JSON) may go to one.
    """

    def __init__(self, path, binary=True, what=None):
        # Messages name the output: 'cannot write the map sda.map: ...'
        self.name = f"{what} {path}" if what else path
        self.partial = None   # NAME.part while a regular file is being written
        self.final = None     # the path the .part is renamed to
        resolved = _follow_links(path)
        descriptor = _DESCRIPTOR_NAME.fullmatch(resolved)
        try:
            if descriptor and int(descriptor.group(1)) == os.getpid():
                # Our own descriptor: the same open file, at the same position.
                self.fd = os.dup(int(descriptor.group(2)))
            else:
                self.fd = self._open(resolved, descriptor)
        except OSError as exc:
            raise Error(f"cannot write {self.name}: {exc.strerror}") from None
        if binary:
            try:
                refuse_binary_terminal(self.fd, "name a file or a device, or pipe the output into "
                                                "another command", name=path)
            except UsageError:
                self.abandon()
                raise

    def _open(self, resolved, descriptor):
        try:
            st = os.stat(resolved)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise Error(f"cannot write {self.name}: it is a directory; name a file")
        if descriptor or (st is not None and not stat.S_ISREG(st.st_mode)):
            return os.open(resolved, os.O_WRONLY | os.O_CLOEXEC)
        self.final, self.partial = resolved, resolved + ".part"
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        if st is not None:
            # The replacement keeps the replaced file's permissions (and its owner, as root),
            # where the file system allows.
            try:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0:
                    os.fchown(fd, st.st_uid, st.st_gid)
            except OSError:
                pass
        return fd

    @property
    def in_place(self):
        """True when written where it stands (a device, FIFO, socket or open descriptor)."""
        return self.partial is None

    def write(self, data):
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise Error(f"cannot write {self.name}: {exc.strerror}") from None

    def commit(self):
        """Make what was written durable and, for a regular file, put it in the file's place."""
        try:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EROFS) or not self.in_place:
                    raise  # a pipe, terminal or character device has nothing to flush
            fd, self.fd = self.fd, None
            os.close(fd)
            if self.partial:
                os.replace(self.partial, self.final)
                self.partial = None
                fsync_directory(os.path.dirname(self.final))
        except OSError as exc:
            raise Error(f"cannot write {self.name}: {exc.strerror}") from None

    def abandon(self):
        """Close without committing: a .part is removed, the named file stays as it was. Does
        nothing after commit()."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        if self.partial:
            try:
                os.unlink(self.partial)
            except FileNotFoundError:
                pass
            self.partial = None


def write_named_output(path, data, binary=False, what=None):
    """Write data (bytes) to a named output whole: see NamedOutput."""
    output = NamedOutput(path, binary, what)
    try:
        output.write(data)
        output.commit()
    finally:
        output.abandon()

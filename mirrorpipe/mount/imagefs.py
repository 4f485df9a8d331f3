"""The read-only FUSE file system of mount-image: the whole disk as one file, and one file per
partition of its partition table, so that `mount -o loop,ro MOUNTPOINT/NAME.p2 /mnt` works on any
kernel, with or without loop partition scanning.

The binding is mfusepy (ctypes over libfuse 3): bench/bench_fuse_bindings.py measured it against
pyfuse3; doc/design.md gives the figures. Requests are served on libfuse's threads, at the same
time; the image (stream.seekable.CompressedBytes, sets.randomaccess.SetBytes) is thread-safe.

The partitions are read by sfdisk, as read-disk --used-only reads them, from the disk's file once
the file system is up, before the mount is reported ready.
"""

import ctypes
import errno
import os
import stat
import threading
import time

from ..disk import partitiontable
from ..errors import Error
from .mountpoint import SOURCE_PREFIX


# The kernel's read-ahead on the mount, in KiB: 1 MiB requests instead of 128 KiB ones took
# sequential reads from ~560 to ~800 MB/s (bench/bench_fuse_bindings.py). Only root may set it.
READ_AHEAD_KB = 1024


def _fuse():
    """mfusepy, imported when a mount is made: it loads libfuse 3 through ctypes, by its soname
    (mfusepy would take libfuse 2 first where both are installed, and finding a library by name
    runs `ldconfig -p`, 8 ms of the mount's start)."""
    os.environ.setdefault("FUSE_LIBRARY_PATH", "libfuse3.so.3")
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise Error(f"cannot load the FUSE library: {exc} (Debian package fuse3; "
                    "pip package mfusepy)") from None
    return mfusepy


class ImageFS:
    """The operations of the file system (an mfusepy.Operations, made by make_operations)."""

    use_ns = True

    def __init__(self, image, name, mountpoint, ready, say):
        """ready(problem): called once, with None when the mount is up with its partitions, or
        with what went wrong. say(text): a line on stderr."""
        self.image = image
        self.name = name
        self.mountpoint = os.path.abspath(mountpoint)   # libfuse changes to / once mounted
        self._ready = ready
        self.cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.mounted = False    # the file system came up (libfuse called init)
        self.say = say
        self.files = {name: (0, image.length)}     # file name -> (start in the disk, size)
        self.time = time.time_ns()
        self._said = set()
        self._lock = threading.Lock()

    def init(self, path):
        # Called when the file system is up; sfdisk reads the disk through it, so on a thread.
        # libfuse has changed to / by now: back to where the sources were named from, whose
        # volume files are opened (by relative paths too) as reads need them.
        os.fchdir(self.cwd)
        self.mounted = True
        threading.Thread(target=self._find_partitions, name="partitions", daemon=True).start()

    def _find_partitions(self):
        disk = os.path.join(self.mountpoint, self.name)
        _raise_read_ahead(self.mountpoint)
        try:
            if partitiontable.probe(disk).table:
                entries, _ = partitiontable.partitions(disk)
                for entry in entries:
                    if entry.start + entry.size <= self.image.length:
                        self.files[f"{self.name}.p{entry.number}"] = (entry.start, entry.size)
            problem = None
        except Error as exc:
            problem = None
            self.say(f"the partitions of {self.name} are not shown: {exc}")
        except Exception as exc:   # the mount must be reported either way
            problem = f"cannot read the partition table of {self.name}: {exc}"
        self._ready(problem)

    def getattr(self, path, fh=None):
        times = dict(st_atime=self.time, st_mtime=self.time, st_ctime=self.time)
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o555, st_nlink=2, **times)
        entry = self.files.get(path[1:])
        if entry is None:
            raise self.fuse.FuseOSError(errno.ENOENT)
        return dict(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=entry[1],
                    st_blocks=(entry[1] + 511) // 512, **times)

    def readdir(self, path, fh):
        return [".", "..", *self.files]

    def open(self, path, flags):
        if path[1:] not in self.files:
            raise self.fuse.FuseOSError(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise self.fuse.FuseOSError(errno.EROFS)
        return 0

    def read(self, path, size, offset, fh):
        start, length = self.files[path[1:]]
        if offset >= length:
            return b""
        try:
            return self.image.read(start + offset, min(size, length - offset))
        except Error as exc:    # DamagedData, or any other reason the bytes cannot be had
            damage = getattr(exc, "damage", str(exc))
            with self._lock:
                first = damage not in self._said
                self._said.add(damage)
            if first:
                self.say(f"{path[1:]}: reads of bytes {offset}-{offset + size - 1} fail with EIO: {exc}")
            raise self.fuse.FuseOSError(errno.EIO) from None

    def statfs(self, path):
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=0, f_bfree=0, f_bavail=0,
                    f_files=len(self.files), f_ffree=0, f_namemax=255)


def _raise_read_ahead(mountpoint):
    try:
        device = os.stat(mountpoint).st_dev
        with open(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError:
        pass    # not root: the kernel's default read-ahead still works


M_ARENA_MAX = -8    # mallopt's parameter number (glibc malloc.h)


def _one_malloc_arena():
    """glibc gives each of libfuse's threads its own arena, which keeps the decoded frames freed
    in it: the daemon's peak RSS reached 223-270 MB over a sequential read of the 2 GiB sample,
    117-159 MB with one arena (bench/bench_mount.py)."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass    # not glibc


def serve(image, name, mountpoint, ready, say):
    """Mount the image read-only at mountpoint and serve it until unmounted (fusermount3 -u,
    umount, SIGTERM or SIGINT: libfuse unmounts then); Error when it cannot be mounted."""
    fuse = _fuse()
    _one_malloc_arena()
    operations = type("MirrorpipeImage", (ImageFS, fuse.Operations), {"fuse": fuse})(
        image, name, mountpoint, ready, say)
    try:
        fuse.FUSE(operations, mountpoint, foreground=True, nothreads=False, ro=True,
                  fsname=SOURCE_PREFIX + name, subtype="mirrorpipe", default_permissions=True,
                  # libfuse 3.14 warns on every mount about its own default (-1) without it
                  max_idle_threads=10)
    except RuntimeError as exc:
        # libfuse ends its loop with the signal's number after SIGTERM or SIGINT, unmounted: an
        # error only when the file system never came up.
        if not operations.mounted:
            raise Error(f"cannot mount at {mountpoint}: libfuse failed ({exc})") from None

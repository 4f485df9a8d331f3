"""A read-only loop device over part of an open file or disk, gone when its last user closes it.

Tools that take a device name but no offset (partclone) reach a partition inside an image file,
or on a disk whose partitions have no device nodes, through one of these. losetup cannot ask for
LO_FLAGS_AUTOCLEAR; with it, the kernel detaches the device when the last descriptor on it closes,
so a read-disk that is killed leaves no loop device behind.
"""

import errno
import fcntl
import os
import struct

from ..errors import Error

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A     # Linux 5.8: attach and set up in one call, no window half set up
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4


def _loop_config(backing_fd, offset, size):
    """struct loop_config: fd, block_size, then struct loop_info64 (device, inode, rdevice,
    offset, sizelimit, number, encrypt_type, encrypt_key_size, flags, file_name[64],
    crypt_name[64], encrypt_key[32], init[2]), then 8 reserved u64."""
    info = struct.pack("5Q4I64s64s32s2Q", 0, 0, 0, offset, size, 0, 0, 0,
                       LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR, b"", b"", b"", 0, 0)
    return struct.pack("2I", backing_fd, 0) + info + bytes(64)


class LoopDevice:
    """Bytes [offset, offset + size) of backing_fd as /dev/loopN (self.path) while open."""

    def __init__(self, backing_fd, offset, size):
        try:
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise Error(f"cannot make a loop device: /dev/loop-control: {exc.strerror}"
                        + (" (it takes root)" if exc.errno in (errno.EACCES, errno.EPERM) else "")) from None
        try:
            for _ in range(20):   # another program may take the free device first: ask again
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                self.path = f"/dev/loop{number}"
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(self.fd, LOOP_CONFIGURE, _loop_config(backing_fd, offset, size))
                    return
                except OSError as exc:
                    os.close(self.fd)
                    if exc.errno != errno.EBUSY:
                        raise Error(f"cannot set up {self.path}: {exc.strerror}") from None
            raise Error("cannot make a loop device: every free one was taken by another program")
        except OSError as exc:
            raise Error(f"cannot make a loop device: {exc.strerror}") from None
        finally:
            os.close(control)

    def close(self):
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

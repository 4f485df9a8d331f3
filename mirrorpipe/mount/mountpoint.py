"""The directory mount-image mounts on: checked before the backup is opened, and unmounted by
mount-image -u. A mount whose daemon died (SIGKILL, the OOM killer) stays in the mount table,
and listing it fails (ENOTCONN; ECONNABORTED at first). os.path.ismount and isdir can call it
neither a mount nor a directory, so the mount table is asked instead."""

import errno
import os
import shutil
import subprocess

from ..disk.blockdev import mounts, uses_of
from ..errors import Error

DEAD_MOUNT_ERRORS = (errno.ENOTCONN, errno.ECONNABORTED)

# libfuse's fsname for our mounts (imagefs.serve): the source column of the mount table.
SOURCE_PREFIX = "mirrorpipe:"


def _mount_sources(path):
    """The sources of the mounts at path, the newest last ([] when it is no mount point)."""
    where = os.path.realpath(path)    # leaves a dead mount's own name as it is
    return [source for _, point, _, source in mounts() if point == where]


def check_mountpoint(path):
    """Error unless path is a directory to mount on, saying what to do."""
    sources = _mount_sources(path)
    if sources:
        try:
            os.listdir(path)    # stat of a dead mount's root can still answer from the kernel's cache
        except OSError as exc:
            if exc.errno not in DEAD_MOUNT_ERRORS:
                raise Error(f"cannot mount on {path}: {exc.strerror}") from None
            raise Error(f"{path} is still mounted but nothing serves it ({exc.strerror}); "
                        f"unmount it with `mount-image -u {path}`, then mount again") from None
        if sources[-1].startswith(SOURCE_PREFIX):
            raise Error(f"{path} already has a backup mounted ({sources[-1][len(SOURCE_PREFIX):]}); "
                        f"unmount it with `mount-image -u {path}` or give another directory")
    if not os.path.isdir(path):
        raise Error(f"{path} is not a directory; give an empty directory to mount on")


def left_behind(path):
    """What a mount-image killed while mounting left at path, and what to do about it."""
    if not _mount_sources(path):
        return "nothing is mounted there"
    return f"it left a mount with nothing serving it: mount-image -u {path}"


def unmount(path):
    """fusermount3 -u, which unprivileged users may run (and which unmounts a dead mount too);
    umount as a fallback for root."""
    if not _mount_sources(path):
        raise Error(f"cannot unmount {path}: it is not mounted")
    for argv in (["fusermount3", "-u", path], ["umount", path]):
        if shutil.which(argv[0]):
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if result.returncode == 0:
                return
            reason = result.stderr.strip() or "no reason given"
            if "busy" in reason:
                reason = _why_busy(path) or (f"{reason}; a process is using it (an open file, "
                                             "a working directory): end that, then try again")
            raise Error(f"cannot unmount {path}: {reason}")
    raise Error("neither fusermount3 nor umount is installed (Debian packages fuse3, mount)")


def _why_busy(path):
    """What keeps a mount busy that the user can undo: its files behind loop devices that are
    mounted ('m/sda.img.p2 backs /dev/loop5, which is mounted at /mnt (read-only)'), the usual
    way a partition of a backup is read; None when it is something else."""
    found = []
    try:
        for name in sorted(os.listdir(path)):
            file = os.path.join(path, name)
            found += uses_of(file_stat=os.stat(file), name=file)
    except OSError:
        return None     # a dead mount: fusermount3's own reason is all there is
    if not found:
        return None
    return "; ".join(found) + f"; unmount {'that' if len(found) == 1 else 'those'} first"

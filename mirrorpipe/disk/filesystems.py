"""Which blocks of a file system are free, from the tools made for each kind.

ext2/3/4: dumpe2fs lists the free block ranges of every block group in milliseconds, mounted or
not. Every other kind partclone supports: `partclone.FS -D` writes a ddrescue domain map. It
refuses mounted file systems, even read-only ones, and after writing its map it waits a fixed
2 seconds for its progress thread (measured: 2.008 s for a 512 MiB xfs, whatever the size), so
the map is taken as soon as it covers the whole file system and partclone is ended then.
Swap areas: only the header page counts.

A FreeSpace map is made in two steps: check() waits until it is known whether the map can be
had (a reason is raised as Unmappable otherwise), then free_ranges() streams the free byte ranges
in ascending order, so memory stays bounded whatever the number of extents. Anything a map does
not say is free is read: a map cut short costs reading, never data.
"""

import os
import re
import signal
import subprocess
import tempfile

from .loopdevice import LoopDevice
from ..errors import Error

EXT_TYPES = ("ext2", "ext3", "ext4")
PARTCLONE_PROGRAMS = {   # blkid TYPE -> partclone.NAME
    "xfs": "xfs", "btrfs": "btrfs", "ntfs": "ntfs", "vfat": "fat", "exfat": "exfat",
    "f2fs": "f2fs", "hfsplus": "hfsp", "minix": "minix", "reiser4": "reiser4", "apfs": "apfs",
}
WHY_READ_IN_FULL = {     # blkid TYPE -> why its used blocks cannot be told
    "crypto_LUKS": "LUKS encrypted: which of its blocks are in use cannot be told from outside",
    "BitLocker": "BitLocker encrypted: which of its blocks are in use cannot be told from outside",
    "LVM2_member": "an LVM physical volume: its logical volumes are not mapped",
    "linux_raid_member": "a RAID member: its array is not mapped",
    "zfs_member": "a ZFS pool member: no tool here maps ZFS",
    "swsuspend": "a swap area holding a hibernation image, which is kept whole",
}
SWAP_PAGE_SIZES = (4096, 8192, 16384, 65536)


class Unmappable(Exception):
    """The used blocks of a file system cannot be had; the text says why."""


class Place:
    """Where a file system lies: bytes [offset, offset + size) of the open source fd (its path
    given for messages), and a device node that shows exactly that range, if there is one."""

    def __init__(self, fd, offset, size, device=None):
        self.fd, self.offset, self.size, self.device = fd, offset, size, device


def free_space_map(filesystem, place):
    """The FreeSpace map for a blkid TYPE, started; Unmappable when none can be had."""
    if filesystem in EXT_TYPES:
        return ExtFreeSpace(place)
    if filesystem == "swap":
        return SwapFreeSpace(place)
    if filesystem in PARTCLONE_PROGRAMS:
        return PartcloneFreeSpace(place, f"partclone.{PARTCLONE_PROGRAMS[filesystem]}")
    if filesystem in WHY_READ_IN_FULL:
        raise Unmappable(WHY_READ_IN_FULL[filesystem])
    if filesystem is None:
        raise Unmappable("no file system recognised")
    raise Unmappable(f"no tool here maps the used blocks of {filesystem}")


def _last_line(text):
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


class ExtFreeSpace:
    """ext2/3/4 through dumpe2fs, run twice: once to check, once to stream.

    dumpe2fs does not check the bitmaps, so the check compares each group's free blocks in the
    bitmap with the count its group descriptor keeps, as partclone does for the whole file
    system: damage to either shows as a difference. The check reads dumpe2fs's whole output,
    which holds no more than a few lines per block group (40 KiB for 2 GiB); the free ranges are
    read again after it instead of being kept, so memory does not grow with the file system."""

    tool = "dumpe2fs"
    how = "its used blocks, from the free block lists of dumpe2fs"

    def __init__(self, place):
        self.place = place
        self.checking = self._dumpe2fs()

    def _dumpe2fs(self):
        # /dev/fd/N reads the very file read-disk opened; "?offset=" is e2fsprogs' own I/O option.
        name = f"/dev/fd/{self.place.fd}" + (f"?offset={self.place.offset}" if self.place.offset else "")
        try:
            return subprocess.Popen(["dumpe2fs", name], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(self.place.fd,), text=True,
                                    errors="replace")
        except FileNotFoundError:
            raise Unmappable("dumpe2fs is not installed (Debian package e2fsprogs)") from None

    def check(self):
        facts, counted, listed, group = {}, None, 0, None
        mismatch = None
        for line in self.checking.stdout:
            if line.startswith("Group "):
                group, counted, listed = line.split(":")[0][6:], None, 0
            elif group is None:
                key, _, value = line.partition(":")
                facts[key.strip()] = value.strip()
            elif " free blocks, " in line or " free clusters, " in line:
                counted = int(line.split()[0])
            elif line.startswith("  Free blocks:"):
                for first, _, last in re.findall(r"(\d+)(-(\d+))?", line[14:]):
                    listed += int(last or first) - int(first) + 1
                ratio = int(facts.get("Cluster size", 0) or 0) // int(facts["Block size"]) or 1
                if mismatch is None and counted is not None and listed != counted * ratio:
                    mismatch = (f"its block bitmap disagrees with its group descriptors (group {group}: "
                                f"{listed} blocks free in the bitmap, {counted * ratio} counted)")
        stderr = self.checking.stderr.read()
        if self.checking.wait() != 0 or "Block size" not in facts:
            raise Unmappable(f"dumpe2fs cannot read it: {_last_line(stderr)}")
        features = facts.get("Filesystem features", "").split()
        state = facts.get("Filesystem state", "")
        if "needs_recovery" in features:
            raise Unmappable("its journal holds changes not yet written to it (it was not unmounted "
                             "cleanly): mount and unmount it, or run e2fsck, first")
        if state != "clean":
            raise Unmappable(f"its state is '{state}': run e2fsck on it first")
        if mismatch:
            raise Unmappable(mismatch)
        self.block_size = int(facts["Block size"])
        if int(facts["Block count"]) * self.block_size > self.place.size:
            raise Unmappable("it is larger than the space it lies in")

    def free_ranges(self):
        process = self._dumpe2fs()
        block = self.block_size
        for line in process.stdout:
            if line.startswith("  Free blocks:"):
                for first, _, last in re.findall(r"(\d+)(-(\d+))?", line[14:]):
                    yield int(first) * block, (int(last or first) + 1) * block
        stderr = process.stderr.read()
        if process.wait() != 0:
            raise Error(f"dumpe2fs failed the second time it read a file system it had read: "
                        f"{_last_line(stderr)}")

    def close(self):
        if self.checking.poll() is None:
            self.checking.kill()
            self.checking.wait()


class PartcloneFreeSpace:
    """Every kind partclone supports, through `partclone.FS -D` (its ddrescue domain map:
    '+' used, '?' free). partclone takes a device or file name and no offset, so a file system
    inside a larger image or disk is given to it as a loop device over exactly its range."""

    def __init__(self, place, program):
        self.tool = program
        self.how = f"its used blocks, from the domain map of {program} -D"
        self.loop = None
        self.process = None
        device = place.device
        if device is None:
            try:
                self.loop = LoopDevice(place.fd, place.offset, place.size)
            except Error as exc:
                raise Unmappable(f"{program} needs a device to read it: {exc}") from None
            device = self.loop.path
        self.log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                [program, "-D", "-q", "-L", "/dev/null", "-s", device, "-o", "-"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log)
        except FileNotFoundError:
            self.close()
            raise Unmappable(f"{program} is not installed (Debian package partclone)") from None

    def check(self):
        # The map's first line that is not a comment is "CURRENT_POS STATUS": the end of the map.
        for line in self.process.stdout:
            if not line.startswith(b"#"):
                self.end = int(line.split()[0], 16)
                return
        self.process.wait()
        self.log.seek(0)
        reason = _last_line(self.log.read().decode("utf-8", "replace"))
        self.close()
        raise Unmappable(f"{self.tool} cannot map it: {reason}")

    def free_ranges(self):
        for line in self.process.stdout:
            if line.startswith(b"#"):
                continue
            pos, size, status = line.split()[:3]
            start, end = int(pos, 16), int(pos, 16) + int(size, 16)
            if status == b"?":
                yield start, end
            if end >= self.end:
                break    # the whole file system is mapped: what partclone does now is its wait
        self.close()

    def close(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait()
        if self.process:
            self.process.stdout.close()
        self.log.close()
        if self.loop:
            self.loop.close()
            self.loop = None


class SwapFreeSpace:
    """A swap area: the header page (signature, UUID, label, bad page list) is kept, the pages
    it lends to memory are free. The page size is where its signature lies."""

    tool = None
    how = "a swap area: only its header page"

    def __init__(self, place):
        self.place = place

    def check(self):
        head = os.pread(self.place.fd, max(SWAP_PAGE_SIZES), self.place.offset)
        for page in SWAP_PAGE_SIZES:
            if head[page - 10:page] == b"SWAPSPACE2":
                self.page = page
                return
        raise Unmappable("no swap signature where its first page ends")

    def free_ranges(self):
        yield self.page, self.place.size

    def close(self):
        pass

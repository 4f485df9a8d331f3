"""Which blocks of a file system are free, from the tools made for each kind.

ext2/3/4: dumpe2fs lists the free block ranges of every block group in milliseconds, mounted or
not. btrfs: its own extent and chunk trees (btrfs inspect-internal dump-tree), exact to the byte
where partclone.btrfs rounds each extent out to whole 16 KiB nodes. Every other kind partclone
supports: `partclone.FS -D` writes a ddrescue domain map. It refuses mounted file systems, even
read-only ones, and after writing its map it waits a fixed 2 seconds for its progress thread
(measured: 2.008 s for a 512 MiB xfs, whatever the size), so the map is taken as soon as it
covers the whole file system and partclone is ended then; FAT's copies of its table are compared
first, since partclone reads only the first. Swap areas: only the header page counts.

A FreeSpace map is made in two steps: check() waits until it is known whether the map can be
had (a reason is raised as Unmappable otherwise), then free_ranges() streams the free byte ranges
in ascending order, so memory stays bounded whatever the number of extents. Anything a map does
not say is free is read: a map cut short costs reading, never data.
"""

import heapq
import itertools
import os
import re
import signal
import subprocess
import tempfile
from array import array
from collections import namedtuple

from .loopdevice import LoopDevice
from ..errors import Error

EXT_TYPES = ("ext2", "ext3", "ext4")
# Mapped by tools that read a file system mounted read-only (partclone refuses it).
MAPPED_WHILE_MOUNTED_READ_ONLY = EXT_TYPES + ("btrfs",)
PARTCLONE_PROGRAMS = {   # blkid TYPE -> partclone.NAME
    "xfs": "xfs", "ntfs": "ntfs", "vfat": "fat", "exfat": "exfat",
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
MIB = 1024 * 1024


class Unmappable(Exception):
    """The used blocks of a file system cannot be had; the text says why."""


class Place:
    """Where a file system lies: bytes [offset, offset + size) of the open source fd, and a
    device node (or image file) that shows exactly that range, if there is one."""

    def __init__(self, fd, offset, size, device=None):
        self.fd, self.offset, self.size, self.device = fd, offset, size, device


def free_space_map(filesystem, place):
    """The FreeSpace map for a blkid TYPE, started; Unmappable when none can be had."""
    if filesystem in EXT_TYPES:
        return ExtFreeSpace(place)
    if filesystem == "swap":
        return SwapFreeSpace(place)
    if filesystem == "btrfs":
        return BtrfsFreeSpace(place)
    if filesystem == "vfat":
        return FatFreeSpace(place)
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


def _device_node(place, program):
    """(a device node showing exactly the file system's range, the LoopDevice made for it or
    None), for tools that take a device name and no offset."""
    if place.device is not None:
        return place.device, None
    try:
        loop = LoopDevice(place.fd, place.offset, place.size)
    except Error as exc:
        raise Unmappable(f"{program} needs a device to read it: {exc}") from None
    return loop.path, loop


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
        self.process = None
        device, self.loop = _device_node(place, program)
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


class FatFreeSpace(PartcloneFreeSpace):
    """FAT through partclone.fat, whose map comes from the first FAT alone: entries zeroed there
    map clusters free that another copy still chains into files (and fsck.vfat would restore
    from it). So every copy is first compared with the first, 1 MiB at a time; copies that
    differ are damage, and the file system is read in full."""

    def __init__(self, place):
        super().__init__(place, f"partclone.{PARTCLONE_PROGRAMS['vfat']}")
        self.place = place

    def check(self):
        self._compare_fat_copies()
        super().check()

    def _compare_fat_copies(self):
        fd, offset = self.place.fd, self.place.offset
        try:
            boot = os.pread(fd, 512, offset)
        except OSError as exc:
            raise Unmappable(f"its boot sector cannot be read: {exc.strerror}") from None
        sector = int.from_bytes(boot[11:13], "little")
        reserved = int.from_bytes(boot[14:16], "little")
        copies = boot[16] if len(boot) > 16 else 0
        sectors = int.from_bytes(boot[22:24], "little") or int.from_bytes(boot[36:40], "little")
        size = sectors * sector
        if sector not in (512, 1024, 2048, 4096) or not reserved or not copies or not size \
                or (reserved * sector + copies * size) > self.place.size:
            raise Unmappable("its boot sector does not describe FATs that fit in it (damaged)")
        first = offset + reserved * sector
        for copy in range(1, copies):
            for done in range(0, size, MIB):
                length = min(MIB, size - done)
                try:
                    same = os.pread(fd, length, first + done) == \
                        os.pread(fd, length, first + copy * size + done)
                except OSError as exc:
                    raise Unmappable(f"its FATs cannot be read: {exc.strerror}") from None
                if not same:
                    raise Unmappable(f"its FAT copies differ (damaged): copy {copy + 1} is not the "
                                     f"first within its bytes {done}-{done + length}; run fsck.vfat "
                                     "on it to choose between them")


BtrfsChunk = namedtuple("BtrfsChunk", "logical end kind stripes")   # stripes: physical offsets


class BtrfsFreeSpace:
    """btrfs from its own trees (btrfs inspect-internal): the chunk tree maps logical to
    physical bytes (a DUP chunk to two places on the device), the extent tree lists every used
    logical extent, data and metadata alike. Used on the device: the first 1 MiB (never
    allocated, left to boot loaders), every superblock copy, and each extent at each of its
    chunk's stripes; everything else (space in chunks no extent covers, unallocated space) is
    free, to the byte. partclone.btrfs maps whole 16 KiB nodes instead, keeping up to 12 KiB of
    free space on each side of every extent (16 KiB of a deleted 64 KiB file stayed).

    Only what can be mapped exactly is: one device, single and DUP chunks, no log tree. The
    extent tree is read twice, like dumpe2fs's output: the check reads it to its end (damage
    shows as messages on stderr or extents whose sizes do not add up to the superblock's
    bytes_used), then free_ranges streams it again. Extents come in logical order; the device is
    mapped in physical order, which differs (mkfs puts its second data chunk at 1 MiB, a balance
    moves chunks): a chunk's merged used ranges (array('Q')) are kept from when the extent list
    passes its end until its last stripe is reached on the device, at most BUFFERED_RANGES of
    them; past that the rest of the device is left unmapped, so read in full, and `how` says so."""

    tool = "btrfs"
    how = "its used blocks, from its extent and chunk trees (btrfs inspect-internal dump-tree)"
    RESERVED = MIB
    SUPERBLOCKS = (64 * 1024, 64 * MIB, 256 * 1024 * MIB)
    SUPERBLOCK_SIZE = 4096
    PROFILES = ("single", "DUP")   # each stripe holds its chunk whole, on this device
    BUFFERED_RANGES = 1 << 20      # 16 MiB of array('Q')
    ITEM = re.compile(r"\titem \d+ key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)")
    CHUNK = re.compile(r"\titem \d+ key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)")
    LENGTH = re.compile(r"\s+length (\d+) owner \d+ stripe_len \d+ type (\S+)")
    STRIPE = re.compile(r"\s+stripe \d+ devid (\d+) offset (\d+)")
    SUPER_FACTS = ("num_devices", "log_root", "nodesize", "bytes_used", "dev_item.total_bytes",
                   "dev_item.devid")

    def __init__(self, place):
        self.place = place
        self.loop = self.checking = self.streaming = None
        # dump-tree takes no offset: a file system at the start of the source is read through
        # the very file read-disk opened, any other through its device node or a loop device.
        if place.offset == 0:
            self.device = f"/dev/fd/{place.fd}"
        else:
            self.device, self.loop = _device_node(place, "btrfs inspect-internal dump-tree")
        try:
            self.checking = self._dump_tree("extent")
        except BaseException:
            self.close()
            raise

    def _inspect(self, *args):
        # --noscan: only this device, never another holding the same file system (a clone).
        # stderr to a file: a damaged tree makes dump-tree write lines there while we read stdout.
        command = ["btrfs", "inspect-internal", *args, self.device]
        log = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=log, pass_fds=(self.place.fd,), text=True,
                                       errors="replace")
        except FileNotFoundError:
            log.close()
            raise Unmappable("btrfs is not installed (Debian package btrfs-progs)") from None
        process.log = log
        return process

    def _dump_tree(self, tree):
        return self._inspect("dump-tree", "--noscan", "-t", tree)

    @staticmethod
    def _finish(process):
        """Wait for process; the last line it wrote to stderr if it failed or wrote any, else None
        (dump-tree exits 0 when it skips a damaged tree block, saying so on stderr only)."""
        process.stdout.close()
        status = process.wait()
        process.log.seek(0)
        stderr = process.log.read().decode("utf-8", "replace")
        process.log.close()
        return _last_line(stderr) if status != 0 or stderr.strip() else None

    def _read_super(self):
        process = self._inspect("dump-super")
        facts, key = {}, None
        for line in process.stdout:
            if line[:1].isspace() and key:      # continuation, e.g. the list of flag names
                facts[key] += " " + line.strip()
            elif line.strip():
                key, _, value = line.strip().partition("\t")
                facts[key] = value.strip()
        failed = self._finish(process)
        if failed or "[match]" not in facts.get("magic", "") or "[match]" not in facts.get("csum", ""):
            raise Unmappable(f"btrfs inspect-internal dump-super cannot read its superblock: "
                             f"{failed or 'no valid superblock at 64 KiB'}")
        return facts

    def _read_chunks(self, devid):
        process = self._dump_tree("chunk")
        chunks, chunk, elsewhere = [], None, None
        for line in process.stdout:
            if (match := self.CHUNK.match(line)):
                chunk = [int(match[1]), None, None, []]
                chunks.append(chunk)
            elif chunk and (match := self.LENGTH.match(line)):
                chunk[1], chunk[2] = chunk[0] + int(match[1]), match[2]
            elif chunk and (match := self.STRIPE.match(line)):
                chunk[3].append(int(match[2]))
                if int(match[1]) != devid:
                    elsewhere = (f"its chunk at logical byte {chunk[0]} lies on device {match[1]}, "
                                 "not this one")
        failed = self._finish(process)
        if failed:
            raise Unmappable(f"btrfs inspect-internal dump-tree finds it damaged: {failed}")
        if elsewhere:
            raise Unmappable(elsewhere)
        if not chunks or any(c[1] is None or not c[3] for c in chunks):
            raise Unmappable("its chunk tree is unreadable: dump-tree gave no chunks, or chunks "
                             "without length or place")
        return [BtrfsChunk(logical, end, kind, tuple(stripes))
                for logical, end, kind, stripes in chunks]

    def check(self):
        facts = self._read_super()
        missing = [key for key in self.SUPER_FACTS if not facts.get(key, "").isdigit()]
        if missing:
            raise Unmappable(f"btrfs inspect-internal dump-super gives no {', '.join(missing)}")
        devices = int(facts["num_devices"])
        if devices != 1:
            raise Unmappable(f"it spans {devices} devices: only a btrfs on one device is mapped")
        if int(facts["log_root"]):
            raise Unmappable("its log tree holds changes not yet written into it (it was not "
                             "unmounted cleanly): mount and unmount it first")
        unsupported = {"ZONED", "EXTENT_TREE_V2"} & set(facts.get("incompat_flags", "").split())
        if unsupported:
            raise Unmappable(f"its {', '.join(sorted(unsupported))} layout is not mapped here")
        self.nodesize = int(facts["nodesize"])
        self.size = int(facts["dev_item.total_bytes"])
        if self.size > self.place.size:
            raise Unmappable("it is larger than the space it lies in")
        self.chunks = sorted(self._read_chunks(int(facts["dev_item.devid"])))
        for chunk in self.chunks:
            profile = chunk.kind.split("|")[-1]
            if profile not in self.PROFILES:
                raise Unmappable(f"it has {chunk.kind} chunks: only single and DUP chunks, which "
                                 "hold each byte whole on one device, are mapped")
        self.stripes = sorted((physical, index) for index, chunk in enumerate(self.chunks)
                              for physical in chunk.stripes)
        ends = [self.RESERVED] + [physical + self.chunks[index].end - self.chunks[index].logical
                                  for physical, index in self.stripes]
        overlapping = any(physical < end for (physical, _), end in zip(self.stripes, ends))
        if overlapping or ends[-1] > self.size:
            raise Unmappable("its chunk tree is inconsistent (chunks overlap or run past the device)")
        used = sum(end - start for _, start, end in self._extents(self.checking.stdout))
        failed = self._finish(self.checking)
        if failed:
            raise Unmappable(f"btrfs inspect-internal dump-tree finds it damaged: {failed}")
        if used != int(facts["bytes_used"]):
            raise Unmappable(f"its extent tree lists {used} bytes used, its superblock counts "
                             f"{facts['bytes_used']} (damaged)")

    def _extents(self, lines):
        """(chunk index, start, end) of each extent in lines of `dump-tree -t extent`, in logical
        order; Unmappable where one is out of order or outside every chunk."""
        chunks, index, previous = self.chunks, 0, 0
        for line in lines:
            if not (match := self.ITEM.match(line)):
                continue
            start = int(match[1])
            end = start + (self.nodesize if match[2] == "METADATA_ITEM" else int(match[3]))
            if start < previous:
                raise Unmappable(f"its extent tree is out of order at logical byte {start} (damaged)")
            previous = end
            while index < len(chunks) and start >= chunks[index].end:
                index += 1
            if index == len(chunks) or start < chunks[index].logical or end > chunks[index].end:
                raise Unmappable(f"its extent at logical bytes {start}-{end} lies outside its "
                                 "chunks (damaged)")
            yield index, start, end

    def _stripe_ranges(self, extents):
        """The used byte ranges of every stripe, in physical order, from extents in logical
        order; self.cut set, and the ranges ended early, when more than BUFFERED_RANGES would
        have to wait for a stripe lower on the device."""
        waiting, left = {}, [len(chunk.stripes) for chunk in self.chunks]
        buffered, following = 0, 0
        current, ranges = 0, array("Q")
        # The end: one past the last chunk, so that every chunk is passed.
        for index, start, end in itertools.chain(extents, [(len(self.chunks), 0, 0)]):
            while current < index:        # the extent list has passed the end of chunk current
                waiting[current] = ranges
                buffered += len(ranges) // 2
                current, ranges = current + 1, array("Q")
                while following < len(self.stripes) and self.stripes[following][1] in waiting:
                    physical, which = self.stripes[following]
                    used, shift = waiting[which], physical - self.chunks[which].logical
                    for i in range(0, len(used), 2):
                        yield used[i] + shift, used[i + 1] + shift
                    following += 1
                    left[which] -= 1
                    if not left[which]:
                        buffered -= len(used) // 2
                        del waiting[which]
                if buffered > self.BUFFERED_RANGES:
                    self.cut = self.stripes[following][0]
                    return
            if ranges and ranges[-1] >= start:
                ranges[-1] = max(ranges[-1], end)
            else:
                ranges.extend((start, end))

    def free_ranges(self):
        process = self.streaming = self._dump_tree("extent")
        fixed = [(0, self.RESERVED)] + [(offset, offset + self.SUPERBLOCK_SIZE)
                                        for offset in self.SUPERBLOCKS if offset < self.size]
        self.cut = None
        position = 0
        try:
            for start, end in heapq.merge(fixed, self._stripe_ranges(self._extents(process.stdout))):
                if self.cut is not None:
                    break
                if start > position:
                    yield position, start
                position = max(position, end)
        except Unmappable as exc:
            raise Error(f"btrfs inspect-internal dump-tree read another extent tree the second "
                        f"time it read a file system: {exc}") from None
        if self.cut is not None:
            self.how += (f"; from byte {self.cut} on read in full: its chunks lie too far out of "
                         "order on the device to be mapped in bounded memory")
            return
        failed = self._finish(process)
        if failed:
            raise Error(f"btrfs inspect-internal dump-tree failed the second time it read a file "
                        f"system it had read: {failed}")
        if position < self.size:
            yield position, self.size

    def close(self):
        for process in (self.checking, self.streaming):
            if process and process.poll() is None:
                process.kill()
                process.wait()
            if process:
                process.stdout.close()
                process.log.close()
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

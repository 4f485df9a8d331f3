"""read-disk --used-only: the plan of which bytes of a disk to read and which to emit as zeros.

The output is the whole disk, byte for byte at the same offsets, except that the free blocks of
the file systems it holds read as zeros. Partition tables, the gaps between partitions, the space
a file system leaves at the end of its partition, and every partition whose used blocks cannot be
told are read in full; only what a file system's own tool reports free is left unread.
"""

import os

from . import blockdev, partitiontable
from .filesystems import MAPPED_WHILE_MOUNTED_READ_ONLY, Place, Unmappable, free_space_map
from ..errors import Error
from ..units import format_size


class Partition:
    """One partition (or the whole source holding a file system directly) and how it is read."""

    def __init__(self, entry, filesystem, name=None):
        self.entry = entry
        self.filesystem = filesystem
        self.name = name            # its device node, where it has one
        self.map = None             # the FreeSpace map when only used blocks are read
        self.why = None             # why it is read in full
        self.read_bytes = 0

    @property
    def end(self):
        return self.entry.start + self.entry.size

    def describe(self):
        what = "the source" if self.entry.number is None else f"partition {self.entry.number}"
        return f"{what} ({self.filesystem or 'unknown'}, {format_size(self.entry.size)})"

    def info(self):
        return {"number": self.entry.number, "name": self.name, "start": self.entry.start,
                "size": self.entry.size, "type": self.entry.type, "filesystem": self.filesystem,
                "used_bytes": self.read_bytes if self.map else None,
                "read": "used blocks" if self.map else "in full",
                "why": self.map.how if self.map else self.why,
                "map": self.map.tool if self.map else None}


class UsedBlocks:
    """The partitions of an open disk.Source and the maps of their free blocks, started at once
    (partclone runs in parallel), checked before the first byte is read."""

    def __init__(self, source):
        if source.size is None:
            raise Error(f"{source.path} is a stream: --used-only needs a disk, a partition or an image file")
        self.source = source
        self.partitions = []
        self.why_no_table = None
        self.zero_bytes = 0         # free space emitted as zeros so far
        try:
            self._find_partitions()
            self._refuse_mounted()
            self._start_maps()
        except BaseException:
            self.close()
            raise

    def _find_partitions(self):
        source = self.source
        whole = partitiontable.probe(source.path)
        if whole.ambivalent:
            self.why_no_table = "blkid finds contradicting signatures on it"
        elif whole.type:
            self.partitions = [Partition(partitiontable.Entry(None, 0, source.size, None), whole.type,
                                         source.path)]
        elif whole.table:
            entries, _ = partitiontable.partitions(source.path)
            nodes = {(start, size): f"/dev/{name}" for _, name, start, size
                     in (blockdev.partitions(source.rdev) if source.rdev is not None else [])}
            self.partitions = [
                Partition(entry, partitiontable.probe(source.path, entry.start, entry.size).type,
                          nodes.get((entry.start, entry.size)))
                for entry in entries]
            ends = [0] + [p.end for p in self.partitions]
            if any(p.entry.start < previous for p, previous in zip(self.partitions, ends)) \
                    or ends[-1] > source.size:
                self.why_no_table = "its partition table is inconsistent (partitions overlap or run past its end)"
                for partition in self.partitions:
                    partition.why = self.why_no_table
        else:
            self.why_no_table = "neither a partition table nor a file system is recognised on it"

    def _refuse_mounted(self):
        """A file system mounted read-write changes its bitmap while it is read: refused. Mounted
        read-only, dumpe2fs (ext2/3/4) and btrfs's dump-tree map it; partclone refuses mounted
        file systems."""
        source = self.source
        st = os.fstat(source.fd)
        uses = blockdev.uses(source.rdev) if source.rdev is not None else \
            blockdev.uses(file_stat=st, name=source.path)
        for partition in self.partitions:
            if partition.why or partition.filesystem == "swap":
                continue   # read in full anyway; a swap area keeps only its header, which is stable
            for use in uses:
                if use.start < partition.end and (use.end is None or use.end > partition.entry.start):
                    if use.writable:
                        raise Error(f"{partition.describe()} is in use: {use.description}; its free "
                                    "blocks change while it is read: unmount it or remount it read-only "
                                    "(or read it in full without --used-only)")
                    if partition.filesystem not in MAPPED_WHILE_MOUNTED_READ_ONLY:
                        raise Error(f"{partition.describe()} is in use: {use.description}; partclone, "
                                    "which maps its used blocks, refuses mounted file systems: unmount "
                                    "it (or read it in full without --used-only)")

    def _start_maps(self):
        source = self.source
        started = []
        for partition in self.partitions:
            if partition.why:
                continue
            whole = partition.entry.number is None
            place = Place(source.fd, partition.entry.start, partition.entry.size,
                          source.path if whole else partition.name)
            try:
                partition.map = free_space_map(partition.filesystem, place)
                started.append(partition)
            except Unmappable as exc:
                partition.why = str(exc)
        for partition in started:
            try:
                partition.map.check()
            except Unmappable as exc:
                partition.map.close()
                partition.map, partition.why = None, str(exc)

    def regions(self):
        """(start, end, is_data) ranges covering the source in order; not is_data: free, emit zeros."""
        position = 0
        for partition in self.partitions:
            if not partition.map:
                continue
            first, last = partition.entry.start, partition.end
            for free_start, free_end in partition.map.free_ranges():
                start, end = max(first + free_start, position), min(first + free_end, last)
                if start >= end:
                    continue
                if start > position:
                    yield from self._data(partition, position, start)
                self.zero_bytes += end - start
                yield start, end, False
                position = end
            yield from self._data(partition, position, last)
            position = last
        if position < self.source.size:
            yield position, self.source.size, True

    def _data(self, partition, start, end):
        """Read [start, end): the part of it inside the partition counts as its used bytes."""
        if start < end:
            partition.read_bytes += end - max(start, partition.entry.start)
            yield start, end, True

    def close(self):
        for partition in self.partitions:
            if partition.map:
                partition.map.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def info(self):
        return [partition.info() for partition in self.partitions]

    def summary(self):
        """Lines for stderr: what was read, then each partition read in full and why."""
        zero_bytes = self.zero_bytes
        mapped = [p for p in self.partitions if p.map]
        file_systems = sum(1 for p in mapped if p.filesystem != "swap")
        swaps = len(mapped) - file_systems
        parts = []
        if file_systems:
            parts.append(f"used blocks of {file_systems} file system{'s' if file_systems != 1 else ''}")
        if swaps:
            parts.append(f"the header of {swaps} swap area{'s' if swaps != 1 else ''}")
        lines = [f"read {format_size(self.source.size - zero_bytes)} of {format_size(self.source.size)}: "
                 + (" and ".join(parts) if parts else "no file system mapped, all of it read")
                 + f"; {format_size(zero_bytes)} of free space written as zeros"]
        if self.why_no_table and not self.partitions:
            lines.append(f"{self.source.path} read in full: {self.why_no_table}")
        lines += [f"{p.describe()} read in full: {p.why}" for p in self.partitions if not p.map]
        return lines

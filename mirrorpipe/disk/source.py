"""Reading a disk, a partition or an image file as one raw stream.

The source is opened read-only. Block devices report their size through the kernel; image files
are read with SEEK_DATA/SEEK_HOLE, so holes are emitted as zeros without being read.
"""

import datetime
import errno
import os
import stat

from .. import __version__
from . import badsectors, blockdev, mapfile
from ..errors import Error
from ..stream.streams import BLOCK_SIZE, pread_full, read_full, write_all, write_zeros


class Source:
    """An open source and the byte range [offset, offset + length) of it to read."""

    def __init__(self, path, offset=0, length=None):
        """path '-' is standard input."""
        self.path = path
        try:
            self.fd = os.dup(0) if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise Error(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(self.fd)
        self.rdev = st.st_rdev if stat.S_ISBLK(st.st_mode) else None
        self.is_file = stat.S_ISREG(st.st_mode)
        if self.rdev is not None:
            self.size = blockdev.device_size(self.fd)
        elif self.is_file:
            self.size = st.st_size
        elif stat.S_ISDIR(st.st_mode):
            raise Error(f"{path} is a directory; give a disk, a partition or an image file")
        else:
            self.size = None  # a character device or pipe: read until it ends
        if self.size is None and offset:
            raise Error(f"{path} is not seekable, so --offset cannot be used with it")
        if path == "-" and self.size is not None:
            offset += os.lseek(self.fd, 0, os.SEEK_CUR)  # start where standard input stands
        if offset < 0 or (self.size is not None and offset > self.size):
            raise Error(f"--offset {offset} is beyond the end of {path} ({self.size} bytes)")
        if length is not None and self.size is not None and offset + length > self.size:
            raise Error(f"--offset {offset} plus --length {length} runs past the end of {path} "
                        f"({self.size} bytes)")
        self.offset = offset
        self.length = length if length is not None else (None if self.size is None else self.size - offset)
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass

    def close(self):
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read_write_mounts(self):
        """Read-write mounts of the source or its partitions: an image of them may be inconsistent."""
        return blockdev.read_write_mounts(self.rdev) if self.rdev is not None else []

    def info(self, host):
        """JSON-ready facts about the source, for read-disk --info."""
        facts = {
            "source": self.path,
            "type": "image file" if self.is_file else "other",
            "size": self.size,
            "offset": self.offset,
            "length": self.length,
            "logical_sector_size": None,
            "physical_sector_size": None,
            "model": None,
            "serial": None,
            "partition_table": None,
            "contents": None,
            "partitions": [],
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": host,
            "mirrorpipe_version": __version__,
        }
        sector = 512
        if self.rdev is not None:
            facts["type"] = "partition" if blockdev.is_partition(self.rdev) else "disk"
            facts["device"] = blockdev.device_name(self.rdev)
            sector, facts["physical_sector_size"] = blockdev.sector_sizes(self.fd)
            facts["logical_sector_size"] = sector
            facts.update(blockdev.identity(self.rdev))
            facts["partitions"] = [{"name": name, "start": start, "size": size}
                                   for _, name, start, size in blockdev.partitions(self.rdev)]
        if self.size:
            head = os.pread(self.fd, min(blockdev.SIGNATURE_BYTES, self.size), 0)
            facts["partition_table"] = blockdev.partition_table(head, sector)
            facts["contents"] = blockdev.describe_contents(head, sector)
        return facts

    def bad_sector_reader(self, map_path=None, progress=None, **options):
        """The badsectors.BadSectorReader that takes this source's read errors (options: retries,
        fill, max_retry_time), its ddrescue map saved to MAP_PATH as it goes; None for a stream (a
        pipe or character device), which has no sectors to go back to and is read plainly. A block
        device is read in its logical sectors and with O_DIRECT (badsectors says why), an image
        file in 512-byte sectors through the page cache."""
        if self.size is None:
            return None
        sector = blockdev.sector_sizes(self.fd)[0] if self.rdev is not None else 512
        bad_map = mapfile.Map(self.size, map_path)
        bad_map.save()
        return badsectors.BadSectorReader(
            self.fd, self.offset, self.offset + self.length, sector_size=sector, map=bad_map,
            name=self.path, progress=progress, direct=self.rdev is not None, **options)

    def extents(self, start, end):
        """(start, end, is_data) ranges covering [start, end); holes only for image files. end
        None: to the end of a stream."""
        if not self.is_file:
            yield start, end, True
            return
        pos = start
        while pos < end:
            try:
                data = min(os.lseek(self.fd, pos, os.SEEK_DATA), end)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nothing but hole from pos to the end
                    raise
                data = end
            if data > pos:
                yield pos, data, False
                pos = data
                continue
            hole = min(os.lseek(self.fd, pos, os.SEEK_HOLE), end)
            yield pos, hole, True
            pos = hole

    def copy_to(self, out_fd, progress=None, reader=None, regions=None):
        """Write the range to out_fd; return the number of bytes written. With a reader (a
        badsectors.BadSectorReader), data is read through it: unreadable sectors are filled.
        regions, (start, end, is_data) ranges covering the range in order, say what to read and
        what to emit as zeros unread (usedblocks.UsedBlocks.regions); by default all is read."""
        view = memoryview(bytearray(BLOCK_SIZE))
        written = 0
        whole = [(self.offset, None if self.length is None else self.offset + self.length, True)]
        for region_start, region_end, region_is_data in regions or whole:
            parts = self.extents(region_start, region_end) if region_is_data else [
                (region_start, region_end, False)]
            for start, end, is_data in parts:
                if is_data:
                    count = self._copy_range(out_fd, start, end, view, progress, reader)
                else:
                    if reader:
                        reader.mark_read(start, end)   # a hole or free space: zeros, never read
                    write_zeros(out_fd, end - start)
                    count = end - start
                    if progress:
                        progress.advance(count)
                written += count
        return written

    def _copy_range(self, out_fd, start, end, view, progress, reader):
        """Read [start, end) (end None: to the end of a stream) to out_fd; return the count."""
        pos = start
        while end is None or pos < end:
            want = len(view) if end is None else min(len(view), end - pos)
            got = reader.read(pos, view[:want]) if reader else self._read_at(pos, view[:want])
            if got == 0:
                if end is not None:
                    raise Error(f"{self.path} ended at byte {pos}, before the {end} bytes it "
                                "reported (was it changed or removed while reading?)")
                break
            write_all(out_fd, view[:got])
            pos += got
            if progress:
                progress.advance(got)
        return pos - start

    def _read_at(self, pos, view):
        """Read up to len(view) bytes at pos; fewer only at the end of the source."""
        try:
            return pread_full(self.fd, view, pos) if self.size is not None else read_full(self.fd, view)
        except OSError as exc:
            raise Error(f"read error on {self.path} at byte {pos + exc.received}: {exc.strerror}") from None

"""Reading a failing source to the end: unreadable sectors are filled, mapped and skipped over.

BadSectorReader.read(offset, view) stands in for a plain positional read. When the read
succeeds (a healthy source) it costs one preadv, as before. When it fails:

1. the failing block is read again, up to `retries` times (some errors heal);
2. the readable part is narrowed down to the sector: splitting the failing range again and
   again finds its first unreadable sector, so every readable sector before it is saved. The
   split is at half while failed reads are as quick as others, nearer the start of the range
   as they get slower (on a real disk, seconds against a fraction of a millisecond), so that
   fewer reads meet the bad sector: _split_fraction;
3. from that sector, probes at growing distances (1, 2, 4, 8 ... sectors, across blocks if need
   be) find where the source answers again, and halving between the last failing and the first
   answering probe finds the end of the bad run. A single bad sector costs one probe; a source
   that stopped answering costs a few dozen probes up to its end, never a crawl;
4. the sectors inside the run that no probe tried are read one at a time while the time budget
   (`max_retry_time`, for the whole source) lasts: ddrescue's scraping pass. What stays unread
   keeps the status "non-tried" in the map.

ddrescue does (4) at the end of its whole pass, after securing everything readable. A stream
cannot: the bytes of a run must be emitted before anything after it, and can never be revised.
So the run is settled when the stream reaches it, within the budget, and every unreadable byte
goes out as the fill pattern. The probes ahead of the stream save nothing; what they find
readable is read again when the stream gets there.

Narrowing reads go through a second, O_DIRECT descriptor where the source allows one: buffered
reads of a block device fail a whole 4 KiB page (the page cache's unit) around one bad 512-byte
sector, direct reads fail only the sector. After an error the stream's own reads use it too,
until CAREFUL_BLOCKS blocks in a row have read cleanly.
"""

import errno
import mmap
import os
import time

from . import mapfile
from .errors import Error, UsageError

# The errno values of a medium that cannot deliver a sector (the block layer reports a medium
# error as ENODATA, a timeout as ETIMEDOUT, others as EIO). Any other error ends the read.
MEDIA_ERRORS = frozenset({errno.EIO, errno.ENODATA, errno.ETIMEDOUT, errno.EREMOTEIO, errno.EILSEQ})

DEFAULT_RETRIES = 1
DEFAULT_MAX_RETRY_TIME = 300.0
MAP_SAVE_INTERVAL = 30.0   # seconds between saves of the map while reads succeed
MAP_SAVE_ON_ERROR = 1.0    # at most this often while errors are being found
SUMMARY_AREAS = 5          # bad areas the summary names
# After an error, this many blocks in a row must read cleanly before reads go through the page
# cache again: a buffered read that meets a bad sector has lost its read-ahead, and the kernel
# then reads the block one 4 KiB page per request up to the bad one.
CAREFUL_BLOCKS = 64


def parse_fill_pattern(text):
    """Bytes for --fill: '0x' followed by hex digits, or any other text (its UTF-8 bytes)."""
    if text.lower().startswith("0x"):
        try:
            pattern = bytes.fromhex(text[2:])
        except ValueError:
            raise UsageError(f"fill pattern {text!r} is not hex bytes: write e.g. 0xDEADBEEF, "
                        "or text without the 0x prefix") from None
    else:
        pattern = text.encode("utf-8")
    if not pattern:
        raise UsageError("the fill pattern is empty: give hex bytes like 0xDEADBEEF or some text")
    return pattern


def _read_into(fd, offset, view, name):
    """preadv until view is full; (bytes read, whether a media error stopped it). Fewer bytes
    without an error means the end of the source."""
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], offset + got)
        except OSError as exc:
            if exc.errno not in MEDIA_ERRORS:
                raise Error(f"read error on {name} at byte {offset + got}: {exc.strerror}") from None
            return got, True
        if n == 0:
            break
        got += n
    return got, False


class BadSectorReader:
    """Reads the range [start, end) of the descriptor fd in order, filling what cannot be read.

    The map (a mapfile.Map of the whole source, saved as it goes when it has a path) records
    what was read, what was found bad and what was never tried. `sector_size` is the source's
    logical sector size, the unit of bad sectors; `name` names the source in messages; a
    `progress` meter (cli.Progress) shows the count of unreadable sectors.
    """

    def __init__(self, fd, start, end, sector_size=512, retries=DEFAULT_RETRIES, fill=b"\0",
                 max_retry_time=DEFAULT_MAX_RETRY_TIME, map=None, block_size=1 << 20,
                 name="the source", progress=None):
        if block_size % sector_size:
            raise Error(f"block size {block_size} is not a multiple of the sector size {sector_size}")
        self.fd = fd
        self.start = start
        self.end = end
        self.name = name
        self.progress = progress
        self.sector = sector_size
        self.retries = retries
        self.map = map if map is not None else mapfile.Map(end)
        self.retry_time_left = max_retry_time
        self._fill = (fill * (sector_size // len(fill) + 1))[:sector_size] * (block_size // sector_size)
        self._block_size = block_size
        self._bounce = None       # page-aligned buffer for O_DIRECT, made at the first error
        self._direct_fd = None
        self._run_end = 0         # end of the last bad run found; the stream has not passed it
        self._careful_blocks = 0  # blocks still to read around the page cache after an error
        # Time spent in reads after errors, and their count: failed ones, then successful ones.
        self._read_costs = {True: [0.0, 0], False: [0.0, 0]}
        self._saved_at = time.monotonic()

    def close(self, finished=True):
        """Save the map a last time and release the direct descriptor."""
        self.map.save(finished=finished)
        if self._direct_fd not in (None, self.fd):
            os.close(self._direct_fd)
        self._direct_fd = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(finished=exc_type is None)

    # -- the stream's read -----------------------------------------------------------------

    def read(self, offset, view):
        """Fill view with the source's bytes at offset, unreadable sectors replaced by the fill
        pattern; return len(view), fewer only at the end of the source."""
        end = offset + len(view)
        start = offset
        if start < self._run_end:
            start = min(end, self._run_end)
            self._settle_run(offset, start, view, offset)
        if start < end:
            if self._careful_blocks:
                readable_to = self._read_sectors(start, end, view, offset)
                count, failed = max(readable_to - start, 0), readable_to < end
            else:
                count, failed = _read_into(self.fd, start, view[start - offset:], self.name)
            if failed:
                count = self._rescue(offset, view, start, start + count) - start
            else:
                self._careful_blocks = max(self._careful_blocks - 1, 0)
                self.map.set(start, start + count, mapfile.FINISHED)
            end = start + count
        self.map.position = end
        if time.monotonic() - self._saved_at >= MAP_SAVE_INTERVAL:
            self._save()
        return end - offset

    def mark_read(self, start, end):
        """Record [start, end) as read without reading it (a hole of a sparse image)."""
        self.map.set(start, end, mapfile.FINISHED)
        self.map.position = end

    # -- what happens after a failed read ----------------------------------------------------

    def _rescue(self, offset, view, start, failed_at):
        """Finish view after a read from start failed at failed_at; return where the data in
        view ends."""
        end = offset + len(view)
        self.map.set(start, failed_at, mapfile.FINISHED)
        self._restore_readahead()
        self._open_direct()
        self._careful_blocks = CAREFUL_BLOCKS
        # Sectors are counted from the start of the source; a partly read sector is read again.
        position = failed_at - failed_at % self.sector
        stop = min(end, self.end)
        for _ in range(self.retries):
            position = self._read_and_map(position, stop, view, offset)
            if position >= stop:
                return end
        while position < stop:  # reading [position, stop) has just failed
            position, is_bad = self._first_bad_sector(position, stop, view, offset)
            if is_bad:
                bad = position
                position = self._bad_run_end(bad)
                self._run_end = max(self._run_end, position)
                self._settle_run(bad, min(position, end), view, offset)
            if position < stop:
                position = self._read_and_map(position, stop, view, offset)
        self._save(min_interval=MAP_SAVE_ON_ERROR)
        return end

    def _read_and_map(self, start, end, view, offset):
        """_read_sectors, with what was read mapped as finished."""
        readable_to = self._read_sectors(start, end, view, offset)
        self.map.set(start, readable_to, mapfile.FINISHED)
        return readable_to

    def _first_bad_sector(self, start, end, view, offset):
        """Halve [start, end), whose read failed, down to its first unreadable sector, saving
        the readable sectors before it. Returns (that sector, True), or (end, False) when every
        sector read after all."""
        low, high = start, end  # the first unreadable sector lies in [low, high)
        tried_alone = high - low <= self.sector
        split = self._split_fraction()
        while high - low > self.sector:
            middle = low + max(int((high - low) // self.sector * split), 1) * self.sector
            readable_to = self._read_and_map(low, middle, view, offset)
            if readable_to >= middle:
                low, tried_alone = middle, False
            else:
                low, high, tried_alone = readable_to, middle, middle - readable_to == self.sector
        if not tried_alone and self._read_and_map(low, high, view, offset) >= high:
            return high, False
        self.map.set(low, low + self.sector, mapfile.BAD_SECTOR)
        return low, True

    def _split_fraction(self):
        """Where to split a failing range: at half while failed reads cost what others do, ever
        nearer its start as they cost more (a real disk spends seconds on a bad sector, a
        fraction of a millisecond on a good one), so that fewer reads meet the bad sector.
        1 / (1 + r ** 0.75), r the cost ratio, stays within 15 % of the optimal expected cost of
        finding one bad sector among 2048 for any r (computed by dynamic programming)."""
        (failed_time, failed_reads), (read_time, reads) = self._read_costs[True], self._read_costs[False]
        if not (failed_reads and reads and read_time):
            return 0.5
        ratio = (failed_time / failed_reads) / (read_time / reads)
        return min(0.5, 1 / (1 + ratio ** 0.75))

    def _bad_run_end(self, bad):
        """Where the source answers again after the unreadable sector bad (or the range's end).

        Probes go 1, 2, 4 ... sectors ahead of the last failing one, then halving between the
        last failing and the first readable probe finds the first readable sector. Sectors
        between probes are left non-tried for _settle_run.
        """
        last_bad, step = bad, self.sector
        while True:
            probe = last_bad + step
            if probe >= self.end:
                return self.end
            if self._read_sectors(probe, probe + self.sector) > probe:
                readable = probe
                break
            self.map.set(probe, probe + self.sector, mapfile.BAD_SECTOR)
            last_bad, step = probe, step * 2
        while readable - last_bad > self.sector:
            middle = last_bad + (readable - last_bad) // 2 // self.sector * self.sector
            if self._read_sectors(middle, middle + self.sector) > middle:
                readable = middle
            else:
                self.map.set(middle, middle + self.sector, mapfile.BAD_SECTOR)
                last_bad = middle
        return readable

    def _settle_run(self, start, end, view, offset):
        """The part [start, end) of a bad run that lies in view: filled, then its non-tried
        sectors read one at a time while the retry time lasts."""
        self._put_fill(start, end, view, offset)
        for area_start, area_end, _ in self.map.areas(mapfile.NON_TRIED, start, end):
            position = area_start - area_start % self.sector
            while position < area_end and self.retry_time_left > 0:
                began = time.monotonic()
                sector_end = position + self.sector
                if self._read_sectors(position, sector_end, view, offset) > position:
                    self.map.set(position, sector_end, mapfile.FINISHED)
                else:
                    self.map.set(position, sector_end, mapfile.BAD_SECTOR)
                self.retry_time_left -= time.monotonic() - began
                position = sector_end
                self._save(min_interval=MAP_SAVE_INTERVAL)

    # -- reading sectors ---------------------------------------------------------------------

    def _restore_readahead(self):
        """Undo the kernel's answer to a failed buffered read, which quarters the descriptor's
        read-ahead window: after a few errors the healthy rest of a disk would be read one
        4 KiB page per request, several times slower."""
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass  # not a file or device that reads ahead

    def _open_direct(self):
        """The descriptor for narrowing: O_DIRECT when the source allows it, else the plain one."""
        if self._direct_fd is not None:
            return
        self._bounce = memoryview(mmap.mmap(-1, self._block_size))
        try:
            self._direct_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self._direct_fd = self.fd

    def _read_sectors(self, start, end, view=None, offset=0):
        """Read the sectors [start, end) (sector-aligned; the last may pass the end of the
        source) and copy what overlaps view (which holds the bytes from offset on). Return
        where the readable part ends: end (or the source's end) when all of it read."""
        position = start - start % self.sector
        while position < end:
            # Whole sectors, as O_DIRECT requires; past the end of the source they read short.
            length = min(-(-(end - position) // self.sector) * self.sector, self._block_size)
            buffer = self._bounce[:length]
            began = time.monotonic()
            try:
                count, failed = _read_into(self._direct_fd, position, buffer, self.name)
            except Error:
                if self._direct_fd == self.fd:
                    raise
                # O_DIRECT refused after all (EINVAL for an odd alignment): go buffered for good.
                os.close(self._direct_fd)
                self._direct_fd = self.fd
                continue
            cost = self._read_costs[failed]
            cost[0] += time.monotonic() - began
            cost[1] += 1
            if view is not None:
                low, high = max(position, offset), min(position + count, offset + len(view))
                if low < high:
                    view[low - offset:high - offset] = buffer[low - position:high - position]
            if failed:
                return position + count - count % self.sector
            if count < length:  # the end of the source: all of the range there is was read
                return end if position + count >= min(end, self.end) else position + count
            position += length
        return end

    def _put_fill(self, start, end, view, offset):
        """The fill pattern over [start, end) of view, lined up with sector starts."""
        position = start
        while position < end:
            phase = position % self.sector
            length = min(end - position, len(self._fill) - phase)
            view[position - offset:position - offset + length] = self._fill[phase:phase + length]
            position += length

    def _save(self, min_interval=0.0):
        """Bring the map file and the progress line up to date, at most every min_interval s."""
        now = time.monotonic()
        if now - self._saved_at >= min_interval:
            self.map.save()
            if self.progress:
                self.progress.set_detail(f"{self.unreadable_bytes() // self.sector} sectors unreadable")
            self._saved_at = now

    # -- the outcome -------------------------------------------------------------------------

    def unreadable_areas(self):
        """(start, end, status) of the areas of the stream so far that were not read."""
        return self.map.areas(mapfile.UNREAD, self.start, self.map.position)

    def unreadable_bytes(self):
        return sum(end - start for start, end, _ in self.unreadable_areas())

    def summary(self):
        """One line on what could not be read, or None when everything was."""
        areas = self.unreadable_areas()
        if not areas:
            return None
        merged = []  # touching areas of different statuses are one bad area to a user
        for start, end, _ in areas:
            if merged and merged[-1][1] == start:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        total = sum(end - start for start, end in merged)
        untried = sum(end - start for start, end, status in areas if status == mapfile.NON_TRIED)
        named = ", ".join(self._describe(start, end) for start, end in merged[:SUMMARY_AREAS])
        if len(merged) > SUMMARY_AREAS:
            named += ", ..."
        text = (f"{total} bytes unreadable ({total // self.sector} sectors of {self.sector} bytes) "
                f"in {len(merged)} area{'s' if len(merged) != 1 else ''}, filled in the image: {named}")
        if untried:
            text += (f"; {untried} bytes of them were skipped without being tried "
                     "(the retry time ran out)")
        return text

    def _describe(self, start, end):
        first, last = start // self.sector, (end - 1) // self.sector
        sectors = f"sector {first}" if first == last else f"sectors {first}-{last}"
        return f"{sectors} (bytes {start}-{end - 1})"

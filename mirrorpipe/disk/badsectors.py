"""Reading a failing source to the end: unreadable sectors are filled, mapped and skipped over.

BadSectorReader.read(offset, view) stands in for a plain positional read. When the read
succeeds (a healthy source) it costs one preadv, as before. When it fails:

1. the failing block is read again, up to `retries` times (some errors heal);
2. the readable part is narrowed down to the sector: splitting the failing range again and
   again finds its first unreadable sector, so every readable sector before it is saved;
3. from that sector, if bad sectors have tended to come in runs (a first one always counts
   as a possible run), probes at growing distances (1, 2, 4, 8 ... sectors, across blocks if
   need be) find where the source answers again, and halving between the last failing and the
   first answering probe finds the end of the bad run. A source that stopped answering costs a
   few dozen probes up to its end, never a crawl. Where bad sectors have come alone, no probe:
   the next read starts right after the bad sector;
4. from the end of the run, the rest of the failing range is read in groups ("galloping"):
   a group as long as the measured spacing of bad runs and the measured cost of failed against
   good reads make cheapest (_search_plan), longer once the stretch read without an error
   outgrows that spacing. A group that fails is narrowed down as in (2), split where the same
   plan says. Reading the rest of the block at once instead would
   fail at the next bad sector and cost a halving of the whole rest: with 1 % of the sectors
   bad, about 12 reads per bad sector against about 9 (the least possible is about 8: each
   read answers yes or no, and where the bad sectors are holds about 8 bits per bad sector);
5. the sectors inside the run that no probe tried are read one at a time while the time budget
   (`max_retry_time`, for the whole source) lasts: ddrescue's scraping pass. What stays unread
   keeps the status "non-tried" in the map.

ddrescue does (5) at the end of its whole pass, after securing everything readable. A stream
cannot: the bytes of a run must be emitted before anything after it, and can never be revised.
So the run is settled when the stream reaches it, within the budget, and every unreadable byte
goes out as the fill pattern. The probes ahead of the stream save nothing; what they find
readable is read again when the stream gets there.

Narrowing reads go through a second, O_DIRECT descriptor where the source allows one: buffered
reads of a block device fail a whole 4 KiB page (the page cache's unit) around one bad 512-byte
sector, direct reads fail only the sector. After an error the stream's own reads use it too,
until CAREFUL_BLOCKS blocks in a row have read cleanly. A block device is read through it from
the start (direct=True): the first buffered read that meets a bad area would otherwise make the
kernel retry the whole block, and the read-ahead window before it, one 4 KiB page per request,
hundreds of failed requests where a failing disk takes seconds for each (measured on a loop
device over faultfs: 550 failed requests against 31 for a dead second half).
"""

import errno
import math
import mmap
import os
import time

from . import mapfile
from ..stream.streams import BLOCK_SIZE, pread_full
from ..errors import Error, UsageError

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
# The split fractions _search_plan weighs, besides 1 / (1 + r ** 0.75) for a cost ratio r (within
# 15 % of the best split for one bad sector among 2048): 0 splits off one sector at a time, what
# pays when failed reads cost many good ones.
SPLITS = (0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
# Bad runs the spacing estimate remembers: beyond this, older counts are halved, so that the
# plan follows a disk whose damage changes from one area to the next.
RUNS_REMEMBERED = 64


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


def _read_into(fd, view, offset, name):
    """pread_full: (bytes read, whether a media error stopped it). Fewer bytes without an error
    means the end of the source."""
    try:
        return pread_full(fd, view, offset), False
    except OSError as exc:
        if exc.errno not in MEDIA_ERRORS:
            raise Error(f"read error on {name} at byte {offset + exc.received}: {exc.strerror}") from None
        return exc.received, True


def _search_costs(ratio, split, longest):
    """[h]: the expected cost of narrowing h sectors (up to longest) that hold one bad sector,
    anywhere alike, down to it by splits at the fraction, a read costing 1, or the ratio when it
    fails; the last read included that fails on the bad sector alone (when the narrowing ends
    on a sector that only the reads around it put the blame on, that read is one more)."""
    costs = [0.0, ratio]
    for h in range(2, longest + 1):
        part = max(1, min(h - 1, int(h * split)))
        fails = part / h
        costs.append(fails * (ratio + (costs[part] if part > 1 else 0.0))
                     + (1 - fails) * (1 + costs[h - part]))
    return costs


def _best_search_plan(density, search_costs):
    """(group, split, search cost) for _search_plan: the group length and split fraction of
    least expected cost per bad sector, bad sectors being independent with the density, a read
    costing 1, or the ratio when it fails. search_costs maps each split to its _search_costs.

    Taking the bad sector of a failed group to be alone in it (and anywhere alike) keeps this
    to a moment's work; the plans it picks cost within 0.5 % of the best plans of the exact
    model (dynamic programming over both choices, for densities of 0.05 % to 5 % and failed
    reads costing 0.7 to 100 good ones)."""
    q = 1 - min(density, 0.5)
    best = None
    for split, costs in search_costs.items():
        ratio = costs[1]
        for group in _GROUPS:
            if group >= len(costs):
                break
            failing = 1 - q ** group
            after = costs[group] if group > 1 else 0.0
            cost = (1 - failing + failing * (ratio + after)) / failing
            if best is None or cost < best[0]:
                best = (cost, group, split, after)
    return best[1:]


# The group lengths _best_search_plan weighs: about 5 % apart.
_GROUPS = sorted({int(1.05 ** k) for k in range(200)})


class BadSectorReader:
    """Reads the range [start, end) of the descriptor fd in order, filling what cannot be read.

    The map (a mapfile.Map of the whole source, saved as it goes when it has a path) records
    what was read, what was found bad and what was never tried. `sector_size` is the source's
    logical sector size, the unit of bad sectors; `name` names the source in messages; a
    `progress` meter (mirrorpipe.progress) shows the count of unreadable sectors.
    """

    def __init__(self, fd, start, end, sector_size=512, retries=DEFAULT_RETRIES, fill=b"\0",
                 max_retry_time=DEFAULT_MAX_RETRY_TIME, map=None, block_size=BLOCK_SIZE,
                 name="the source", progress=None, direct=False):
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
        # What the narrowing has met, for _search_plan: sectors it settled, bad runs it found
        # (and how many of them were longer than one sector), where the last run ended.
        self._searched = 0
        self._bad_runs = 0
        self._long_runs = 0
        self._last_run_end = -1
        self._last_run_long = False
        self._plans = {}          # _search_plan's plans, and its tables per cost ratio
        self._search_costs = {}
        self._saved_at = time.monotonic()
        # direct: every read bypasses the page cache, not only those after an error (block
        # devices: see the module's docstring).
        self._always_direct = direct
        if direct:
            self._open_direct()

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
            if self._careful_blocks or self._always_direct:
                readable_to = self._read_sectors(start, end, view, offset)
                count, failed = max(readable_to - start, 0), readable_to < end
            else:
                count, failed = _read_into(self.fd, view[start - offset:], start, self.name)
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
            readable_to = self._read_sectors(position, stop, view, offset)
            self._map_read(position, readable_to)
            position = readable_to
            if position >= stop:
                return end
        failing_to = stop  # reading [position, failing_to) has just failed
        while position < stop:
            position, is_bad = self._first_bad_sector(position, failing_to, view, offset)
            if is_bad:
                bad = position
                position = self._bad_run_end(bad)
                self._note_run(bad, position)
                self._run_end = max(self._run_end, position)
                self._settle_run(bad, min(position, end), view, offset)
            if position < stop:
                position, failing_to = self._gallop(position, stop, view, offset)
        self._save(min_interval=MAP_SAVE_ON_ERROR)
        return end

    def _map_read(self, start, end):
        """Map [start, end), read by the narrowing, as finished and count it for _search_plan.
        Each stretch is mapped once, where it ends, not after each of its reads: a map update
        per read was a sixth of the Python time per read, and the narrowing makes about 9 reads
        per bad sector."""
        if start < end:
            self.map.set(start, end, mapfile.FINISHED)
            self._searched += (end - start) // self.sector

    def _gallop(self, start, stop, view, offset):
        """Read [start, stop), not known to fail, in groups of the planned length, longer as
        the stretch read grows past the spacing of bad runs met so far. Returns (start, end) of
        the group read that failed, whose readable part before start is saved, or (stop, stop)
        when all of it read."""
        position = start
        while position < stop:
            group = self._search_plan((position - start) // self.sector)[0]
            group_end = min(stop, position + group * self.sector)
            readable_to = self._read_sectors(position, group_end, view, offset)
            if readable_to < group_end:
                self._map_read(start, readable_to)
                return readable_to, group_end
            position = group_end
        self._map_read(start, stop)
        return stop, stop

    def _first_bad_sector(self, start, end, view, offset):
        """Narrow [start, end), whose read failed, down to its first unreadable sector, saving
        the readable sectors before it. Returns (that sector, True), or (end, False) when every
        sector read after all.

        A range much longer than the planned group (the whole rest of a block after a failed
        block read) is tried a group at a time from its start, as _gallop does; a shorter one
        is split at the planned fraction."""
        low, high = start, end  # the first unreadable sector lies in [low, high)
        tried_alone = high - low <= self.sector
        group, split, _ = self._search_plan()
        while high - low > self.sector:
            sectors = (high - low) // self.sector
            if sectors > 2 * group:
                middle = low + group * self.sector
                group = self._search_plan((middle - start) // self.sector)[0]
            else:
                middle = low + max(int(sectors * split), 1) * self.sector
            readable_to = self._read_sectors(low, middle, view, offset)
            if readable_to >= middle:
                low, tried_alone = middle, False
            else:
                low, high, tried_alone = readable_to, middle, middle - readable_to == self.sector
        if not tried_alone and self._read_sectors(low, high, view, offset) >= high:
            self._map_read(start, high)
            return high, False
        self._map_read(start, low)
        self.map.set(low, low + self.sector, mapfile.BAD_SECTOR)
        return low, True

    def _cost_ratio(self):
        """How many good reads a failed one costs, as measured (1 before anything is): a real
        disk spends seconds on a bad sector, a fraction of a millisecond on a good one."""
        (failed_time, failed_reads), (read_time, reads) = self._read_costs[True], self._read_costs[False]
        if not (failed_reads and reads and read_time and failed_time):
            return 1.0
        return min(max((failed_time / failed_reads) / (read_time / reads), 1 / 16), 1 << 16)

    def _search_plan(self, stretch=0):
        """(group, split, search cost): the group length in sectors for _gallop and the split
        fraction for _first_bad_sector that make finding the next bad sector cheapest, and the
        expected cost (in good reads) of narrowing a failed group down to its bad sector.

        Bad runs are taken to start independently, at the density the narrowing has met so far
        (one per block before any is found); a read costs 1 when it succeeds, the measured cost
        ratio when it fails. With 1 % of the sectors bad and failures as cheap as reads this
        reads groups of about 65 sectors and halves them (8.6 reads per bad sector on average,
        within 1 % of the optimum found by dynamic programming); as failures get dearer, shorter
        groups split nearer their start, down to one sector at a time, so that a bad sector
        costs one failed read and no more.

        `stretch`, the sectors just read without an error, stands for the density when it is the
        longer spacing: longer groups where the damage thins out (doubling the group after each
        group read instead would cost a quarter more failed reads where it does not, and four
        times as many when failed reads are slow). Plans are kept per half-octave of density and
        octave of cost ratio."""
        density = (self._bad_runs + 1) / (self._searched + self._block_size // self.sector)
        if stretch:
            density = min(density, 1 / stretch)
        ratio_key = round(math.log2(self._cost_ratio()))
        key = (round(math.log2(max(density, 1e-6)) * 2), ratio_key)
        plan = self._plans.get(key)
        if plan is None:
            costs = self._search_costs.get(ratio_key)
            if costs is None:
                ratio = 2.0 ** ratio_key
                splits = SPLITS + (min(0.5, 1 / (1 + ratio ** 0.75)),)
                longest = self._block_size // self.sector
                costs = self._search_costs[ratio_key] = {
                    split: _search_costs(ratio, split, longest) for split in splits}
            plan = self._plans[key] = _best_search_plan(2 ** (key[0] / 2), costs)
        return plan

    def _note_run(self, bad, run_end):
        """Count the bad run [bad, run_end) for _search_plan: a bad sector right after the end
        of the last run (a run taken to be one sector long, _bad_run_end probing no further)
        makes that run a longer one."""
        if bad == self._last_run_end:
            if not self._last_run_long:
                self._long_runs += 1
            self._last_run_long = True
        else:
            self._bad_runs += 1
            self._last_run_long = run_end - bad > self.sector
            self._long_runs += self._last_run_long
        self._searched += (run_end - bad) // self.sector
        self._last_run_end = run_end
        if self._bad_runs > RUNS_REMEMBERED:
            self._bad_runs //= 2
            self._long_runs //= 2
            self._searched //= 2

    def _run_probable(self):
        """Whether probing the sector after a bad one pays: when it is bad too (as often as
        found so far, a first bad sector counting as half a run), the probe spares the narrowing
        of a failed group down to it; when it reads, the probe was one read more."""
        continued = (self._long_runs + 1) / (self._bad_runs + 2)
        return continued * self._search_plan()[2] > 1 - continued

    def _bad_run_end(self, bad):
        """Where the source answers again after the unreadable sector bad (or the range's end).

        Probes go 1, 2, 4 ... sectors ahead of the last failing one, then halving between the
        last failing and the first readable probe finds the first readable sector. Sectors
        between probes are left non-tried for _settle_run.

        No probe when bad sectors have mostly come alone (_run_probable): the run is taken to
        end after bad, and the next group read tries the sector after it. A bad sector found
        right there continues the run, and probes.
        """
        if bad != self._last_run_end and not self._run_probable():
            return min(bad + self.sector, self.end)
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
                count, failed = _read_into(self._direct_fd, buffer, position, self.name)
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

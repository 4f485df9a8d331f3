"""Maps of what was read from a source, in GNU ddrescue's mapfile format.

A map divides the source into areas, each with a ddrescue status. ddrescue, ddrescuelog and
ddrescueview read the file, so a user can list the bad sectors (`ddrescuelog -l- MAP`), see a
summary (`ddrescuelog -t MAP`), or later go after the missing areas with ddrescue itself.
The file is replaced atomically on every save: a reader never sees half a map.
"""

import bisect
import sys
import time

from .. import __version__
from ..stream.streams import NamedOutput

# Statuses as GNU ddrescue defines them.
NON_TRIED = "?"    # not read yet
NON_TRIMMED = "*"  # failed as part of a larger read, edges not yet looked at sector by sector
NON_SCRAPED = "/"  # failed as part of a larger read, edges trimmed, inside not read sector by sector
BAD_SECTOR = "-"   # failed when read one sector at a time
FINISHED = "+"     # read
UNREAD = NON_TRIED + NON_TRIMMED + NON_SCRAPED + BAD_SECTOR
STATUSES = UNREAD + FINISHED


class Map:
    """The areas of a source of known size, each with a status; everything starts non-tried.

    Held as two parallel sorted lists (area starts, statuses) with neighbours of equal status
    merged, so its size follows the number of distinct areas, not the size of the source.
    """

    def __init__(self, size, path=None, command_line=None):
        self.size = size
        self.path = path
        self.command_line = command_line or " ".join(sys.argv)
        self.started = time.localtime()
        self.position = 0
        self._starts = [0]
        self._statuses = [NON_TRIED]
        self._in_place_output = None   # see save()

    def set(self, start, end, status):
        """Give [start, end) the status (clipped to the source)."""
        start, end = max(start, 0), min(end, self.size)
        if start >= end:
            return
        starts, statuses = self._starts, self._statuses
        # Split so that start and end are area boundaries, then replace the areas between them.
        first = self._split(start)
        last = self._split(end) if end < self.size else len(starts)
        starts[first:last] = [start]
        statuses[first:last] = [status]
        # Merge with equal neighbours.
        if first + 1 < len(starts) and statuses[first + 1] == status:
            del starts[first + 1], statuses[first + 1]
        if first > 0 and statuses[first - 1] == status:
            del starts[first], statuses[first]

    def _split(self, position):
        """Make position an area boundary; return the index of the area starting there."""
        index = bisect.bisect_right(self._starts, position) - 1
        if self._starts[index] == position:
            return index
        self._starts.insert(index + 1, position)
        self._statuses.insert(index + 1, self._statuses[index])
        return index + 1

    def status(self, position):
        return self._statuses[bisect.bisect_right(self._starts, position) - 1]

    def areas(self, statuses=STATUSES, start=0, end=None):
        """(start, end, status) of the areas whose status is among statuses, clipped to
        [start, end), in order."""
        end = self.size if end is None else min(end, self.size)
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_left(self._starts, end)
        found = []
        for index in range(max(first, 0), last):
            area_end = self._starts[index + 1] if index + 1 < len(self._starts) else self.size
            if self._statuses[index] in statuses:
                found.append((max(self._starts[index], start), min(area_end, end), self._statuses[index]))
        return found

    def text(self, finished=False):
        now = time.localtime()
        lines = [
            f"# Mapfile. Created by mirrorpipe version {__version__} (GNU ddrescue format)",
            f"# Command line: {self.command_line}",
            f"# Start time:   {time.strftime('%Y-%m-%d %H:%M:%S', self.started)}",
            f"# Current time: {time.strftime('%Y-%m-%d %H:%M:%S', now)}",
        ]
        if finished:
            lines.append("# Finished")
        lines += [
            "# current_pos  current_status  current_pass",
            f"0x{self.position:08X}     {FINISHED if finished else NON_TRIED}               1",
            "#      pos        size  status",
        ]
        lines += [f"0x{start:08X}  0x{end - start:08X}  {status}" for start, end, status in self.areas()]
        return "\n".join(lines) + "\n"

    def save(self, finished=False):
        """Replace the mapfile with the current map (written beside it, then renamed). A map
        named as a device, FIFO or terminal is opened at the first save and written once, when
        the read has finished: a FIFO's reader or a terminal takes one map, not one per save."""
        if self.path is None:
            return
        output = self._in_place_output or NamedOutput(self.path, binary=False, what="the map")
        if output.in_place and not finished:
            self._in_place_output = output
            return
        self._in_place_output = None
        try:
            output.write(self.text(finished).encode("utf-8", "surrogateescape"))
            output.commit()
        finally:
            output.abandon()

"""Every copy at hand of one volume (two directories, an ISO image beside the volume file, ...)
read as one volume: each chunk from the first copy that holds it intact."""

import io
import os

from .. import units
from . import chunks
from ..errors import Error


class VolumeCopies(io.RawIOBase):
    """Every copy at hand of one volume (in two directories, an ISO image and the volume file,
    ...), read chunk by chunk: each chunk from the first copy whose chunk matches the manifest.
    As a file (seek, then readinto of one whole chunk) it stands for the volume in a
    parity.Rebuilder; readinto gives nothing for a chunk no copy holds intact."""

    def __init__(self, copies, check_every_copy=False):
        """check_every_copy (--verify): read every copy of every chunk, to find damaged copies
        whose chunks another copy holds intact, not only the damage a restore meets."""
        super().__init__()
        self.copies = copies
        self.manifest = copies[0].manifest
        self.check_every_copy = check_every_copy
        self.files = []
        self.unusable = []          # why copies could not be opened
        self.damaged = {}           # chunk number -> the copies (positions) damaged there
        self.source = {}            # chunk number -> the copy it came from, when another was damaged
        self.read_errors = {}       # (copy, chunk number) -> the read error
        self.opened = []            # whether each copy could be opened
        self.position = 0
        self._spare = None          # check_every_copy: where the other copies' chunks are read

    def open(self):
        """Open every copy; errors.Error when none can be (truncated, missing, unreadable)."""
        for volume in self.copies:
            try:
                self.files.append(volume.open_file())
            except Error as exc:
                self.files.append(None)
                self.unusable.append(str(exc))
        if not any(self.files):
            self.close()
            raise Error("; ".join(self.unusable))
        for file in self.files:
            if isinstance(file, io.FileIO):
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.opened = [file is not None for file in self.files]
        return self

    def read_chunk(self, number, view, hashes=None):
        """Fill view (as long as chunk `number`) from the first copy whose chunk is intact, and
        feed it to `hashes` (a list of hashes, replaced in place by their updated copies); False
        when no copy holds the chunk intact (view then holds damaged bytes, hashes are unchanged)."""
        hashes = [] if hashes is None else hashes
        digest = self.manifest.chunk_digest(number)
        found = None
        for position, file in enumerate(self.files):
            if file is None:
                continue
            if found is not None:
                if not self.check_every_copy:
                    break
                if self._spare is None:
                    self._spare = bytearray(self.manifest.chunk_size)
                if self._load(position, number, memoryview(self._spare)[:len(view)], ()) != digest:
                    self.damaged.setdefault(number, []).append(position)
                continue
            trial = [hash_.copy() for hash_ in hashes]
            if self._load(position, number, view, trial) == digest:
                found = position
                hashes[:] = trial
            else:
                self.damaged.setdefault(number, []).append(position)
        if found is not None and number in self.damaged:
            self.source[number] = found
        return found is not None

    def _load(self, position, number, view, hashes):
        """Read chunk `number` of a copy into view, feeding it to `hashes`; the chunk's digest,
        or None when the copy is short or cannot be read there (the read error kept)."""
        try:
            return chunks.read_chunk(self.files[position], number, self.manifest.chunk_size, view, hashes)
        except OSError as exc:
            self.read_errors[position, number] = f"cannot read {self.copies[position].path}: {exc.strerror}"
        except Error as exc:
            self.read_errors[position, number] = str(exc)
        return None

    def describe_damaged(self, number):
        """Why chunk `number` cannot be read from any copy: one sentence naming the volume, each
        copy and the offset."""
        manifest = self.manifest
        start = number * manifest.chunk_size
        size = min(manifest.chunk_size, manifest.length - start)
        damaged = self.damaged.get(number, [])
        first = damaged[0] if damaged else 0
        what = self.read_errors.get((first, number)) or (
            f"corrupt data in {self.copies[first].label} at offset {start} (stream offset "
            f"{manifest.offset + start}): the {units.format_size(size)} chunk there does not match "
            "its manifest")
        others = [self.copies[p].path for p in damaged[1:]]
        return what + (f"; no other copy holds it intact ({', '.join(others)} damaged there too)"
                       if others else "")

    def damage(self):
        """What the copies make up for, one line each: chunks damaged in a copy (or a copy that
        could not be used) and the copy that holds them intact."""
        read = [volume.path for volume, opened in zip(self.copies, self.opened) if opened]
        lines = [f"{reason}; {', '.join(read)} was read instead" for reason in self.unusable]
        taken = {}      # (damaged copy, intact copy) -> offsets
        for number, source in sorted(self.source.items()):
            for position in self.damaged[number]:
                taken.setdefault((position, source), []).append(number * self.manifest.chunk_size)
        for (position, source), offsets in sorted(taken.items()):
            lines.append(f"{self.manifest.key.describe()}: the chunk{'s' if len(offsets) > 1 else ''} "
                         f"at offset {', '.join(map(str, offsets[:5]))}{' ...' if len(offsets) > 5 else ''} "
                         f"{'are' if len(offsets) > 1 else 'is'} damaged in {self.copies[position].path} "
                         f"and intact in {self.copies[source].path}, which gave {'them' if len(offsets) > 1 else 'it'}")
        return lines

    # As a file, for parity.Rebuilder.

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        if whence != os.SEEK_SET or offset % self.manifest.chunk_size:
            raise ValueError("VolumeCopies reads whole chunks only")
        self.position = offset
        return offset

    def readinto(self, buffer):
        number = self.position // self.manifest.chunk_size
        if number >= self.manifest.chunks:
            return 0
        size = min(self.manifest.chunk_size, self.manifest.length - self.position)
        if len(buffer) < size or not self.read_chunk(number, memoryview(buffer).cast("B")[:size]):
            return 0
        self.position += size
        return size

    def close(self):
        for file in self.files:
            if file is not None:
                file.close()
        self.files = [None] * len(self.files)
        super().close()

"""Random access to the stream a set holds (mount-image, reassemble --range): any byte range,
read from the volumes that hold it, every chunk checked against its manifest before a byte of it
is served, and rebuilt from the parity volumes when it is missing or damaged.

Before the first read the set is checked as reassemble checks it before its first byte
(reader.check_before_reading: one set, complete or rebuildable, every volume file of its length,
each holding its own volume's data), with the same messages.
"""

import collections
import os
import threading

from . import chunks
from ..errors import DamagedData, Error
from .copies import VolumeCopies
from .finder import rereadable, scan
from .names import VolumeKey
from .reader import check_before_reading
from .volumeset import gather
from .walk import group_rebuilder
from ..stream import frames
from ..stream.seekable import DEFAULT_CACHE_SIZE, CompressedBytes

# Checked chunks kept for neighbouring reads (the frames of a compressed stream lie several to a
# chunk; small reads of a raw set): up to 8 chunks within 32 MiB, and always the last one. Two
# 16 MiB chunks: copying a file out of a mounted ext4 no longer evicts the chunk of its inode
# while reading its data (one 16 MiB read and hash fewer, bench_mount.py); mount-image's peak
# on a compressed set in 8 MiB frames was 205 MB with two, and is ~150 MB in 1 MiB frames.
CHUNK_CACHE_COUNT = 8
CHUNK_CACHE_BYTES = 32 << 20
CHUNK_CACHE_MIN = 1
# Volumes (or parity groups) kept open with their buffers; others are closed and reopened.
READERS_OPEN = 4


class _Reader:
    """An open volume (or parity group) and its read(index, number), one read at a time (its
    files are read with seek and read); close() waits for a read under way."""

    def __init__(self, read, files):
        self.read, self.files = read, files
        self.lock = threading.Lock()
        self.closed = False

    def close(self):
        with self.lock:
            self.closed = True
            for file in self.files:
                if file is not None:
                    file.close()


class SetBytes:
    """The stream of a set as random-access bytes (.length, .read(offset, size))."""

    def __init__(self, sources, say=None):
        """say(text): told once per volume read from its copies or rebuilt from parity."""
        found = scan(sources)
        self.set = gather(found)
        problem = check_before_reading(self.set, found, disc_by_disc=False)
        if problem:
            if any(rereadable(source) and not os.path.isdir(source) for source in sources):
                problem += ("; a set on discs in a drive cannot be read at random, disc by disc: "
                            "copy the discs (or their ISO images) into one directory and give that")
            raise Error(problem)
        self.say = say or (lambda text: None)
        self.length = self.set.end.total_length
        self.volume_size = self.set.reference.volume_size
        self.chunk_size = self.set.reference.chunk_size
        self._lock = threading.Lock()
        self._readers = collections.OrderedDict()   # volume index or ("group", g) -> _Reader
        self._told = set()
        self._cache = collections.OrderedDict()     # (index, number) -> bytes
        self._cached_bytes = 0

    def read(self, offset, size):
        """Bytes [offset, offset + size) of the stream (fewer at its end), every chunk checked;
        DamagedData naming the volume and bytes when a chunk can be neither read intact nor
        rebuilt."""
        pieces = []
        end = min(offset + size, self.length)
        while offset < end:
            index = offset // self.volume_size + 1
            in_volume = offset - (index - 1) * self.volume_size
            number = in_volume // self.chunk_size
            chunk = self._chunk(index, number)
            start = in_volume - number * self.chunk_size
            piece = chunk[start:start + end - offset]
            if not piece:
                raise DamagedData(f"volume {index} ends before byte {offset} of the stream")
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    def _chunk(self, index, number):
        key = (index, number)
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                reader, evicted = self._reader(index)
            for old in evicted:
                old.close()
            with reader.lock:
                if reader.closed:
                    continue    # closed by another thread meanwhile: open it again
                with self._lock:
                    # Read by the thread this one waited for (the frames decoded ahead of a
                    # sequential read want the same chunk at once): not read and checked again.
                    if key in self._cache:
                        return self._cache[key]
                data = reader.read(index, number)
            break
        with self._lock:
            self._cache[key] = data
            self._cached_bytes += len(data)
            while len(self._cache) > CHUNK_CACHE_MIN and (
                    self._cached_bytes > CHUNK_CACHE_BYTES or len(self._cache) > CHUNK_CACHE_COUNT):
                self._cached_bytes -= len(self._cache.popitem(last=False)[1])
        return data

    def _reader(self, index):
        """The _Reader of data volume `index` (of its parity group when the set has parity), and
        the readers to close to stay within READERS_OPEN; under self._lock."""
        group = self.set.scheme.group_of(index) if self.set.has_parity() else None
        slot = ("group", group) if group else index
        if slot in self._readers:
            self._readers.move_to_end(slot)
            return self._readers[slot], []
        self._readers[slot] = self._group_reader(group) if group else self._volume_reader(index)
        evicted = []
        while len(self._readers) > READERS_OPEN:
            evicted.append(self._readers.popitem(last=False)[1])
        return self._readers[slot], evicted

    def _volume_reader(self, index):
        """read(index, number) of a data volume of a set without parity: from its file, or from
        whichever of its copies holds each chunk intact."""
        volume = self.set.by_index[index]
        copies = self.set.copies_of(VolumeKey(index)) or [volume]
        file = VolumeCopies(copies).open() if len(copies) > 1 else volume.open_file()

        def read(index, number):
            size = max(0, min(self.chunk_size, volume.manifest.length - number * self.chunk_size))
            view = memoryview(bytearray(size))
            try:
                digest = chunks.read_chunk(file, number, self.chunk_size, view, piece_size=size)
                why = "does not match its manifest (damaged)"
            except (OSError, Error) as exc:
                digest, why = None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
            if digest is None or digest != volume.manifest.chunk_digest(number):
                first = (index - 1) * self.volume_size + number * self.chunk_size
                raise DamagedData(f"chunk {number} of {volume.label} {why}, and the set has no "
                                   f"parity to rebuild it: bytes {first}-{first + size - 1} of the "
                                   "stream cannot be read")
            return view.obj
        return _Reader(read, [file])

    def _group_reader(self, group):
        """read(index, number) of the data volumes of a parity group: each chunk read and checked,
        or rebuilt from the rest of the group, which is said once per volume."""
        indices = self.set.group_indices(group)
        rebuilder, _ = group_rebuilder(self.set, group, indices)

        def read(index, number):
            row = indices.index(index)
            try:
                data, rebuilt = rebuilder.chunk(row, number)
            except Error as exc:
                raise DamagedData(str(exc)) from None
            if rebuilt and index not in self._told:
                self._told.add(index)
                member = rebuilder.members[row]
                why = self.set.lost.get(VolumeKey(index)) or (
                    f"{member.name} is missing" if member.file is None else f"{member.name} is damaged")
                self.say(f"{why}; rebuilding what is read of it from the parity of group {group}")
            return bytes(data)
        return _Reader(read, [member.file for member in rebuilder.members])


def open_set(sources, cache_size=DEFAULT_CACHE_SIZE, say=None):
    """The raw stream a set holds as random-access bytes: decoded through its seek table when
    the set holds a compressed stream, as stored when it holds a raw one. Returns (bytes, the
    set's name)."""
    stored = SetBytes(sources, say)
    name = stored.set.reference.set_name
    head = stored.read(0, 4)
    if head and head in (frames.stream_header()[:4], frames.ZSTD_MAGIC.to_bytes(4, "little")):
        return CompressedBytes(stored, f"the stream of set '{name}'", cache_size), name
    return stored, name

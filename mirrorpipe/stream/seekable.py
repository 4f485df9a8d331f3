"""Random access to the raw bytes of a compressed stream (mount-image, reassemble --range).

compress writes independent zstd frames and a seek table in zstd's seekable format, so the frame
holding any raw offset is found by a binary search over the table, and only that frame is read
and decoded. zstd checks each frame against its content checksum while decoding: nothing is
served that did not match. Decoded frames are kept in a cache bounded in bytes (neighbouring
reads, a file system's metadata read again and again); frames being decoded by one thread are
waited for by others that want them, and different frames are decoded at the same time
(zstandard releases the GIL while it decodes).
"""

import array
import bisect
import collections
import concurrent.futures
import os
import threading

import zstandard

from . import frames
from .streams import BLOCK_SIZE, write_all
from ..errors import DamagedData, Error

# 32 frames of compress's default 1 MiB. mount-image's peak over a whole read of a 2 GiB set in
# 8 MiB frames was 216 MB with 64 MiB of cache, 146 MB with 32 MiB (bench/bench_mount.py's
# 200 MB limit).
DEFAULT_CACHE_SIZE = 32 << 20
# Decoded ahead of reads that go on in order, and by how many threads.
READ_AHEAD = 8 << 20
READ_AHEAD_THREADS = 2


class FileBytes:
    """A file as random-access bytes (.length, .read(offset, size)); pread is thread-safe."""

    def __init__(self, path):
        self.name = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise Error(f"cannot open {path}: {exc.strerror}") from None
        self.length = os.fstat(self.fd).st_size

    def read(self, offset, size):
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise DamagedData(f"{self.name}: read error at byte {offset}: {exc.strerror}") from None

    def close(self):
        os.close(self.fd)


class CompressedBytes:
    """The raw bytes a seekable compressed stream holds, at random (.length, .read(offset,
    size)); compressed is random-access bytes of the stream (FileBytes, sets.SetBytes)."""

    def __init__(self, compressed, name, cache_size=DEFAULT_CACHE_SIZE):
        self.compressed = compressed
        self.name = name
        self.cache_size = cache_size
        compressed_sizes, raw_sizes = frames.read_seek_table(compressed.read, compressed.length, name)
        # Each frame that holds raw bytes (the header frame and skippable frames hold none): where
        # it starts in the compressed stream, its compressed size and where it starts in the raw
        # bytes. Arrays of 8 bytes a field: 24 MB for a 1 TiB disk in 1 MiB frames, where a list
        # of tuples took over 150.
        self.compressed_starts, self.compressed_sizes, self.raw_starts = (array.array("Q") for _ in range(3))
        compressed_at = raw_at = 0
        for compressed_size, raw_size in zip(compressed_sizes, raw_sizes):
            if raw_size:
                self.compressed_starts.append(compressed_at)
                self.compressed_sizes.append(compressed_size)
                self.raw_starts.append(raw_at)
            compressed_at += compressed_size
            raw_at += raw_size
        self.length = raw_at
        self._lock = threading.Lock()
        self._cache = collections.OrderedDict()   # frame number -> bytes
        self._cached_bytes = 0
        self._decoding = {}                       # frame number -> threading.Event
        self._local = threading.local()
        self._last_frame = None                   # the frame the latest read ended in
        self._ahead_queued = set()                # frames handed to the read-ahead threads
        # While reads go on in order, the frames after them are decoded ahead, on a thread per
        # core, READ_AHEAD bytes (bench/bench_mount.py).
        self._ahead = concurrent.futures.ThreadPoolExecutor(
            min(READ_AHEAD_THREADS, os.cpu_count() or 1), thread_name_prefix="read-ahead")

    @property
    def frame_count(self):
        return len(self.raw_starts)

    def frame(self, number):
        """(compressed offset, compressed size, raw offset, raw size) of frame `number`."""
        raw_end = self.raw_starts[number + 1] if number + 1 < len(self.raw_starts) else self.length
        return (self.compressed_starts[number], self.compressed_sizes[number],
                self.raw_starts[number], raw_end - self.raw_starts[number])

    def read(self, offset, size):
        """Bytes [offset, offset + size) of the raw stream (fewer at its end); DamagedData when a
        frame they need is damaged or cannot be read."""
        end = min(offset + size, self.length)
        pieces = []
        number = None
        while offset < end:
            number = bisect.bisect_right(self.raw_starts, offset) - 1
            self._read_ahead(number)
            data = self._frame(number)
            start = offset - self.raw_starts[number]
            piece = data[start:start + end - offset]
            pieces.append(piece)
            offset += len(piece)
        self._last_frame = number
        return b"".join(pieces)

    def _read_ahead(self, number):
        """When reads go on in order (this frame is the last read's, or the one after it),
        decode the frames after it, up to READ_AHEAD bytes (at least one frame, at most a
        quarter of the cache), on the read-ahead threads; random reads start nothing."""
        if self._last_frame not in (number, number - 1):
            return
        budget = min(READ_AHEAD, self.cache_size // 4)
        following, ahead = number + 1, 0
        while following < self.frame_count and (ahead == 0 or ahead < budget):
            with self._lock:
                wanted = not (following in self._cache or following in self._decoding
                              or following in self._ahead_queued)
                if wanted:
                    self._ahead_queued.add(following)
            if wanted:
                self._ahead.submit(self._decode_quietly, following)
            ahead += self.frame(following)[3]
            following += 1

    def _decode_quietly(self, number):
        try:
            self._frame(number)
        except DamagedData:
            pass    # the read that needs the frame meets the damage and names it
        finally:
            with self._lock:
                self._ahead_queued.discard(number)

    def _frame(self, number):
        while True:
            with self._lock:
                if number in self._cache:
                    self._cache.move_to_end(number)
                    return self._cache[number]
                waiting = self._decoding.get(number)
                if waiting is None:
                    self._decoding[number] = threading.Event()
                    break
            waiting.wait()     # another thread decodes it; then it is in the cache (or failed)
        try:
            data = self._decode(number)
        finally:
            with self._lock:
                self._decoding.pop(number).set()
        with self._lock:
            self._cache[number] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > self.cache_size and len(self._cache) > 1:
                self._cached_bytes -= len(self._cache.popitem(last=False)[1])
        return data

    def _decode(self, number):
        compressed_at, compressed_size, raw_at, raw_size = self.frame(number)
        where = (f"frame {number + 1} of {self.name} (compressed bytes {compressed_at}-"
                 f"{compressed_at + compressed_size - 1}, holding bytes {raw_at}-{raw_at + raw_size - 1})")
        try:
            compressed = self.compressed.read(compressed_at, compressed_size)
        except DamagedData as exc:
            raise DamagedData(f"{where} cannot be read: {exc}", exc.damage) from None
        if len(compressed) != compressed_size:
            raise DamagedData(f"{where} is cut short")
        if not hasattr(self._local, "decompressor"):
            self._local.decompressor = zstandard.ZstdDecompressor()
        try:
            data = self._local.decompressor.decompress(compressed, max_output_size=raw_size)
        except zstandard.ZstdError as exc:
            raise DamagedData(f"{where} is damaged: {exc}") from None
        if len(data) != raw_size:
            raise DamagedData(f"{where} decodes to {len(data)} bytes, not the {raw_size} its seek "
                              "table gives: damaged")
        return data


def copy_range(image, offset, length, out_fd, progress=None):
    """Write bytes [offset, offset + length) of random-access bytes to out_fd, a BLOCK_SIZE at a
    time; Error when the range runs past the end. The first damaged piece stops it (DamagedData)
    after the pieces before it."""
    if offset + length > image.length:
        raise Error(f"the range {offset}:{length} runs past the end ({image.length} bytes)")
    end = offset + length
    while offset < end:
        piece = image.read(offset, min(BLOCK_SIZE, end - offset))
        write_all(out_fd, piece)
        offset += len(piece)
        if progress:
            progress.advance(len(piece))

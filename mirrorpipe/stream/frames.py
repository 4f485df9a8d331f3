"""The compressed stream: independent zstd frames followed by a seek table.

compress_stream() cuts raw input into frames of at most frame_size bytes. Each frame is a complete
zstd frame with its content size and content checksum, so any zstd decoder reads the stream and
every frame can be compressed, decompressed and checked on its own. Runs of all-zero input become
zero frames that are compressed once and reused. After the last frame comes a skippable frame
with a seek table in zstd's seekable format (contrib/seekable_format): for every frame its
compressed size, decompressed size and the low 32 bits of its XXH64 checksum, then a footer with
the frame count, a descriptor byte (bit 7: checksums present) and the magic 0x8F92EAB1.
Stock `zstd -d` decodes the frames and skips the table.

The stream opens with a small skippable frame naming it a mirrorpipe stream; the seek table lists
it as a first entry with no content, so frame offsets still add up from the start of the stream
as seekable-format readers expect. decompress_stream() then requires the seek table at the end
and checks it against the frames it read, so a stream that lost its end between two frames is an
error, not a short image.

decompress_stream() reads any zstd stream. It walks frame and block headers itself, so it knows
every frame's compressed offset for error messages, hands frames of bounded size to a thread pool
and decodes larger or unsized frames (single-frame output of stock zstd) block by block, so memory
stays bounded whatever the input.
"""

import array
import os
import queue
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from ..errors import Error
from .streams import BLOCK_SIZE, is_zero, read_full, write_all

DEFAULT_LEVEL = 3
MAX_LEVEL = 19
# 1 MiB: a random read (mount-image) decodes a whole frame to check its checksum, 1.4 ms against
# 12 ms for 8 MiB on the 2 GiB sample, for 2.2% more output (493.2 against 482.5 MB) and a
# quarter of compress's memory (29 against 84 MB); compress -d 5% slower (doc/design.md).
DEFAULT_FRAME_SIZE = 1 << 20
MIN_FRAME_SIZE = 64 << 10
MAX_FRAME_SIZE = 1 << 30

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC_MIN = 0x184D2A50
SKIPPABLE_MAGIC_MAX = 0x184D2A5F
SEEK_TABLE_MAGIC = 0x184D2A5E
# A compress stream opens with this skippable frame, so that a decoder knows a seek table must
# close it: a stream cut between two frames is otherwise a valid zstd stream, silently short.
STREAM_HEADER_MAGIC = 0x184D2A5B
STREAM_HEADER_PAYLOAD = b"mirrorpipe stream 1\n"
MAX_SEEK_TABLE_SIZE = 256 << 20
# Begins what compress writes in place of the seek table when its input ended early; its first
# four bytes are neither a zstd nor a skippable frame's magic number.
INCOMPLETE_MARKER = b"\nmirrorpipe: incomplete stream: "
SEEKABLE_FOOTER_MAGIC = 0x8F92EAB1
SEEK_TABLE_CHECKSUM_FLAG = 0x80

# Largest frame content handed whole to a worker thread; bigger or unsized frames stream.
POOL_FRAME_LIMIT = 64 << 20
MAX_BLOCK_SIZE = 128 << 10
# Windows up to 128 MiB (`zstd --long=27`), stock zstd's own default limit: memory stays bounded
# whatever a stream's header asks for.
MAX_WINDOW_SIZE = 1 << 27


def default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


class _OrderedWriter:
    """Results of parallel jobs written in submission order by one writer thread.

    At most `depth` results wait at a time, which bounds memory. A failure in a job or in the
    writer stops the writer; the producer sees it on its next submit() or at close().
    """

    def __init__(self, workers, depth, sink):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="zstd")
        self.queue = queue.Queue(depth)
        self.sink = sink
        self.failure = None
        self.thread = threading.Thread(target=self._write, name="writer", daemon=True)
        self.thread.start()

    def submit(self, fn, *args):
        self._put(self.pool.submit(fn, *args))

    def put_result(self, value):
        future = Future()
        future.set_result(value)
        self._put(future)

    def _put(self, future):
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                self.queue.put(future, timeout=0.2)
                return
            except queue.Full:
                continue

    def _write(self):
        while True:
            future = self.queue.get()
            if future is None:
                return
            try:
                self.sink(future.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                self.failure = exc
                return

    def close(self):
        """Wait until everything submitted is written (or the first failure); raise that failure."""
        if self.failure is None:
            self._put_end()
        self.thread.join()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.failure is not None:
            raise self.failure

    def _put_end(self):
        while self.failure is None:
            try:
                self.queue.put(None, timeout=0.2)
                return
            except queue.Full:
                continue


# ---------------------------------------------------------------------------------------------
# Compression

class CompressStats:
    def __init__(self):
        self.raw_bytes = 0
        self.compressed_bytes = 0
        self.frames = 0


def compress_stream(src_fd, dst_fd, level=DEFAULT_LEVEL, threads=None, frame_size=DEFAULT_FRAME_SIZE,
                    progress=None, confirm_end=None):
    """Compress everything readable from src_fd to dst_fd in the independent-frame format.

    confirm_end(bytes read) is called at end of input, before the seek table; it raises
    errors.Error when the input did not really end (the command feeding it died). Then, and on any
    other error reading the input, the stream gets the incomplete marker instead of its seek table."""
    if not 1 <= level <= MAX_LEVEL:
        raise Error(f"compression level {level} is out of range 1-{MAX_LEVEL}")
    if not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE:
        raise Error(f"frame size {frame_size} is out of range {MIN_FRAME_SIZE}-{MAX_FRAME_SIZE} bytes")
    threads = threads or default_threads()
    stats = CompressStats()
    # The seek table's entries as they will be written, 12 bytes a frame: a list of tuples took
    # ~150 bytes a frame, 150 MB for a 1 TiB disk in 1 MiB frames.
    seek_entries = bytearray()
    local = threading.local()

    def compressor():
        if not hasattr(local, "cctx"):
            local.cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        return local.cctx

    # Buffers cycle between the reader and the workers; their number bounds the memory in flight:
    # one per worker, one being filled, one spare so the reader never waits on a slow writer.
    depth = threads + 1
    free_buffers = queue.Queue()
    for _ in range(threads + 2):
        free_buffers.put(bytearray(frame_size))

    def compress_job(buf, length):
        try:
            return compressor().compress(memoryview(buf)[:length]), length
        finally:
            free_buffers.put(buf)

    zero_frames = {}

    def zero_frame(length):
        if length not in zero_frames:
            zero_frames[length] = compressor().compress(bytes(length))
        return zero_frames[length], length

    def sink(item):
        frame, raw_length = item
        write_all(dst_fd, frame)
        seek_entries.extend(_SEEK_ENTRY.pack(len(frame), raw_length, frame[-4:]))
        stats.frames += 1
        stats.compressed_bytes += len(frame)
        if progress:
            progress.advance_output(len(frame))

    header = stream_header()
    write_all(dst_fd, header)
    seek_entries.extend(_SEEK_ENTRY.pack(len(header), 0, bytes(4)))
    writer = _OrderedWriter(threads, depth, sink)
    try:
        buf = free_buffers.get()
        view = memoryview(buf)
        filled = 0      # data bytes gathered in buf for the next frame
        zero_run = 0    # all-zero bytes seen since the last data byte
        while True:
            want = min(BLOCK_SIZE, frame_size - filled)
            got = read_full(src_fd, view[filled:filled + want])
            if got == 0:
                break
            stats.raw_bytes += got
            if progress:
                progress.advance(got)
            if is_zero(buf, filled, got):
                if filled:
                    writer.submit(compress_job, buf, filled)
                    buf = free_buffers.get()
                    view = memoryview(buf)
                    filled = 0
                zero_run += got
                if zero_run >= frame_size:
                    writer.put_result(zero_frame(frame_size))
                    zero_run -= frame_size
            else:
                if zero_run:
                    writer.put_result(zero_frame(zero_run))
                    zero_run = 0
                filled += got
                if filled == frame_size:
                    writer.submit(compress_job, buf, filled)
                    buf = free_buffers.get()
                    view = memoryview(buf)
                    filled = 0
            if got < want:
                break
        if zero_run:
            writer.put_result(zero_frame(zero_run))
        if filled or stats.raw_bytes == 0:
            # Empty input still gets one (empty) frame: stock zstd rejects a stream without any.
            writer.submit(compress_job, buf, filled)
        if confirm_end:
            confirm_end(stats.raw_bytes)
    except BaseException as exc:
        writer.close()
        if isinstance(exc, (Error, OSError)):
            # What was read is compressed and written; the marker after it fails every decoder.
            write_all(dst_fd, incomplete_marker(str(exc)))
        raise
    writer.close()
    write_all(dst_fd, seek_table(seek_entries))
    return stats


def incomplete_marker(reason):
    """What ends a stream compress could not finish, in place of its seek table: a line of text
    that is no zstd frame, so stock `zstd -d` fails on it ("unsupported format") and
    `compress -d` quotes it."""
    return INCOMPLETE_MARKER + reason.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n"


def stream_header():
    return struct.pack("<II", STREAM_HEADER_MAGIC, len(STREAM_HEADER_PAYLOAD)) + STREAM_HEADER_PAYLOAD


# One seek table entry with its checksum: compressed size, decompressed size, checksum.
_SEEK_ENTRY = struct.Struct("<II4s")


def seek_table(entries):
    """The skippable frame holding the seek table whose entries (each _SEEK_ENTRY) are packed in
    `entries`."""
    count = len(entries) // _SEEK_ENTRY.size
    footer = struct.pack("<IBI", count, SEEK_TABLE_CHECKSUM_FLAG, SEEKABLE_FOOTER_MAGIC)
    return struct.pack("<II", SEEK_TABLE_MAGIC, len(entries) + len(footer)) + bytes(entries) + footer


def check_stream_end(head, tail, length):
    """The in-band end check of a stream passing through without being decoded (split-span): when
    it opens with compress's header it must end with a seek table that describes it. Raise Error
    otherwise. head: its first bytes; tail: at least its last MiB (or all of it); length: its
    size. A table larger than the tail (over 87,000 frames, 85 GiB in 1 MiB frames) is checked by
    its footer alone."""
    header = stream_header()
    if not head.startswith(header):
        return
    marker = tail.rfind(INCOMPLETE_MARKER)
    if marker >= 0 and tail.endswith(b"\n") and b"\n" not in tail[marker + len(INCOMPLETE_MARKER):-1]:
        reason = tail[marker + len(INCOMPLETE_MARKER):-1].decode("utf-8", "replace")
        raise Error(f"the compressed stream ends with compress's mark of an incomplete stream: {reason}")
    missing = Error("the compressed stream ends without the seek table that closes every compress "
                    "stream: compress was killed, or its output was cut short on the way")
    if len(tail) < 17 or struct.unpack("<I", tail[-4:])[0] != SEEKABLE_FOOTER_MAGIC:
        raise missing
    count, descriptor, _ = struct.unpack("<IBI", tail[-9:])
    table_size = 8 + 9 + count * (12 if descriptor & SEEK_TABLE_CHECKSUM_FLAG else 8)
    if table_size > min(length, 8 + MAX_SEEK_TABLE_SIZE):
        raise missing
    if table_size > len(tail):
        return
    table = tail[-table_size:]
    entries = _seek_table_entries_of(table[8:])
    sizes = [entry[0] for entry in entries or ()]
    if struct.unpack("<II", table[:8]) != (SEEK_TABLE_MAGIC, table_size - 8) or not sizes \
            or sizes[0] != len(header) or sum(sizes) + table_size > length:
        raise missing


def read_seek_table(read_at, length, name):
    """(compressed sizes, decompressed sizes): two arrays, one entry for every frame of a stream
    in zstd's seekable format (compress's output, or another tool's) of `length` bytes, read
    through read_at(offset, size) from its end: the seek table, checked against the stream's
    length. Error naming `name` and what to do when there is none (stock zstd's output, an
    incomplete stream) or it is damaged."""
    head = read_at(0, len(stream_header()))
    tail = read_at(max(0, length - (1 << 20)), min(length, 1 << 20))
    seekable_copy = f"make a seekable copy: compress -d < {name} | compress > COPY.zst"
    if head == stream_header():
        try:
            check_stream_end(head, tail, length)
        except Error as exc:
            raise Error(f"{name}: {exc}") from None
    elif len(tail) < 17 or struct.unpack("<I", tail[-4:])[0] != SEEKABLE_FOOTER_MAGIC:
        what = "a zstd stream" if head[:4] == struct.pack("<I", ZSTD_MAGIC) else "not a zstd stream"
        raise Error(f"{name} is {what} without a seek table (stock zstd writes none), so it cannot "
                    f"be read at random; {seekable_copy}")
    count, descriptor, _ = struct.unpack("<IBI", tail[-9:])
    table_size = 8 + 9 + count * (12 if descriptor & SEEK_TABLE_CHECKSUM_FLAG else 8)
    if table_size > min(length, 8 + MAX_SEEK_TABLE_SIZE):
        raise Error(f"{name}: its seek table is damaged (it gives {count} frames); {seekable_copy}")
    table = tail[-table_size:] if table_size <= len(tail) else read_at(length - table_size, table_size)
    entries = _seek_table_entries_of(table[8:])
    compressed, decompressed = array.array("Q"), array.array("Q")
    for entry in entries or ():
        compressed.append(entry[0])
        decompressed.append(entry[1])
    if entries is None or struct.unpack("<II", table[:8]) != (SEEK_TABLE_MAGIC, table_size - 8) \
            or sum(compressed) + table_size != length:
        raise Error(f"{name}: its seek table is damaged or does not describe it; {seekable_copy}")
    return compressed, decompressed


# ---------------------------------------------------------------------------------------------
# Decompression

class _Input:
    """Buffered reading of the compressed stream that always knows its stream offset.

    buf[pos:end] holds unconsumed input; reads go straight into the free tail of buf, which is
    compacted or grown only when a frame needs more room than is left.
    """

    def __init__(self, fd, capacity=8 << 20):
        self.fd = fd
        self.buf = bytearray(capacity)
        self.pos = 0          # next unconsumed byte in buf
        self.end = 0          # end of the valid bytes in buf
        self.offset = 0       # stream offset of buf[pos]
        self.eof = False

    def available(self):
        return self.end - self.pos

    def fill(self, count):
        """Make count bytes available; False when the input ends first."""
        while self.end - self.pos < count and not self.eof:
            if self.pos + count > len(self.buf):
                held = self.end - self.pos
                self.buf[:held] = self.buf[self.pos:self.end]
                self.pos, self.end = 0, held
                if count > len(self.buf):
                    self.buf.extend(bytes(max(count, 2 * len(self.buf)) - len(self.buf)))
            with memoryview(self.buf) as view:
                got = os.readv(self.fd, [view[self.end:]])
            self.end += got
            self.eof = got == 0
        return self.end - self.pos >= count

    def peek(self, count, at=0):
        return bytes(self.buf[self.pos + at:self.pos + at + count])

    def take(self, count):
        with memoryview(self.buf) as view:
            data = bytes(view[self.pos:self.pos + count])
        self.pos += count
        self.offset += count
        return data

    def take_into(self, count, dest):
        """Consume count bytes into the start of the bytearray dest (at least count long)."""
        with memoryview(self.buf) as view:
            dest[:count] = view[self.pos:self.pos + count]
        self.pos += count
        self.offset += count

    def skip(self, count):
        """Consume count bytes without keeping them; False when the input ends first."""
        while count:
            if not self.fill(1):
                return False
            step = min(count, self.available())
            self.pos += step
            self.offset += step
            count -= step
        return True


class DecompressStats:
    def __init__(self):
        self.compressed_bytes = 0
        self.raw_bytes = 0
        self.frames = 0
        # Seek table entries found damaged although the frames they list were read whole (each
        # checked by its own checksum): one message per entry. The output is complete.
        self.seek_table_damage = []


def _frame_header_size(descriptor):
    fcs_flag = descriptor >> 6
    single_segment = (descriptor >> 5) & 1
    window = 0 if single_segment else 1
    dict_id = (0, 1, 2, 4)[descriptor & 3]
    fcs = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    return 5 + window + dict_id + fcs, fcs, window + dict_id


def _content_size(header, fcs_bytes, fcs_at):
    if fcs_bytes == 0:
        return None
    raw = header[fcs_at:fcs_at + fcs_bytes]
    value = int.from_bytes(raw, "little")
    return value + 256 if fcs_bytes == 2 else value


def decompress_stream(src_fd, dst_fd, threads=None, progress=None):
    """Decode any zstd stream from src_fd to dst_fd; raise Error naming the compressed offset of
    the first corrupt, truncated or foreign byte (everything before it has been written)."""
    threads = threads or default_threads()
    stats = DecompressStats()
    local = threading.local()

    def decompressor():
        if not hasattr(local, "dctx"):
            local.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        return local.dctx

    # Frames and what they decode to live in reused buffers: a fresh 8 MiB object per frame costs
    # the kernel a page fault per 4 KiB. A frame holds its buffers from the moment it is read
    # until it is written: the queue's depth, one being queued, one being written.
    depth = threads + 1
    buffers = _BufferPool(depth + 2)
    frame_buffers = _BufferPool(depth + 2)

    def decode_job(frame_buf, frame_length, frame_offset, content_size):
        buf = buffers.acquire(content_size)
        view = memoryview(buf)[:content_size]
        try:
            with decompressor().stream_reader(memoryview(frame_buf)[:frame_length]) as reader:
                got = read_full(reader, view)
                # Reading past the content reaches the frame's end, where the checksum is checked.
                if got < content_size or reader.readinto(bytearray(1)):
                    raise zstandard.ZstdError("the decoded size differs from the frame's content size")
        except zstandard.ZstdError as exc:
            buffers.release(buf)
            raise Error(f"corrupt data in the zstd frame at compressed offset {frame_offset}: {exc}") from None
        finally:
            frame_buffers.release(frame_buf)
        return view, buf

    def sink(item):
        data, buf = item
        write_all(dst_fd, data)
        stats.raw_bytes += len(data)
        if buf is not None:
            buffers.release(buf)
        if progress:
            progress.advance(len(data))

    src = _Input(src_fd)
    stream = _StreamCheck()
    writer = _OrderedWriter(threads, depth, sink)
    try:
        while src.fill(4):
            frame_offset = src.offset
            # Looking ahead for the table at every frame costs nothing measurable (256 MiB in 4096
            # frames decode in 0.35 s either way).
            if stream.start is not None and _is_table_behind_damaged_header(src, stream.count):
                header = src.take(8)
                stream.damage.append(f"the seek table at compressed offset {frame_offset}: its header "
                                     f"is damaged (bytes {header.hex()}, expected "
                                     f"{_seek_table_header(stream.count).hex()})")
                stream = stream.close(src.take(src.available()), frame_offset)
                continue
            magic = struct.unpack("<I", src.peek(4))[0]
            if SKIPPABLE_MAGIC_MIN <= magic <= SKIPPABLE_MAGIC_MAX:
                if not src.fill(8):
                    raise _truncated(src, frame_offset, "skippable frame")
                length = struct.unpack("<I", src.peek(4, at=4))[0]
                if magic in (STREAM_HEADER_MAGIC, SEEK_TABLE_MAGIC) and length <= MAX_SEEK_TABLE_SIZE:
                    if not src.fill(8 + length):
                        raise _truncated(src, frame_offset, "skippable frame")
                    payload = src.take(8 + length)[8:]
                    stream = stream.enter(payload, frame_offset) if magic == STREAM_HEADER_MAGIC \
                        else stream.close(payload, frame_offset)
                    continue
                src.skip(8)
                if not src.skip(length):
                    raise _truncated(src, frame_offset, "skippable frame")
                continue
            if magic != ZSTD_MAGIC:
                raise _incomplete_mark(src, frame_offset) or _not_zstd(frame_offset, magic)
            stats.frames += 1
            if not src.fill(5):
                raise _truncated(src, frame_offset, "zstd frame")
            descriptor = src.peek(5)[4]
            if descriptor & 0x08:
                raise Error(f"corrupt zstd frame header at compressed offset {frame_offset} (reserved bit set)")
            header_size, fcs_bytes, fcs_at = _frame_header_size(descriptor)
            if not src.fill(header_size):
                raise _truncated(src, frame_offset, "zstd frame")
            content_size = _content_size(src.peek(header_size), fcs_bytes, 5 + fcs_at)
            has_checksum = bool(descriptor & 0x04)
            if content_size is not None and content_size <= POOL_FRAME_LIMIT:
                length = _frame_length(src, frame_offset, header_size, has_checksum)
                frame_buf = frame_buffers.acquire(length)
                src.take_into(length, frame_buf)
                checksum = bytes(frame_buf[length - 4:length]) if has_checksum else None
                writer.submit(decode_job, frame_buf, length, frame_offset, content_size)
            else:
                content_size, checksum = _stream_frame(src, frame_offset, header_size, has_checksum, writer)
            # The frame's own checksum is what its seek table entry lists (the low 32 bits of the
            # XXH64 of its content); the decoder checks it against the content.
            stream.frame_read(frame_offset, src.offset - frame_offset, content_size, checksum)
        stream.end(src.offset)
    finally:
        stats.compressed_bytes = src.offset
        stats.seek_table_damage = stream.damage
        writer.close()
    return stats


class _BufferPool:
    """At most `count` bytearrays, handed out and returned again; one too small is replaced."""

    def __init__(self, count):
        self.free = queue.Queue()
        for _ in range(count):
            self.free.put(bytearray())

    def acquire(self, size):
        buf = self.free.get()
        return buf if len(buf) >= size else bytearray(size)

    def release(self, buf):
        self.free.put(buf)


_ENTRY_FIELDS = ("compressed size", "decompressed size", "checksum")


class _StreamCheck:
    """Follows the compress streams in the input: from a stream header on, every frame read (its
    compressed size, decompressed size and checksum), until the seek table that must close the
    stream and must list those frames.

    A frame is the one its entry lists when at least two of the three fields agree: one field
    that differs is a damaged entry (a flipped bit in the table), kept in `damage` while decoding
    goes on; two or more mean another frame (one missing, repeated or out of order), an error."""

    # A frame read: offset, compressed size, decompressed size (-1: not given), checksum, whether
    # it has one. Packed, as the seek table is: 25 bytes a frame where a tuple took ~200.
    FRAME = struct.Struct("<QQq4s?")

    def __init__(self):
        self.start = None           # offset of the open stream's header; None outside a stream
        self.frames = bytearray()   # FRAME of its header and each frame read since
        self.damage = []

    @property
    def count(self):
        """How many frames (the header one of them) the open stream has had."""
        return len(self.frames) // self.FRAME.size

    def _frames_read(self):
        for offset, compressed, decompressed, checksum, has_checksum in self.FRAME.iter_unpack(self.frames):
            yield (offset, compressed, None if decompressed < 0 else decompressed,
                   checksum if has_checksum else None)

    def enter(self, payload, offset):
        if payload != STREAM_HEADER_PAYLOAD:
            return self  # another program's skippable frame with the same magic: not ours
        if self.start is not None:
            raise Error(f"the compress stream starting at compressed offset {self.start} has no seek "
                        f"table before the next stream starts at offset {offset}: its end is missing")
        self.start, self.frames = offset, bytearray()
        self.frame_read(offset, 8 + len(payload), 0, bytes(4))
        return self

    def frame_read(self, offset, compressed_size, decompressed_size, checksum):
        if self.start is not None:
            self.frames.extend(self.FRAME.pack(
                offset, compressed_size, -1 if decompressed_size is None else decompressed_size,
                checksum or bytes(4), checksum is not None))

    def close(self, payload, offset):
        if self.start is None:
            return self  # a seek table after stock zstd frames: nothing to hold it against
        entries, listed, footer_damage = _seek_table_entries(payload, self.count)
        if entries is None:
            raise Error(f"corrupt seek table at compressed offset {offset}")
        if listed != self.count:
            raise Error(f"the seek table at compressed offset {offset} lists {listed - 1} frames "
                        f"but {self.count - 1} were read since the stream began at offset "
                        f"{self.start}: part of the stream is missing or repeated")
        where = f"the seek table at compressed offset {offset}"
        if footer_damage:
            self.damage.append(f"{where}: {footer_damage}")
        for number, (entry, (frame_offset, *read)) in enumerate(zip(entries, self._frames_read())):
            differ = [(field, listed, got) for field, listed, got in zip(_ENTRY_FIELDS, entry, read)
                      if None not in (listed, got) and listed != got]
            if len(differ) == 1:
                field, listed, got = differ[0]
                if field == "checksum":
                    listed, got = listed.hex(), got.hex()
                self.damage.append(f"{where}: the entry of frame {number} (compressed offset "
                                   f"{frame_offset}) is damaged: it gives {field} {listed}, the "
                                   f"frame has {got}")
            elif differ:
                raise Error(f"frame {number} at compressed offset {frame_offset} is not the frame "
                            f"{where} lists there ({', '.join(field for field, _, _ in differ)} "
                            "differ): part of the stream is missing, repeated or out of order")
        self.start, self.frames = None, bytearray()
        return self

    def end(self, offset):
        if offset == 0:
            raise TruncatedInput("no compressed data on input (the stream is empty)")
        if self.start is not None:
            raise TruncatedInput(f"truncated input: the stream ends at compressed offset {offset} "
                                 f"after {self.count - 1} complete frames, without the seek "
                                 "table that ends every compress stream: its end is missing")


def _seek_table_header(entries):
    """The 8 bytes that open the skippable frame of a seek table of ENTRIES entries with checksums."""
    return struct.pack("<II", SEEK_TABLE_MAGIC, 9 + 12 * entries)


def _is_table_behind_damaged_header(src, frames_read):
    """Whether all that is left of the input is a seek table for the FRAMES_READ frames of the
    open stream, its footer intact but its 8-byte header (magic, length) not: a damaged table,
    not the foreign data or cut frame that header alone would make it."""
    size = 8 + 9 + 12 * frames_read
    if not src.fill(size) or src.fill(size + 1) or src.peek(8) == _seek_table_header(frames_read):
        return False
    layout = _seek_table_layout(src.peek(size - 8, at=8))
    return layout is not None and layout[0] == frames_read


def _seek_table_entries(payload, frames_read):
    """(entries, their count, footer damage or None) of a seek table's payload, the entries as
    _seek_table_entries_of gives them; (None, None, None) when it is malformed. A table of
    FRAMES_READ entries with checksums whose footer alone is damaged still gives its entries,
    the damage described."""
    layout = _seek_table_layout(payload)
    if layout is not None:
        return _seek_table_entries_of(payload), layout[0], None
    if len(payload) != 9 + 12 * frames_read:
        return None, None, None
    footer = struct.pack("<IBI", frames_read, SEEK_TABLE_CHECKSUM_FLAG, SEEKABLE_FOOTER_MAGIC)
    return (_seek_table_entries_of(payload[:-9] + footer), frames_read,
            f"its footer is damaged (bytes {payload[-9:].hex()}, expected {footer.hex()})")


def _seek_table_layout(payload):
    """(entry count, entry size) of a seek table's payload, or None when it is malformed."""
    if len(payload) < 9:
        return None
    count, descriptor, magic = struct.unpack("<IBI", payload[-9:])
    entry = 12 if descriptor & SEEK_TABLE_CHECKSUM_FLAG else 8
    # The descriptor's other bits are reserved, zero in every valid table.
    if magic != SEEKABLE_FOOTER_MAGIC or descriptor & ~SEEK_TABLE_CHECKSUM_FLAG or len(payload) != 9 + count * entry:
        return None
    return count, entry


def _seek_table_entries_of(payload):
    """The entries of a seek table's payload, one at a time (a table of a million frames is not
    made into a million tuples at once): (compressed, decompressed, checksum or None); None when
    the payload is malformed."""
    layout = _seek_table_layout(payload)
    if layout is None:
        return None
    count, entry = layout
    # A copy: an iterator left unfinished over a memoryview crashed the interpreter at exit.
    entries = bytes(payload[:count * entry])
    if entry == _SEEK_ENTRY.size:
        return _SEEK_ENTRY.iter_unpack(entries)
    return ((compressed, decompressed, None)
            for compressed, decompressed in struct.iter_unpack("<II", entries))


def _block_ends(src, frame_offset, header_size, has_checksum):
    """Walk one frame's blocks; yield the end of the header, of each block and of the checksum,
    relative to the frame start, reading more input as needed. The caller may consume what was
    yielded: positions are relative to frame_offset, not to the read position. This loop runs
    once per block of every frame, so it reads the buffer directly."""
    yield header_size
    at = header_size
    last = 0
    while not last:
        buf = src.buf
        base = src.pos - (src.offset - frame_offset)   # index of the frame start in buf
        p = base + at
        if p + 3 > src.end:
            if not src.fill(p + 3 - src.pos):
                raise _truncated(src, frame_offset, "zstd frame")
            continue
        header = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16)
        last, block_type, block_size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3 or block_size > MAX_BLOCK_SIZE:
            raise Error(f"corrupt zstd block header at compressed offset {frame_offset + at} "
                        f"in the frame at {frame_offset}")
        at += 3 + (1 if block_type == 1 else block_size)
        if not src.fill(base + at - src.pos):
            raise _truncated(src, frame_offset, "zstd frame")
        yield at
    if has_checksum:
        at += 4
        if not src.fill(at - (src.offset - frame_offset)):
            raise _truncated(src, frame_offset, "zstd frame")
        yield at


def _frame_length(src, frame_offset, header_size, has_checksum):
    """Compressed length of the frame at the read position, read into the buffer whole."""
    end = 0
    for end in _block_ends(src, frame_offset, header_size, has_checksum):
        pass
    return end


def _stream_frame(src, frame_offset, header_size, has_checksum, writer):
    """Decode one frame of unknown or large size a block at a time, in order with the pool.
    Returns (its decoded size, its checksum field or None)."""
    dobj = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE).decompressobj()
    pending = []
    pending_size = 0
    decoded = 0
    consumed = 0
    piece = b""
    for end in _block_ends(src, frame_offset, header_size, has_checksum):
        piece = src.take(end - consumed)
        try:
            out = dobj.decompress(piece)
        except zstandard.ZstdError as exc:
            if "too much memory" in str(exc):
                raise Error(f"the zstd frame at compressed offset {frame_offset} needs a window larger "
                            f"than {MAX_WINDOW_SIZE >> 20} MiB (made with zstd --long=28 or more); "
                            "decode it with stock zstd -d --long=31") from None
            raise Error(f"corrupt data in the zstd frame at compressed offset {frame_offset} "
                        f"(near offset {frame_offset + consumed}): {exc}") from None
        consumed = end
        if out:
            pending.append(out)
            pending_size += len(out)
            decoded += len(out)
            if pending_size >= BLOCK_SIZE:
                writer.put_result((b"".join(pending), None))
                pending, pending_size = [], 0
    if pending:
        writer.put_result((b"".join(pending), None))
    return decoded, piece[-4:] if has_checksum else None   # the last piece is the checksum


class TruncatedInput(Error):
    """The input ended inside the stream: raised only once the input is at its end."""


def _truncated(src, frame_offset, what):
    return TruncatedInput(f"truncated input: the stream ends at compressed offset {src.offset + src.available()} "
                 f"inside the {what} that starts at offset {frame_offset}")


def _incomplete_mark(src, offset):
    """The Error for compress's mark of an incomplete stream at the read position, quoting its
    reason; None when something else is there."""
    src.fill(len(INCOMPLETE_MARKER) + 4096)
    text = src.peek(len(INCOMPLETE_MARKER) + 4096)
    if not text.startswith(INCOMPLETE_MARKER):
        return None
    reason = text[len(INCOMPLETE_MARKER):].split(b"\n")[0].decode("utf-8", "replace")
    return Error(f"the stream was marked incomplete by the compress that made it, at compressed "
                 f"offset {offset} (what came before was decoded): {reason}")


def _not_zstd(offset, magic):
    found = struct.pack("<I", magic).hex(" ")
    if 0xFD2FB522 <= magic <= 0xFD2FB527:
        return Error(f"legacy zstd format (before v0.8) at compressed offset {offset} is not supported")
    if offset == 0:
        return Error(f"input is not zstd data (it starts with bytes {found})")
    return Error(f"corrupt or foreign data at compressed offset {offset}: expected a zstd frame, "
                 f"found bytes {found}")

"""stream/seekable.py in-process: a compressed stream's raw bytes at random through its seek
table (CompressedBytes over FileBytes), the frame cache's byte budget, one decode per frame
however many threads want it, damaged frames named while the others read, the streams that have
no usable seek table refused (frames.read_seek_table), copy_range; and a third-party seekable
reader (indexed_zstd) reading compress's output identically."""

import random
import subprocess
import threading
import time
import tracemalloc

import pytest

from conftest import KIB, MIB, compressible_data, flip, need_tools, random_data
from mirrorpipe.errors import DamagedData, Error
from mirrorpipe.stream import frames
from mirrorpipe.stream.seekable import CompressedBytes, FileBytes, copy_range

FRAME = 64 * KIB


def stream_data(size=6 * MIB, seed=0):
    """Compressible and random runs with zero runs of odd lengths among them: compress cuts a
    frame at a zero run and writes the run as frames of its own, so frames are not all FRAME
    long and their raw starts are not multiples of it."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.randrange(3)
        length = rng.randint(1, 3 * FRAME)
        if kind == 0:
            # compress sees zeros a read at a time: a run of whole 4 KiB blocks is cut out.
            out += bytes(rng.randint(1, 3 * FRAME // 4096) * 4096)
        elif kind == 1:
            out += compressible_data(length, rng.randrange(1 << 30))
        else:
            out += random_data(length, rng.randrange(1 << 30))
    return bytes(out[:size])


def compressed_file(path, data, frame_size=FRAME):
    """data compressed in-process by compress's engine into path; path."""
    with open(path, "wb") as out, open(path.with_suffix(".raw"), "w+b") as raw:
        raw.write(data)
        raw.seek(0)
        frames.compress_stream(raw.fileno(), out.fileno(), threads=2, frame_size=frame_size)
    return path


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """(path of a compressed stream of many frames, its raw bytes)."""
    data = stream_data()
    return compressed_file(tmp_path_factory.mktemp("seekable") / "stream.zst", data), data


def random_ranges(rng, length, count, frame_starts=()):
    """count (offset, size) pairs, sizes 1 B to 1 MiB, half of them starting just before a frame
    boundary so that they cross it."""
    ranges = []
    for number in range(count):
        size = rng.choice((1, 2, 511, 4096, 65536, 100_000, MIB, rng.randint(1, MIB)))
        if number % 2 and frame_starts:
            offset = max(0, rng.choice(frame_starts) - rng.randint(1, 4096))
        else:
            offset = rng.randrange(length)
        ranges.append((offset, size))
    return ranges


def test_random_reads_are_the_raw_bytes(stream):
    path, data = stream
    image = CompressedBytes(FileBytes(str(path)), str(path))
    assert image.length == len(data)
    assert image.frame_count > 90
    rng = random.Random(1)
    for offset, size in random_ranges(rng, len(data), 1000, image.raw_starts):
        assert image.read(offset, size) == data[offset:offset + size], (offset, size)
    # The end: fewer bytes, then none.
    assert image.read(len(data) - 10, 100) == data[-10:]
    assert image.read(len(data), 100) == b""


def test_an_empty_stream_reads_as_no_bytes(tmp_path):
    path = compressed_file(tmp_path / "empty.zst", b"")
    image = CompressedBytes(FileBytes(str(path)), str(path))
    assert image.length == 0
    assert image.read(0, 4096) == b""


class CountingBytes:
    """A FileBytes whose reads are counted per offset, each taking `delay` seconds (a slow
    disc), so that threads asking for one frame meet while it is read."""

    def __init__(self, path, delay=0.0):
        self.file = FileBytes(str(path))
        self.length = self.file.length
        self.delay = delay
        self.reads = {}
        self._lock = threading.Lock()

    def read(self, offset, size):
        with self._lock:
            self.reads[offset] = self.reads.get(offset, 0) + 1
        if self.delay:
            threading.Event().wait(self.delay)
        return self.file.read(offset, size)


def read_ahead_done(image):
    """Wait until the read-ahead threads have decoded every frame handed to them."""
    deadline = time.monotonic() + 10
    while image._ahead_queued:
        assert time.monotonic() < deadline, "the read-ahead threads did not finish"
        time.sleep(0.001)


def test_the_cache_stays_within_its_byte_budget(stream):
    path, data = stream
    budget = 5 * FRAME // 2       # room for two whole frames, not three
    image = CompressedBytes(FileBytes(str(path)), str(path), cache_size=budget)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(0, len(data), 4096):
            assert image.read(offset, 16) == data[offset:offset + 16]
        read_ahead_done(image)    # the frames read ahead are in the cache too
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # What the image keeps after reading every frame: the cache and small bookkeeping.
    assert held < budget + 64 * KIB, held


def test_the_cache_serves_neighbouring_reads_without_reading_again(stream):
    path, data = stream
    source = CountingBytes(path)
    image = CompressedBytes(source, str(path), cache_size=4 * FRAME)
    start = image.raw_starts[10]
    for offset in range(start, start + FRAME, 512):
        assert image.read(offset, 512) == data[offset:offset + 512]
    assert source.reads[image.frame(10)[0]] == 1


def test_reads_in_order_decode_the_next_frame_ahead_and_random_reads_do_not(stream):
    path, data = stream
    source = CountingBytes(path)
    image = CompressedBytes(source, str(path), cache_size=4 * FRAME)
    start = image.raw_starts[10]
    for offset in range(start, start + 4096, 512):        # in order, within frame 10
        assert image.read(offset, 512) == data[offset:offset + 512]
    read_ahead_done(image)
    assert source.reads.get(image.frame(11)[0]) == 1      # frame 11 decoded ahead
    assert image.read(image.raw_starts[11], 100) == data[image.raw_starts[11]:image.raw_starts[11] + 100]
    assert source.reads[image.frame(11)[0]] == 1          # ... and served from the cache

    source = CountingBytes(path)
    image = CompressedBytes(source, str(path), cache_size=4 * FRAME)
    for number in (3, 20, 7, 15):                           # random: no frame read ahead
        offset = image.raw_starts[number]
        assert image.read(offset, 100) == data[offset:offset + 100]
    read_ahead_done(image)
    assert all(image.frame(n + 1)[0] not in source.reads for n in (3, 20, 7, 15)), source.reads


def test_reads_in_order_decode_a_quarter_of_the_cache_ahead(stream):
    path, data = stream
    source = CountingBytes(path)
    image = CompressedBytes(source, str(path), cache_size=32 * FRAME)
    start = image.raw_starts[10]
    for offset in range(start, start + 4096, 512):
        assert image.read(offset, 512) == data[offset:offset + 512]
    read_ahead_done(image)
    ahead = [number for number in range(11, 30) if image.frame(number)[0] in source.reads]
    # Frames are FRAME bytes but where compress cut a zero run: 8 * FRAME is at least 8 frames.
    raw = sum(image.frame(number)[3] for number in ahead)
    assert ahead == list(range(11, 11 + len(ahead))) and len(ahead) >= 8, ahead
    assert raw - image.frame(ahead[-1])[3] < 8 * FRAME <= raw, (ahead, raw)
    assert all(count == 1 for count in source.reads.values()), source.reads


def test_a_frame_is_decoded_once_when_eight_threads_want_it_at_once(stream):
    path, data = stream
    source = CountingBytes(path, delay=0.2)
    image = CompressedBytes(source, str(path))
    source.reads.clear()
    number = image.frame_count // 2
    compressed_at, _, raw_at, raw_size = image.frame(number)
    start = threading.Barrier(8)
    results = [None] * 8

    def reader(slot):
        start.wait()
        offset = raw_at + slot * (raw_size // 8)
        results[slot] = image.read(offset, 100) == data[offset:offset + 100]

    threads = [threading.Thread(target=reader, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8
    assert source.reads == {compressed_at: 1}


def test_different_frames_are_read_and_decoded_at_the_same_time(stream):
    """Four threads each wanting a different frame of a slow source (a disc) wait about one
    read's time, not four."""
    path, _ = stream
    source = CountingBytes(path, delay=0.5)
    image = CompressedBytes(source, str(path))
    starts = [image.frame(number)[2] for number in (3, 30, 60, 90)]
    threads = [threading.Thread(target=image.read, args=(offset, 10)) for offset in starts]
    began_at = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - began_at < 1.5


def test_a_damaged_frame_is_named_and_the_others_read(tmp_path, stream):
    path, data = stream
    damaged = tmp_path / "damaged.zst"
    damaged.write_bytes(path.read_bytes())
    image = CompressedBytes(FileBytes(str(damaged)), str(damaged))
    number = 40
    compressed_at, compressed_size, raw_at, raw_size = image.frame(number)
    flip(damaged, compressed_at + compressed_size // 2)
    with pytest.raises(DamagedData) as caught:
        image.read(raw_at + 5, 10)
    message = str(caught.value)
    assert f"frame {number + 1} of {damaged}" in message
    assert f"holding bytes {raw_at}-{raw_at + raw_size - 1}" in message
    # A range that only touches it fails too; it is never cached as good.
    with pytest.raises(DamagedData):
        image.read(raw_at - 10, 20)
    before, after = image.frame(number - 1), image.frame(number + 1)
    assert image.read(before[2], before[3]) == data[before[2]:before[2] + before[3]]
    assert image.read(after[2], after[3]) == data[after[2]:after[2] + after[3]]
    assert image.read(0, raw_at) == data[:raw_at]


def refusal(path):
    with pytest.raises(Error) as caught:
        CompressedBytes(FileBytes(str(path)), str(path))
    return str(caught.value)


def test_stock_zstd_output_is_refused_saying_how_to_make_a_seekable_copy(tmp_path):
    need_tools("zstd")
    raw = tmp_path / "data"
    raw.write_bytes(compressible_data(MIB))
    stock = tmp_path / "stock.zst"
    subprocess.run(["zstd", "-q", "-o", str(stock), str(raw)], check=True)
    message = refusal(stock)
    assert f"{stock} is a zstd stream without a seek table" in message
    assert f"compress -d < {stock} | compress > " in message
    assert "not a zstd stream without a seek table" in refusal(raw)


def test_an_incomplete_compress_stream_is_refused_quoting_its_mark(tmp_path):
    raw = tmp_path / "data"
    raw.write_bytes(compressible_data(MIB))

    def upstream_died(count):
        raise Error("read-disk ended early")

    path = tmp_path / "incomplete.zst"
    with open(raw, "rb") as source, open(path, "wb") as out, pytest.raises(Error):
        frames.compress_stream(source.fileno(), out.fileno(), frame_size=FRAME, confirm_end=upstream_died)
    message = refusal(path)
    assert "mark of an incomplete stream: read-disk ended early" in message
    assert str(path) in message


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_stream_is_refused(tmp_path, stream, keep):
    path, _ = stream
    cut = tmp_path / "cut.zst"
    whole = path.read_bytes()
    cut.write_bytes(whole[:int(len(whole) * keep)])
    message = refusal(cut)
    assert str(cut) in message
    assert "without the seek table" in message


def test_copy_range_writes_the_bytes_and_refuses_a_range_past_the_end(tmp_path, stream):
    path, data = stream
    image = CompressedBytes(FileBytes(str(path)), str(path))
    out = tmp_path / "out"
    offset, length = image.raw_starts[7] - 3, 3 * MIB + 5     # across many frames, over BLOCK_SIZE
    with open(out, "wb") as f:
        copy_range(image, offset, length, f.fileno())
    assert out.read_bytes() == data[offset:offset + length]
    with open(out, "wb") as f, pytest.raises(Error) as caught:
        copy_range(image, len(data) - 10, 11, f.fileno())
    assert f"runs past the end ({len(data)} bytes)" in str(caught.value)
    assert out.read_bytes() == b""


def test_indexed_zstd_reads_compress_output_identically(stream):
    """The open-format promise checked against someone else's seekable reader."""
    import indexed_zstd     # the test extra: missing, this fails rather than skips
    path, data = stream
    rng = random.Random(5)
    with indexed_zstd.IndexedZstdFile(str(path)) as reader:
        for _ in range(200):
            offset = rng.randrange(len(data))
            size = rng.choice((1, 4096, 65536, rng.randint(1, 3 * FRAME)))
            reader.seek(offset)
            assert reader.read(size) == data[offset:offset + size], (offset, size)

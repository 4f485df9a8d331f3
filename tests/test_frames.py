"""The compressed stream format: independent zstd frames, zero frames, the seek table, decoding
of any zstd stream, and errors that name the compressed offset."""

import os
import struct

import pytest
import zstandard

from conftest import MIB, assert_one_line_error, compressible_data, flipped, need_tools, sh
from mirrorpipe.stream import frames
from mirrorpipe.errors import EXIT_SEEK_TABLE_DAMAGED, Error


def run_engine(function, data, **options):
    """(output bytes, stats) of an engine function run from a file holding data to a file."""
    src = _fd_with(data)
    dst_path = f"/dev/shm/mirrorpipe-test-out-{os.getpid()}"
    dst = os.open(dst_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        stats = function(src, dst, **options)
        with open(dst_path, "rb") as f:
            return f.read(), stats
    finally:
        os.close(dst)
        os.close(src)
        os.unlink(dst_path)


def compress_bytes(data, **options):
    return run_engine(frames.compress_stream, data, **options)


def decompress_bytes(data, **options):
    return run_engine(frames.decompress_stream, data, **options)[0]


def _fd_with(data):
    path = f"/dev/shm/mirrorpipe-test-in-{os.getpid()}"
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    return fd


def parse_frames(stream):
    """[(kind, offset, length)] of the top-level frames of a zstd stream (zstd's own parser)."""
    found = []
    offset = 0
    while offset < len(stream):
        magic = struct.unpack_from("<I", stream, offset)[0]
        if frames.SKIPPABLE_MAGIC_MIN <= magic <= frames.SKIPPABLE_MAGIC_MAX:
            length = 8 + struct.unpack_from("<I", stream, offset + 4)[0]
            found.append(("skippable", offset, length))
        else:
            dobj = zstandard.ZstdDecompressor().decompressobj()
            dobj.decompress(stream[offset:])
            length = len(stream) - offset - len(dobj.unused_data)
            found.append(("zstd", offset, length))
        offset += length
    return found


@pytest.mark.parametrize("size", [0, 1, 4095, MIB - 1, MIB, MIB + 1, 3 * MIB + 17])
def test_round_trip_sizes_at_frame_boundaries(size):
    data = compressible_data(size)
    packed, stats = compress_bytes(data, frame_size=MIB)
    assert stats.raw_bytes == size
    assert decompress_bytes(packed) == data
    # libzstd alone, across frames, reads it too
    with zstandard.ZstdDecompressor().stream_reader(packed, read_across_frames=True) as reader:
        assert reader.read() == data


def test_frames_are_independent_bounded_and_carry_size_and_checksum():
    data = compressible_data(5 * MIB + 123)
    packed, stats = compress_bytes(data, frame_size=MIB)
    parts = parse_frames(packed)
    assert [kind for kind, _, _ in parts] == ["skippable"] + ["zstd"] * 6 + ["skippable"]
    offset_raw = 0
    for _, offset, length in parts[1:-1]:
        frame = packed[offset:offset + length]
        params = zstandard.get_frame_parameters(frame)
        assert params.has_checksum
        assert 0 < params.content_size <= MIB
        # each frame decodes on its own, without anything before it
        assert zstandard.ZstdDecompressor().decompress(frame) == data[offset_raw:offset_raw + params.content_size]
        offset_raw += params.content_size
    assert offset_raw == len(data)


def test_seek_table_follows_the_seekable_format():
    data = compressible_data(3 * MIB) + bytes(2 * MIB) + compressible_data(MIB // 2, seed=2)
    packed, stats = compress_bytes(data, frame_size=MIB)
    parts = parse_frames(packed)
    kind, offset, length = parts[-1]
    table = packed[offset:offset + length]
    magic, size = struct.unpack_from("<II", table)
    assert magic == frames.SEEK_TABLE_MAGIC and size == len(table) - 8
    count, descriptor, footer_magic = struct.unpack_from("<IBI", table, len(table) - 9)
    assert footer_magic == frames.SEEKABLE_FOOTER_MAGIC
    # The stream header is the first entry, with no content, so offsets add up from 0.
    assert descriptor & 0x80 and count == len(parts) - 1 == stats.frames + 1
    assert parts[0][1] == 0 and struct.unpack_from("<II", table, 8) == (parts[0][2], 0)
    raw_total = 0
    for index, (_, frame_offset, frame_length) in enumerate(parts[:-1]):
        compressed, decompressed = struct.unpack_from("<II", table, 8 + 12 * index)
        checksum = table[8 + 12 * index + 8:8 + 12 * index + 12]
        assert compressed == frame_length
        frame = packed[frame_offset:frame_offset + frame_length]
        assert checksum == (frame[-4:] if index else bytes(4))
        raw_total += decompressed
    assert raw_total == len(data)


def test_zero_runs_become_one_reused_frame():
    data = compressible_data(MIB) + bytes(6 * MIB) + compressible_data(MIB, seed=3)
    packed, _ = compress_bytes(data, frame_size=2 * MIB)
    zstd_frames = [packed[o:o + n] for kind, o, n in parse_frames(packed) if kind == "zstd"]
    zero_frames = [f for f in zstd_frames if zstandard.get_frame_parameters(f).content_size == 2 * MIB
                   and zstandard.ZstdDecompressor().decompress(f) == bytes(2 * MIB)]
    assert len(zero_frames) == 3 and len(set(zero_frames)) == 1
    assert decompress_bytes(packed) == data


def test_all_zero_input_costs_no_compression_work():
    """A zero frame is compressed once and reused: 512 MIB of zeros is mostly cheap reads."""
    packed, stats = compress_bytes(bytes(64 * MIB), frame_size=MIB, threads=1)
    assert stats.frames == 64
    assert len(set(packed[o:o + n] for kind, o, n in parse_frames(packed) if kind == "zstd")) == 1


@pytest.mark.parametrize("level", [1, 3, 19])
def test_levels(level):
    data = compressible_data(2 * MIB)
    packed, _ = compress_bytes(data, level=level, frame_size=MIB)
    assert decompress_bytes(packed) == data


def test_stock_zstd_decodes_our_stream_identically(tmp_path):
    need_tools("zstd")
    data = compressible_data(3 * MIB) + bytes(3 * MIB) + os.urandom(MIB)
    (tmp_path / "raw").write_bytes(data)
    result = sh(f"compress --frame-size 1M < {tmp_path}/raw | zstd -d -q", check=True)
    assert result.stdout == data
    result = sh("compress < /dev/null | zstd -d -q | wc -c", check=True)
    assert result.stdout.strip() == b"0"


@pytest.mark.parametrize("zstd_options", [["-T0"], ["--long=27"], ["-19"], ["--no-check"],
                                          ["-T2", "--rsyncable"]])
def test_we_decode_stock_zstd_output(tmp_path, zstd_options):
    need_tools("zstd")
    data = compressible_data(6 * MIB) + bytes(MIB)
    (tmp_path / "raw").write_bytes(data)
    opts = " ".join(zstd_options)
    # through a pipe: stock zstd then writes one frame without a content size
    assert sh(f"cat {tmp_path}/raw | zstd -q {opts} | compress -d", check=True).stdout == data
    # from a file: the frame carries its content size
    sh(f"zstd -q {opts} {tmp_path}/raw -o {tmp_path}/raw.zst", check=True)
    assert sh(f"compress -d < {tmp_path}/raw.zst", check=True).stdout == data


def test_concatenated_and_skippable_frames(tmp_path):
    need_tools("zstd")
    a, b = compressible_data(MIB), compressible_data(MIB, seed=9)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    skippable = struct.pack("<II", 0x184D2A53, 5) + b"hello"
    (tmp_path / "skip").write_bytes(skippable)
    script = (f"cat <(zstd -q -c {tmp_path}/a) {tmp_path}/skip <(compress < {tmp_path}/b) "
              f"<(zstd -q -c {tmp_path}/a) | compress -d")
    assert sh(script, check=True).stdout == a + b + a


def test_corrupt_frame_names_its_compressed_offset_and_keeps_earlier_frames(tmp_path):
    data = compressible_data(4 * MIB)
    packed, _ = compress_bytes(data, frame_size=MIB)
    _, third, length = parse_frames(packed)[3]
    src = _fd_with(flipped(packed, third + length // 2, 0xFF))
    dst = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(Error, match=f"compressed offset {third}"):
            frames.decompress_stream(src, dst)
        assert (tmp_path / "out").read_bytes() == data[:2 * MIB]
    finally:
        os.close(src)
        os.close(dst)


def test_truncated_stock_single_frame_is_an_error(tmp_path):
    need_tools("zstd")
    (tmp_path / "raw").write_bytes(compressible_data(4 * MIB))
    result = sh(f"zstd -q -c < {tmp_path}/raw | head -c 100000 | compress -d > /dev/null")
    assert result.returncode == 1
    assert_one_line_error(result, "compress", "truncated input", "offset 0")


def test_memory_is_bounded_for_a_huge_unsized_frame(tmp_path):
    """2 GiB of zeros in one stock frame compress to a few KB; decoding must not buffer it."""
    need_tools("zstd")
    result = sh("head -c 2G /dev/zero | zstd -q -1 | /usr/bin/env time -f '%M' compress -d | wc -c")
    if "time" in result.stderr_text and "not found" in result.stderr_text:
        pytest.skip("needs GNU time")
    assert result.returncode == 0, result.stderr_text
    assert result.stdout.strip() == str(2 << 30).encode()
    peak_kib = int(result.stderr_text.strip().splitlines()[-1])
    assert peak_kib < 200 * 1024


def test_a_stream_cut_between_frames_is_truncated_not_short(tmp_path):
    """Cut at a frame boundary (compress killed between two writes) stock zstd accepts the rest
    as a valid, shorter stream; compress -d knows a seek table must end it."""
    need_tools("zstd")
    packed, _ = compress_bytes(compressible_data(4 * MIB), frame_size=MIB)
    parts = parse_frames(packed)
    cut = packed[:parts[3][1]]                                   # header and two whole frames
    dropped = packed[:parts[2][1]] + packed[parts[3][1]:]         # the second frame lost
    for name, blob, message in [("cut", cut, "without the seek table"),
                                ("dropped", dropped, "part of the stream is missing")]:
        (tmp_path / name).write_bytes(blob)
        result = sh(f"compress -d < {tmp_path / name} > /dev/null")
        assert result.returncode == 1, name
        assert_one_line_error(result, "compress", message)
    assert sh(f"zstd -d -q < {tmp_path}/cut > /dev/null").returncode == 0  # what we guard against


@pytest.mark.parametrize("field, at, shown", [
    ("compressed size", 0, "compressed size"),
    ("decompressed size", 4, "decompressed size"),
    ("checksum", 9, "checksum"),
])
def test_a_damaged_seek_table_entry_names_its_frame_and_the_data_is_delivered(tmp_path, field, at, shown):
    """A flipped byte in the seek table: compress -d names the frame whose entry is damaged and
    which field, delivers every byte (each frame checked by its own checksum) and exits 3."""
    data = compressible_data(5 * MIB)
    packed, _ = compress_bytes(data, frame_size=MIB)
    parts = parse_frames(packed)
    table_offset = parts[-1][1]
    frame = 3
    frame_offset = parts[frame][1]
    (tmp_path / "damaged.zst").write_bytes(flipped(packed, table_offset + 8 + 12 * frame + at))
    result = sh(f"compress -d < {tmp_path}/damaged.zst")
    assert result.returncode == EXIT_SEEK_TABLE_DAMAGED, result.stderr_text
    assert result.stdout == data
    assert "Traceback" not in result.stderr_text
    assert (f"compress: warning: the seek table at compressed offset {table_offset}: the entry of frame "
            f"{frame} (compressed offset {frame_offset}) is damaged: it gives {shown} ") in result.stderr_text
    assert "compress: error" not in result.stderr_text
    assert decompress_bytes(packed) == data   # the undamaged stream: no warning, exit 0 below
    (tmp_path / "good.zst").write_bytes(packed)
    good = sh(f"compress -d < {tmp_path}/good.zst > /dev/null")
    assert good.returncode == 0 and good.stderr_text == ""


def test_a_restore_through_a_damaged_seek_table_is_complete_for_write_disk(tmp_path):
    """compress -d's exit 3 hands the stream on as complete: write-disk after it succeeds."""
    data = compressible_data(3 * MIB)
    packed, _ = compress_bytes(data, frame_size=MIB)
    table_offset = parse_frames(packed)[-1][1]
    (tmp_path / "damaged.zst").write_bytes(flipped(packed, table_offset + 8 + 12 * 2 + 9))
    result = sh(f"compress -d < {tmp_path}/damaged.zst | write-disk -f {tmp_path}/target.img; "
                "echo ${PIPESTATUS[@]}")
    assert result.stdout.split() == [b"3", b"0"], result.stderr_text
    assert (tmp_path / "target.img").read_bytes() == data
    assert "write-disk: error" not in result.stderr_text


def test_a_damaged_seek_table_footer_still_checks_every_entry(tmp_path):
    data = compressible_data(3 * MIB)
    packed, _ = compress_bytes(data, frame_size=MIB)
    for offset in (len(packed) - 9, len(packed) - 5, len(packed) - 1):   # count, descriptor, magic
        (tmp_path / "damaged.zst").write_bytes(flipped(packed, offset))
        result = sh(f"compress -d < {tmp_path}/damaged.zst")
        assert result.returncode == EXIT_SEEK_TABLE_DAMAGED and result.stdout == data, result.stderr_text
        assert "its footer is damaged" in result.stderr_text


def test_a_damaged_seek_table_header_is_named_and_the_data_delivered(tmp_path):
    """A flipped bit in the table's magic or length: what is left of the input is still the table
    of the frames read, so the header alone is damaged (exit 3), not the stream cut."""
    data = compressible_data(3 * MIB)
    packed, _ = compress_bytes(data, frame_size=MIB)
    table_offset = parse_frames(packed)[-1][1]
    for at, mask in ((0, 0x10), (3, 0x01), (4, 0x01), (5, 0x80), (7, 0x40)):
        (tmp_path / "damaged.zst").write_bytes(flipped(packed, table_offset + at, mask))
        result = sh(f"compress -d < {tmp_path}/damaged.zst")
        assert result.returncode == EXIT_SEEK_TABLE_DAMAGED and result.stdout == data, (at, result.stderr_text)
        assert f"the seek table at compressed offset {table_offset}: its header is damaged" in result.stderr_text
    cut = packed[:table_offset] + packed[table_offset + 8:]   # the header lost, not damaged: still whole
    (tmp_path / "cut.zst").write_bytes(cut)
    assert sh(f"compress -d < {tmp_path}/cut.zst > /dev/null").returncode == 1


def test_a_frame_that_differs_from_its_entry_in_two_fields_is_another_frame(tmp_path):
    """Two frames swapped: sizes and checksums both differ from what the table lists there; this
    is no flipped bit but a stream out of order, an error (exit 1)."""
    data = compressible_data(MIB) + compressible_data(MIB // 2, seed=7) + compressible_data(MIB, seed=8)
    packed, _ = compress_bytes(data, frame_size=MIB)
    parts = parse_frames(packed)
    one, two = (packed[offset:offset + length] for _, offset, length in parts[1:3])
    swapped = packed[:parts[1][1]] + two + one + packed[parts[3][1]:]
    (tmp_path / "swapped.zst").write_bytes(swapped)
    result = sh(f"compress -d < {tmp_path}/swapped.zst > /dev/null")
    assert result.returncode == 1
    assert_one_line_error(result, "compress", f"frame 1 at compressed offset {parts[1][1]} is not the frame",
                          "part of the stream is missing, repeated or out of order")


def test_our_streams_concatenate_like_zstd_streams(tmp_path):
    a, b = compressible_data(MIB + 5), compressible_data(2 * MIB, seed=4)
    (tmp_path / "ab").write_bytes(compress_bytes(a, frame_size=MIB)[0] + compress_bytes(b)[0])
    assert sh(f"compress -d < {tmp_path}/ab", check=True).stdout == a + b

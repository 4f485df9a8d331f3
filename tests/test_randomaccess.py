"""sets/randomaccess.py in-process (SetBytes, open_set): a set's stream read at random across
volume and chunk boundaries, raw or decoded through the seek table, lost and damaged volumes
rebuilt from parity and said once per volume, a damaged chunk of a set without parity named
while the rest reads, sets refused before the first read with reassemble's own messages, reads
from several threads at once; and the same through the command, `reassemble --range`."""

import os
import random
import shutil
import threading
import tracemalloc

import pytest

from conftest import (KIB, MIB, assert_one_line_error, command, compressible_data, flip, need_tools,
                      random_data, restore_set, sh, write_set)
from mirrorpipe.errors import DamagedData, Error
from mirrorpipe.sets import manifests
from mirrorpipe.sets.randomaccess import SetBytes, open_set
from mirrorpipe.stream import frames
from mirrorpipe.stream.seekable import CompressedBytes

VOLUME = 512 * KIB
CHUNK = 64 * KIB
FRAME = 64 * KIB


def disk_data(size=5 * MIB + 12345, seed=0):
    """A stream that compresses unevenly: compressible and random halves of 256 KiB pieces."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        maker = rng.choice((compressible_data, random_data))
        out += maker(256 * KIB, rng.randrange(1 << 30))
    return bytes(out[:size])


def compress(data, tmp_path):
    """data through compress's engine, frames of FRAME raw bytes."""
    raw, packed = tmp_path / "disk.img", tmp_path / "disk.img.zst"
    raw.write_bytes(data)
    with open(raw, "rb") as source, open(packed, "wb") as out:
        frames.compress_stream(source.fileno(), out.fileno(), threads=2, frame_size=FRAME)
    return packed.read_bytes()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """{'data': the disk's bytes, 'raw': a set of them as they are, 'compressed': a set of their
    compressed stream, 'parity': the same with 2 parity volumes per group of 4 (directories);
    'file': the compressed stream as one file, 'image': the disk's bytes as one file}."""
    top = tmp_path_factory.mktemp("randomaccess")
    data = disk_data()
    stream = compress(data, top)
    write_set(top / "raw", data, VOLUME, CHUNK)
    write_set(top / "compressed", stream, VOLUME, CHUNK)
    write_set(top / "parity", stream, VOLUME, CHUNK,
              parity=manifests.ParityScheme(count=2, group_size=4), parity_workers=1)
    return dict(data=data, stream=stream, raw=top / "raw", compressed=top / "compressed",
                parity=top / "parity", file=top / "disk.img.zst", image=top / "disk.img")


def copy_of(directory, tmp_path):
    target = tmp_path / directory.name
    shutil.copytree(directory, target)
    return target


def remove_volume(directory, name):
    for suffix in ("", manifests.SUFFIX):
        os.unlink(directory / f"{name}{suffix}")


def ranges_across(length, boundaries, count, seed=1):
    """count (offset, size): half start just before one of boundaries, the rest anywhere; sizes
    1 B to 1 MiB."""
    rng = random.Random(seed)
    result = []
    for number in range(count):
        size = rng.choice((1, 3, 4096, CHUNK, VOLUME + 1, MIB, rng.randint(1, MIB)))
        offset = (max(0, rng.choice(boundaries) - rng.randint(1, 300)) if number % 2
                  else rng.randrange(length))
        result.append((offset, size))
    return result


def assert_reads(image, data, boundaries, count=300, seed=1):
    for offset, size in ranges_across(len(data), boundaries, count, seed):
        assert image.read(offset, size) == data[offset:offset + size], (offset, size)


def test_a_raw_set_reads_at_random_across_volume_and_chunk_boundaries(sets):
    data = sets["data"]
    image, name = open_set([str(sets["raw"])])
    assert isinstance(image, SetBytes) and name == "image"
    assert image.length == len(data)
    assert_reads(image, data, list(range(0, len(data), CHUNK)))
    assert image.read(len(data) - 5, 100) == data[-5:]
    assert image.read(len(data), 100) == b""


def test_a_compressed_set_reads_as_the_raw_stream_it_holds(sets):
    data, stream = sets["data"], sets["stream"]
    image, name = open_set([str(sets["compressed"])])
    assert isinstance(image, CompressedBytes) and name == "image"
    assert image.length == len(data)
    # Frames that start in one volume and end in the next, and volume boundaries themselves.
    crossing = [raw_at for compressed_at, size, raw_at, _ in map(image.frame, range(image.frame_count))
                if compressed_at // VOLUME != (compressed_at + size - 1) // VOLUME]
    assert len(crossing) >= 3
    assert_reads(image, data, crossing + list(image.raw_starts))
    assert image.compressed.read(0, len(stream)) == stream


def test_two_lost_volumes_of_a_set_with_parity_2_are_rebuilt_and_said_once_each(sets, tmp_path):
    directory = copy_of(sets["parity"], tmp_path)
    remove_volume(directory, "image.002")
    remove_volume(directory, "image.005")
    said = []
    image, _ = open_set([str(directory)], say=said.append)
    data = sets["data"]
    assert_reads(image, data, image.raw_starts, count=200)
    assert image.read(0, len(data)) == data
    assert sorted(said) == ["volume 2 is missing; rebuilding what is read of it from the parity of group 1",
                            "volume 5 is missing; rebuilding what is read of it from the parity of group 2"]


def test_memory_does_not_grow_with_the_number_of_volumes_read(tmp_path):
    """A few checked chunks are kept for neighbouring reads, whatever the number of volumes read
    (a 1 TB disk on BD-R is 40 volumes of 16 MiB chunks: 16 MiB held per volume is 640 MiB)."""
    data = random_data(40 * 2 * CHUNK, 3)
    write_set(tmp_path / "set", data, 2 * CHUNK, CHUNK)
    image, _ = open_set([str(tmp_path / "set")])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(0, image.length, 2 * CHUNK):     # a byte of each of the 40 volumes
            assert image.read(offset, 100) == data[offset:offset + 100]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 16 * CHUNK, f"{held} bytes held after reading 40 volumes of {CHUNK}-byte chunks"


def test_a_damaged_chunk_of_a_set_with_parity_is_rebuilt_and_said(sets, tmp_path):
    directory = copy_of(sets["parity"], tmp_path)
    flip(directory / "image.003", 3 * CHUNK + 100)
    said = []
    image, _ = open_set([str(directory)], say=said.append)
    assert image.read(0, image.length) == sets["data"]
    assert len(said) == 1 and "image.003" in said[0] and "damaged" in said[0], said
    assert said[0].endswith("rebuilding what is read of it from the parity of group 1"), said


def test_a_damaged_chunk_without_parity_is_named_and_the_rest_reads(sets, tmp_path):
    directory = copy_of(sets["raw"], tmp_path)
    data = sets["data"]
    chunk = 3
    flip(directory / "image.002", chunk * CHUNK + 777)
    image, _ = open_set([str(directory)])
    first = VOLUME + chunk * CHUNK
    with pytest.raises(DamagedData) as caught:
        image.read(first + 1000, 10)
    message = str(caught.value)
    assert f"chunk {chunk} of" in message and "image.002" in message, message
    assert "does not match its manifest (damaged)" in message, message
    assert f"bytes {first}-{first + CHUNK - 1} of the stream cannot be read" in message, message
    with pytest.raises(DamagedData):
        image.read(first - 10, 11)    # its first byte alone
    # The chunks on either side, the rest of the volume and the other volumes read.
    assert image.read(first - CHUNK, CHUNK) == data[first - CHUNK:first]
    assert image.read(first + CHUNK, 2 * VOLUME) == data[first + CHUNK:first + CHUNK + 2 * VOLUME]
    assert image.read(0, first) == data[:first]


def test_a_short_volume_file_is_refused_before_the_first_read(sets, tmp_path):
    directory = copy_of(sets["raw"], tmp_path)
    os.truncate(directory / "image.003", VOLUME - 1)
    with pytest.raises(Error) as caught:
        open_set([str(directory)])
    assert "image.003" in str(caught.value)


def reassemble_message(*sources):
    """What reassemble says (in-process, its engine) before its first byte."""
    with pytest.raises(Error) as caught:
        restore_set(*sources)
    return str(caught.value)


def test_an_incomplete_set_is_refused_with_reassembles_message(sets, tmp_path):
    directory = copy_of(sets["compressed"], tmp_path)
    remove_volume(directory, "image.004")
    with pytest.raises(Error) as caught:
        open_set([str(directory)])
    assert str(caught.value) == reassemble_message(directory)
    assert "missing volume 4 of" in str(caught.value)


def test_a_parity_set_missing_more_than_parity_can_rebuild_is_refused_with_reassembles_message(sets, tmp_path):
    directory = copy_of(sets["parity"], tmp_path)
    for name in ("image.001", "image.002", "image.003"):
        remove_volume(directory, name)
    with pytest.raises(Error) as caught:
        open_set([str(directory)])
    assert str(caught.value) == reassemble_message(directory)


def test_volumes_of_two_sets_are_refused_with_reassembles_message(sets, tmp_path):
    other = tmp_path / "other"
    write_set(other, random_data(3 * VOLUME // 2, 9), VOLUME, CHUNK)
    mixed = copy_of(sets["raw"], tmp_path)
    remove_volume(mixed, "image.002")
    for name in os.listdir(other):
        if name.startswith("image.002"):
            shutil.copy(other / name, mixed / name)
    with pytest.raises(Error) as caught:
        open_set([str(mixed)])
    assert str(caught.value) == reassemble_message(mixed)
    with pytest.raises(Error) as caught:
        open_set([str(sets["raw"]), str(other)])
    assert str(caught.value) == reassemble_message(sets["raw"], other)


def test_four_threads_reading_at_once_all_get_the_right_bytes(sets, tmp_path):
    """A compressed set with a lost volume: frames decoded and chunks rebuilt on four threads."""
    directory = copy_of(sets["parity"], tmp_path)
    remove_volume(directory, "image.003")
    image, _ = open_set([str(directory)], cache_size=4 * FRAME)
    data = sets["data"]
    wrong = []

    def reader(seed):
        for offset, size in ranges_across(len(data), image.raw_starts, 150, seed):
            if image.read(offset, size) != data[offset:offset + size]:
                wrong.append((offset, size))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


# ---------------------------------------------------------------------------------------------
# reassemble --range OFFSET:LENGTH

def reassemble_range(offset, length, *sources, status=0):
    result = command("reassemble", "-q", "--range", f"{offset}:{length}", *sources)
    assert result.returncode == status, result.stderr.decode(errors="replace")
    return result


def test_range_of_a_compressed_set_across_volume_and_frame_boundaries(sets):
    data = sets["data"]
    image, _ = open_set([str(sets["compressed"])])
    crossing = [raw_at for compressed_at, size, raw_at, _ in map(image.frame, range(image.frame_count))
                if compressed_at // VOLUME != (compressed_at + size - 1) // VOLUME]
    offset = crossing[1] - 1000
    length = crossing[2] - offset + 5000     # several frames, across two volume boundaries
    result = reassemble_range(offset, length, sets["compressed"])
    assert result.stdout == data[offset:offset + length]
    assert result.stderr == b""


def test_range_of_a_raw_set_and_sizes_as_people_type_them(sets):
    data = sets["data"]
    result = reassemble_range("1M", "512K", sets["raw"])
    assert result.stdout == data[MIB:MIB + 512 * KIB]
    offset = VOLUME - 7
    assert reassemble_range(offset, 20, sets["raw"]).stdout == data[offset:offset + 20]


def test_range_of_one_compressed_file_or_raw_image_as_mount_image_takes_them(sets):
    data = sets["data"]
    offset, length = 3 * MIB - 777, MIB + 2000     # across frames of FRAME bytes
    for source in (sets["file"], sets["image"]):
        result = reassemble_range(offset, length, source)
        assert result.stdout == data[offset:offset + length], source
        assert result.stderr == b""


def test_range_of_stock_zstd_output_says_how_to_make_a_seekable_copy(sets, tmp_path):
    need_tools("zstd")
    stock = tmp_path / "stock.zst"
    sh(f"zstd -q -o {stock} {sets['image']}", check=True)
    result = reassemble_range(0, 512, stock, status=1)
    assert_one_line_error(result, "reassemble", f"{stock} is a zstd stream without a seek table",
                          f"compress -d < {stock} | compress > ")
    assert result.stdout == b""


def test_range_past_the_end_is_refused(sets):
    result = reassemble_range(len(sets["data"]) - 10, 11, sets["compressed"], status=1)
    assert_one_line_error(result, "reassemble", f"runs past the end ({len(sets['data'])} bytes)")
    assert result.stdout == b""


def test_range_over_a_damaged_chunk_fails_naming_it(sets, tmp_path):
    directory = copy_of(sets["raw"], tmp_path)
    flip(directory / "image.003", 2 * CHUNK + 5)
    first = 2 * VOLUME + 2 * CHUNK
    result = reassemble_range(first - 100, 200, directory, status=1)
    assert_one_line_error(result, "reassemble", "image.003",
                          f"bytes {first}-{first + CHUNK - 1} of the stream cannot be read")
    # Elsewhere the set reads.
    data = sets["data"]
    assert reassemble_range(first + CHUNK, 300, directory).stdout == data[first + CHUNK:first + CHUNK + 300]


def test_range_of_a_set_with_lost_volumes_is_rebuilt_and_said(sets, tmp_path):
    directory = copy_of(sets["parity"], tmp_path)
    remove_volume(directory, "image.001")
    remove_volume(directory, "image.002")
    data = sets["data"]
    result = command("reassemble", "--range", f"0:{len(data)}", directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    lines = result.stderr.decode().splitlines()
    assert sorted(line for line in lines if "rebuilding" in line) == [
        f"reassemble: warning: volume {index} is missing; rebuilding what is read of it from the "
        "parity of group 1" for index in (1, 2)], lines

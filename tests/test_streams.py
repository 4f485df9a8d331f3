"""stream/streams.py in-process: buffers filled however many reads it takes (and what came before
an error), positional reads, zero blocks spotted across block boundaries, zeros written, and a
named output that replaces a file whole or not at all (the commands' -o, --map and --info are
test_outputs.py)."""

import errno
import os
import threading

import pytest

from conftest import random_data
from mirrorpipe.errors import Error
from mirrorpipe.stream import streams

BLOCK = streams.BLOCK_SIZE


def test_read_full_fills_the_buffer_from_a_pipe_written_in_small_pieces():
    data = random_data(3 * BLOCK + 17)
    read_end, write_end = os.pipe()

    def trickle():
        with os.fdopen(write_end, "wb", buffering=0) as pipe:
            for start in range(0, len(data), 100_003):
                pipe.write(data[start:start + 100_003])

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        buf = bytearray(2 * BLOCK)
        assert streams.read_full(read_end, buf) == 2 * BLOCK and buf == data[:2 * BLOCK]
        assert streams.read_full(read_end, memoryview(buf)[:BLOCK + 1000]) == BLOCK + 17   # the end
        assert buf[:BLOCK + 17] == data[2 * BLOCK:]
        assert streams.read_full(read_end, buf) == 0
    finally:
        writer.join()
        os.close(read_end)


class FailingAfter:
    """A file object whose readinto gives `pieces`, then fails as a disk does."""

    def __init__(self, *pieces):
        self.pieces = list(pieces)

    def readinto(self, view):
        if not self.pieces:
            raise OSError(errno.EIO, "Input/output error")
        piece = self.pieces.pop(0)
        view[:len(piece)] = piece
        return len(piece)


def test_read_full_from_a_file_object_says_how_much_came_before_an_error():
    buf = bytearray(100)
    with pytest.raises(OSError) as caught:
        streams.read_full(FailingAfter(b"abc", b"defg"), buf)
    assert caught.value.errno == errno.EIO and caught.value.received == 7
    assert buf[:7] == b"abcdefg"


def test_pread_full_reads_at_an_offset_and_leaves_the_file_position(tmp_path):
    path = tmp_path / "file"
    data = random_data(BLOCK + 5000, seed=1)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 10, os.SEEK_SET)
        buf = bytearray(BLOCK)
        assert streams.pread_full(fd, buf, 4000) == BLOCK and buf == data[4000:4000 + BLOCK]
        assert streams.pread_full(fd, buf, BLOCK) == 5000 and buf[:5000] == data[BLOCK:]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
    finally:
        os.close(fd)


@pytest.mark.parametrize("nonzero_at", [None, 0, BLOCK - 1, BLOCK, 2 * BLOCK + 99])
def test_is_zero_sees_one_byte_anywhere_across_blocks(nonzero_at):
    buf = bytearray(2 * BLOCK + 100)
    if nonzero_at is not None:
        buf[nonzero_at] = 1
    assert streams.is_zero(buf) is (nonzero_at is None)
    if nonzero_at is not None:
        assert streams.is_zero(buf, nonzero_at + 1)
        assert streams.is_zero(buf, 0, nonzero_at)
        assert not streams.is_zero(buf, nonzero_at, 1)


def test_write_zeros_writes_exactly_that_many_zeros(tmp_path):
    path = tmp_path / "zeros"
    with open(path, "wb") as f:
        f.write(b"x")
        f.flush()
        streams.write_zeros(f.fileno(), 2 * BLOCK + 3)
    assert path.read_bytes() == b"x" + bytes(2 * BLOCK + 3)


def test_a_named_file_is_replaced_whole_on_commit_and_kept_on_abandon(tmp_path):
    path = tmp_path / "out.map"
    path.write_bytes(b"old\n")
    os.chmod(path, 0o640)
    output = streams.NamedOutput(str(path), binary=False)
    output.write(b"new, ")
    assert path.read_bytes() == b"old\n" and (tmp_path / "out.map.part").exists()
    output.write(b"whole\n")
    output.commit()
    output.abandon()        # after commit: nothing
    assert path.read_bytes() == b"new, whole\n" and not (tmp_path / "out.map.part").exists()
    assert os.stat(path).st_mode & 0o777 == 0o640
    output = streams.NamedOutput(str(path), binary=False)
    output.write(b"half")
    output.abandon()
    assert path.read_bytes() == b"new, whole\n" and os.listdir(tmp_path) == ["out.map"]


def test_a_link_is_followed_and_kept_a_fifo_is_written_in_place_a_directory_is_refused(tmp_path):
    (tmp_path / "target").write_bytes(b"old")
    (tmp_path / "link").symlink_to("target")
    streams.write_named_output(str(tmp_path / "link"), b"through the link")
    assert os.readlink(tmp_path / "link") == "target"
    assert (tmp_path / "target").read_bytes() == b"through the link"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        output = streams.NamedOutput(str(fifo))
        assert output.in_place
        output.write(b"in place")
        output.commit()
        assert os.read(reader, 100) == b"in place"
    finally:
        os.close(reader)
    with pytest.raises(Error, match=f"cannot write the map {tmp_path}: it is a directory; name a file"):
        streams.NamedOutput(str(tmp_path), what="the map")

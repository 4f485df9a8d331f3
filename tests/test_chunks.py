"""chunks.read_chunk: the one read of a chunk that every reader of a set checks."""

import io

from mirrorpipe.sets import chunks, manifests

CHUNK = 3 << 20     # longer than one piece (streams.BLOCK_SIZE), shorter than two


def test_a_chunk_is_read_at_its_offset_and_hashed_with_the_hashes_given():
    data = bytes(range(256)) * (2 * CHUNK // 256) + b"tail"
    view = memoryview(bytearray(CHUNK))
    running = manifests.new_hash()
    assert chunks.read_chunk(io.BytesIO(data), 1, CHUNK, view, [running]) == \
        manifests.digest_of(data[CHUNK:2 * CHUNK])
    assert view == data[CHUNK:2 * CHUNK]
    assert running.digest() == manifests.digest_of(data[CHUNK:2 * CHUNK])
    last = view[:4]
    assert chunks.read_chunk(io.BytesIO(data), 2, CHUNK, last) == manifests.digest_of(b"tail")


def test_a_file_that_ends_inside_the_chunk_gives_none():
    assert chunks.read_chunk(io.BytesIO(b"x" * (CHUNK + 10)), 1, CHUNK, memoryview(bytearray(CHUNK))) is None


class WholeChunksOnly(io.RawIOBase):
    """Stands for copies.VolumeCopies: a read shorter than the chunk gets nothing."""

    def __init__(self, data):
        super().__init__()
        self.data, self.position = data, 0

    def seek(self, offset, whence=0):
        self.position = offset
        return offset

    def readinto(self, buffer):
        size = min(CHUNK, len(self.data) - self.position)
        if len(buffer) < size:
            return 0
        buffer[:size] = self.data[self.position:self.position + size]
        self.position += size
        return size


def test_a_file_of_whole_chunks_is_given_the_chunk_at_once():
    data = b"a" * CHUNK + b"b" * CHUNK
    view = memoryview(bytearray(CHUNK))
    assert chunks.read_chunk(WholeChunksOnly(data), 1, CHUNK, view) is None     # 1 MiB pieces
    assert chunks.read_chunk(WholeChunksOnly(data), 1, CHUNK, view, piece_size=CHUNK) == \
        manifests.digest_of(b"b" * CHUNK)


def test_chunk_digest_picks_the_digest_of_a_chunk():
    digests = b"".join(bytes([n]) * manifests.DIGEST_SIZE for n in range(3))
    assert manifests.chunk_digest(digests, 1) == bytes([1]) * manifests.DIGEST_SIZE

"""Reading one chunk of a volume and checking it against its manifest: the one place it is done.

Every reader of a set (a restore, --verify, a parity rebuild, a disc folded into a rebuild)
reads whole chunks at their offsets and hashes each piece while it is still in the CPU cache,
feeding the same piece to whatever longer hashes (the volume's, the stream's) are running.
"""

from . import manifests
from ..stream.streams import BLOCK_SIZE


def read_chunk(file, number, chunk_size, view, hashes=(), piece_size=BLOCK_SIZE):
    """Read chunk `number` of a volume file (seek, readinto) into view, as long as the chunk,
    piece_size bytes at a time, feeding each piece to `hashes`; the chunk's digest, or None when
    the file ends before the chunk does. A file that reads whole chunks only (copies.VolumeCopies
    standing in for a volume) is given piece_size=len(view). OSError and errors.Error from the
    file are the caller's to judge."""
    chunk_hash = manifests.new_hash()
    file.seek(number * chunk_size)
    got = 0
    while got < len(view):
        count = file.readinto(view[got:got + piece_size])
        if not count:
            return None
        piece = view[got:got + count]
        chunk_hash.update(piece)
        for hash_ in hashes:
            hash_.update(piece)
        got += count
    return chunk_hash.digest()

"""What mount-image is given, opened for random access: a set (directories, volume files,
manifests, ISO images; compressed or raw; with parity volumes), one file made by compress, or a
raw image file."""

import os

from ..sets.finder import scan
from ..sets.randomaccess import open_set
from ..stream import frames
from ..stream.seekable import DEFAULT_CACHE_SIZE, CompressedBytes, FileBytes

COMPRESSED_SUFFIXES = (".zst", ".zstd")


def open_image(sources, cache_size=DEFAULT_CACHE_SIZE, say=None):
    """(random-access raw bytes (.length, .read(offset, size)), the name of the disk's file).
    A set is checked first as reassemble checks it (errors.Error with the same messages)."""
    found = scan(sources)
    if found.volumes or found.parity or len(sources) != 1 or not os.path.isfile(sources[0]):
        return open_set(sources, cache_size, say)
    path = sources[0]
    stored = FileBytes(path)
    name = os.path.basename(path)
    head = stored.read(0, 4)
    if head in (frames.stream_header()[:4], frames.ZSTD_MAGIC.to_bytes(4, "little")):
        for suffix in COMPRESSED_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[:-len(suffix)]
        return CompressedBytes(stored, path, cache_size), name
    return stored, name

"""The volume manifest: one JSON file beside each volume of a set, saying what the volume is.

A manifest is `NAME.001.manifest` beside the volume `NAME.001`. It holds the set's identity
(random 128-bit set id, set name), the volume's place in the stream (1-based index, offset,
length), xxh3-128 digests of the whole volume and of every chunk_size slice of it (so a reader
can check a chunk before passing it on, holding one chunk in memory), and on the last volume the
stream's total length, the volume count and an xxh3-128 digest of the whole stream.

A manifest read back is untrusted data: parse() checks every field's type and range and the
fields' consistency, refuses files larger than MAX_MANIFEST_SIZE before reading them, and raises
errors.Error with a one-line message for anything else. A manifest never names a path: the
volume is the file beside the manifest named like it without the `.manifest` suffix.
Unknown extra fields are ignored, so later versions can add information without a new
format_version; an incompatible change bumps format_version.
"""

import json
import math
import os
import re
import stat
from dataclasses import dataclass

import xxhash

from .errors import Error

FORMAT = "mirrorpipe-volume"
FORMAT_VERSION = 1
HASH_ALGORITHM = "xxh3-128"
SUFFIX = ".manifest"
DIGEST_SIZE = 16

DEFAULT_CHUNK_SIZE = 16 << 20
MIN_CHUNK_SIZE = 64 << 10
# reassemble holds one chunk in memory (a manifest chooses the size); this keeps it well under 200 MB.
MAX_CHUNK_SIZE = 64 << 20
# Chunks per volume: bounds a manifest to ~4 MB (37 bytes of JSON per chunk).
MAX_CHUNKS = 100_000
MAX_MANIFEST_SIZE = 8 << 20
MIN_VOLUME_SIZE = 64 << 10
MAX_VOLUME_SIZE = MAX_CHUNKS * MAX_CHUNK_SIZE
MAX_STREAM_LENGTH = 1 << 62
MAX_VOLUMES = 10_000_000
MAX_HOST_LENGTH = 255

# Set names become file names and appear in messages and prompts: a safe, printable alphabet.
SET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
SET_ID_RE = re.compile(r"[0-9a-f]{32}")
DIGEST_RE = re.compile(r"[0-9a-f]{32}")
MEDIA_RE = re.compile(r"[a-z0-9-]{1,16}")
CREATED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def new_hash():
    return xxhash.xxh3_128()


def chunk_count(length, chunk_size):
    return math.ceil(length / chunk_size)


@dataclass
class Manifest:
    set_id: str
    set_name: str
    index: int
    offset: int
    length: int
    chunk_size: int
    volume_size: int
    chunk_digests: bytes            # DIGEST_SIZE bytes per chunk, concatenated (compact in memory)
    volume_digest: bytes
    media: str = None
    created: str = ""
    host: str = ""
    last: bool = False
    total_length: int = None        # the last volume's own fields
    volume_count: int = None
    stream_digest: bytes = None

    @property
    def chunks(self):
        return len(self.chunk_digests) // DIGEST_SIZE

    def chunk_digest(self, number):
        return self.chunk_digests[number * DIGEST_SIZE:(number + 1) * DIGEST_SIZE]

    def describe(self):
        """'volume 3 of set 'pc1'' for messages."""
        return f"volume {self.index} of set '{self.set_name}'"

    def to_json(self):
        """The manifest file's bytes: readable JSON, one chunk digest per line."""
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hash_algorithm": HASH_ALGORITHM,
            "set_id": self.set_id,
            "set_name": self.set_name,
            "index": self.index,
            "last": self.last,
            "offset": self.offset,
            "length": self.length,
            "volume_size": self.volume_size,
            "media": self.media,
            "chunk_size": self.chunk_size,
            "volume_hash": self.volume_digest.hex(),
            "chunk_hashes": [self.chunk_digest(i).hex() for i in range(self.chunks)],
            "created": self.created,
            "host": self.host,
        }
        if self.last:
            document["total_length"] = self.total_length
            document["volume_count"] = self.volume_count
            document["stream_hash"] = self.stream_digest.hex()
        return (json.dumps(document, indent=1) + "\n").encode("ascii")


def largest_size(chunks):
    """The most bytes a valid manifest of a volume with `chunks` chunks takes (what split-span can
    write): every field at its longest. Used to reserve room for the manifest on a disc."""
    longest_number = 10 ** 19 - 1
    worst = Manifest(
        set_id="f" * 32, set_name="n" * 100, index=longest_number, offset=longest_number,
        length=longest_number, chunk_size=longest_number, volume_size=longest_number,
        chunk_digests=b"\xff" * (DIGEST_SIZE * chunks), volume_digest=b"\xff" * DIGEST_SIZE,
        media="m" * 16, created="2026-11-25T10:00:00.000000000Z",
        host="\u00e9" * MAX_HOST_LENGTH,   # escaped as \u00e9: 6 bytes each
        last=True, total_length=longest_number, volume_count=longest_number,
        stream_digest=b"\xff" * DIGEST_SIZE)
    return len(worst.to_json())


# ---------------------------------------------------------------------------------------------
# Reading untrusted manifests

class _Invalid(Exception):
    """A reason a manifest is refused; parse() turns it into an Error naming the file."""


def _reject_constant(name):
    raise _Invalid(f"{name} is not a JSON number")


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Invalid("a field appears twice")
    return dict(pairs)


def _get(document, key, kind, required=True):
    if key not in document:
        if required:
            raise _Invalid(f"field '{key}' is missing")
        return None
    value = document[key]
    # bool is an int subclass in Python; JSON true is not a number.
    if kind is int and (type(value) is not int):
        raise _Invalid(f"field '{key}' must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise _Invalid(f"field '{key}' has the wrong type")
    return value


def _integer(document, key, low, high, required=True):
    value = _get(document, key, int, required)
    if value is not None and not low <= value <= high:
        raise _Invalid(f"field '{key}' is {value}, outside {low}-{high}")
    return value


def _text(document, key, pattern, required=True, nullable=False):
    value = document.get(key) if nullable else None
    if nullable and value is None:
        return None
    value = _get(document, key, str, required)
    if value is not None and not pattern.fullmatch(value):
        raise _Invalid(f"field '{key}' is not a valid value")
    return value


def _digest(document, key):
    value = _text(document, key, DIGEST_RE)
    return bytes.fromhex(value)


def _decode(data):
    if len(data) > MAX_MANIFEST_SIZE:
        raise _Invalid(f"larger than {MAX_MANIFEST_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid("not UTF-8 text") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _Invalid("JSON nested too deeply") from None
    except ValueError as exc:
        raise _Invalid(f"not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise _Invalid("not a JSON object")
    return document


def _check(document):
    if document.get("format") != FORMAT:
        raise _Invalid(f"'format' is not \"{FORMAT}\"")
    version = _get(document, "format_version", int)
    if version != FORMAT_VERSION:
        raise _Invalid(f"format_version {version} is not supported (this mirrorpipe reads version "
                       f"{FORMAT_VERSION}; a newer mirrorpipe may read it)")
    if document.get("hash_algorithm") != HASH_ALGORITHM:
        raise _Invalid(f"'hash_algorithm' is not \"{HASH_ALGORITHM}\"")
    chunk_size = _integer(document, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    volume_size = _integer(document, "volume_size", MIN_VOLUME_SIZE, min(MAX_VOLUME_SIZE, chunk_size * MAX_CHUNKS))
    index = _integer(document, "index", 1, MAX_VOLUMES)
    offset = _integer(document, "offset", 0, MAX_STREAM_LENGTH)
    length = _integer(document, "length", 0, volume_size)
    last = _get(document, "last", bool)
    if offset != (index - 1) * volume_size:
        raise _Invalid(f"offset {offset} does not match volume {index} of {volume_size}-byte volumes")
    if not last and length != volume_size:
        raise _Invalid("a volume other than the last is not full")
    if length == 0 and index != 1:
        raise _Invalid("an empty volume that is not the first")
    hashes = _get(document, "chunk_hashes", list)
    if len(hashes) != chunk_count(length, chunk_size):
        raise _Invalid(f"{len(hashes)} chunk hashes for {length} bytes in {chunk_size}-byte chunks")
    digests = bytearray()
    for value in hashes:
        if type(value) is not str or not DIGEST_RE.fullmatch(value):
            raise _Invalid("a chunk hash is not 32 hex digits")
        digests += bytes.fromhex(value)
    manifest = Manifest(
        set_id=_text(document, "set_id", SET_ID_RE),
        set_name=_text(document, "set_name", SET_NAME_RE),
        index=index, offset=offset, length=length, chunk_size=chunk_size, volume_size=volume_size,
        chunk_digests=bytes(digests), volume_digest=_digest(document, "volume_hash"),
        media=_text(document, "media", MEDIA_RE, nullable=True),
        created=_text(document, "created", CREATED_RE),
        host=_get(document, "host", str),
        last=last)
    if len(manifest.host) > MAX_HOST_LENGTH or not manifest.host.isprintable():
        raise _Invalid("field 'host' is not a printable host name")
    if last:
        manifest.total_length = _integer(document, "total_length", 0, MAX_STREAM_LENGTH)
        manifest.volume_count = _integer(document, "volume_count", 1, MAX_VOLUMES)
        manifest.stream_digest = _digest(document, "stream_hash")
        if manifest.total_length != offset + length or manifest.volume_count != index:
            raise _Invalid("total_length or volume_count does not match the last volume")
    return manifest


def parse(data, name="manifest"):
    """A Manifest from a manifest file's bytes; errors.Error naming `name` when it is not valid."""
    try:
        return _check(_decode(data))
    except _Invalid as exc:
        raise Error(f"{name} is not a valid volume manifest: {exc}; "
                    "remove it or give only the volume set's files") from None


def read(path):
    """Parse the manifest file at path. Only a regular file of at most MAX_MANIFEST_SIZE bytes is
    read (a FIFO or device could hang the reader or feed it without end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise Error(f"cannot read manifest {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Error(f"{path} is not a regular file; a manifest is a file beside its volume")
        if info.st_size > MAX_MANIFEST_SIZE:
            raise Error(f"{path} is not a valid volume manifest: {info.st_size} bytes, more than the "
                        f"{MAX_MANIFEST_SIZE} a manifest can have; remove it")
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(MAX_MANIFEST_SIZE + 1)
    except OSError as exc:
        raise Error(f"cannot read manifest {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return parse(data, path)


def volume_path(manifest_path):
    """The volume a manifest describes: the file beside it, named like it without '.manifest'."""
    return manifest_path[:-len(SUFFIX)]


def manifest_path(volume_path):
    return volume_path + SUFFIX

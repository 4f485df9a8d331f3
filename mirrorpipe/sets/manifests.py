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

A parity volume (split-span --parity) has a manifest of its own format, "mirrorpipe-parity":
the same identity, length and hashes, plus its group (the data volumes it protects, with their
lengths and volume hashes), its place among the group's parity volumes, the code and the
coefficients it was made with, and for the set's last group the stream's total length, volume
count and hash, so that a set whose last data volume is lost still knows where it ends. The data
volumes' manifests of such a set say how many parity volumes protect how many data volumes.
"""

import json
import math
import os
import re
import stat
from dataclasses import dataclass

import xxhash

from . import erasure
from ..errors import Error
from .names import VolumeKey

FORMAT = "mirrorpipe-volume"
PARITY_FORMAT = "mirrorpipe-parity"
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


def digest_of(data):
    """The digest of data as manifests record it (a chunk's, a volume's)."""
    return xxhash.xxh3_128_digest(data)


def chunk_count(length, chunk_size):
    return math.ceil(length / chunk_size)


def chunk_digest(digests, number):
    """Chunk `number`'s digest out of a manifest's concatenated chunk digests."""
    return digests[number * DIGEST_SIZE:(number + 1) * DIGEST_SIZE]


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
    parity: "ParityScheme" = None   # a set with parity volumes: how many, over how many volumes

    @property
    def chunks(self):
        return len(self.chunk_digests) // DIGEST_SIZE

    def chunk_digest(self, number):
        return chunk_digest(self.chunk_digests, number)

    @property
    def key(self):
        return VolumeKey(self.index)

    def describe(self):
        """'volume 3 of set 'pc1'' (or 'parity volume 1 of group 2 ...') for messages."""
        return f"{self.key.describe()} of set '{self.set_name}'"

    def to_json(self):
        """The manifest file's bytes: readable JSON, one chunk digest per line."""
        document = _document(self, FORMAT, {"index": self.index, "last": self.last, "offset": self.offset},
                             self.last)
        if self.parity:
            document["parity"] = {"count": self.parity.count, "group_size": self.parity.group_size}
        return (json.dumps(document, indent=1) + "\n").encode("ascii")


def _document(manifest, format_name, own_fields, stream_end):
    """The JSON object of a manifest of either format: its identity, `own_fields`, its length and
    hashes, and with `stream_end` the stream's total length, volume count and hash."""
    document = {
        "format": format_name,
        "format_version": FORMAT_VERSION,
        "hash_algorithm": HASH_ALGORITHM,
        "set_id": manifest.set_id,
        "set_name": manifest.set_name,
        **own_fields,
        "length": manifest.length,
        "volume_size": manifest.volume_size,
        "media": manifest.media,
        "chunk_size": manifest.chunk_size,
        "volume_hash": manifest.volume_digest.hex(),
        "chunk_hashes": [manifest.chunk_digest(i).hex() for i in range(manifest.chunks)],
        "created": manifest.created,
        "host": manifest.host,
    }
    if stream_end:
        document["total_length"] = manifest.total_length
        document["volume_count"] = manifest.volume_count
        document["stream_hash"] = manifest.stream_digest.hex()
    return document


@dataclass(frozen=True)
class ParityScheme:
    """split-span --parity COUNT --group GROUP_SIZE: COUNT parity volumes for every GROUP_SIZE
    data volumes (the last group may have fewer data volumes)."""
    count: int
    group_size: int

    def group_of(self, index):
        """The 1-based group of data volume `index`."""
        return (index - 1) // self.group_size + 1

    def data_indices(self, group, volume_count=None):
        """The data volume indices of a group (cut at volume_count when known)."""
        first = (group - 1) * self.group_size + 1
        last = first + self.group_size - 1
        return range(first, (min(last, volume_count) if volume_count else last) + 1)


@dataclass(frozen=True)
class DataVolumeEntry:
    """A parity manifest's record of one data volume of its group."""
    index: int
    length: int
    volume_digest: bytes


@dataclass
class ParityManifest:
    """The manifest of parity volume `parity_index` (1 .. parity_count) of group `group`."""
    set_id: str
    set_name: str
    group: int
    group_size: int
    parity_index: int
    parity_count: int
    coefficients: list              # what each data volume of the group was multiplied by
    data_volumes: list              # DataVolumeEntry of each data volume of the group, in order
    length: int
    chunk_size: int
    volume_size: int
    chunk_digests: bytes
    volume_digest: bytes
    media: str = None
    created: str = ""
    host: str = ""
    last_group: bool = False
    total_length: int = None        # the last group's own fields
    volume_count: int = None
    stream_digest: bytes = None
    code: str = erasure.CODE_ID

    chunks = Manifest.chunks
    chunk_digest = Manifest.chunk_digest

    @property
    def parity(self):
        """The set's ParityScheme, as a data volume's manifest gives it."""
        return ParityScheme(self.parity_count, self.group_size)

    describe = Manifest.describe

    @property
    def key(self):
        return VolumeKey.parity(self.group, self.parity_index)

    def to_json(self):
        document = _document(self, PARITY_FORMAT, {
            "group": self.group,
            "group_size": self.group_size,
            "parity_index": self.parity_index,
            "parity_count": self.parity_count,
            "last_group": self.last_group,
            "code": self.code,
            "coefficients": self.coefficients,
            "data_volumes": [{"index": entry.index, "length": entry.length,
                              "volume_hash": entry.volume_digest.hex()} for entry in self.data_volumes],
        }, self.last_group)
        return (json.dumps(document, indent=1) + "\n").encode("ascii")


def largest_size(chunks):
    """The most bytes a valid manifest (of a data or a parity volume) of a volume with `chunks`
    chunks takes (what split-span can write): every field at its longest. Used to reserve room
    for the manifest on a disc."""
    longest_number = 10 ** 19 - 1
    worst = Manifest(
        set_id="f" * 32, set_name="n" * 100, index=longest_number, offset=longest_number,
        length=longest_number, chunk_size=longest_number, volume_size=longest_number,
        chunk_digests=b"\xff" * (DIGEST_SIZE * chunks), volume_digest=b"\xff" * DIGEST_SIZE,
        media="m" * 16, created="2026-11-25T10:00:00.000000000Z",
        host="\u00e9" * MAX_HOST_LENGTH,   # escaped as \u00e9: 6 bytes each
        last=True, total_length=longest_number, volume_count=longest_number,
        stream_digest=b"\xff" * DIGEST_SIZE,
        parity=ParityScheme(erasure.MAX_PARITY, erasure.MAX_DATA))
    worst_parity = ParityManifest(
        set_id=worst.set_id, set_name=worst.set_name, group=longest_number,
        group_size=erasure.MAX_DATA, parity_index=erasure.MAX_PARITY, parity_count=erasure.MAX_PARITY,
        coefficients=[255] * erasure.MAX_DATA,
        data_volumes=[DataVolumeEntry(longest_number, longest_number, worst.volume_digest)] * erasure.MAX_DATA,
        length=longest_number, chunk_size=longest_number, volume_size=longest_number,
        chunk_digests=worst.chunk_digests, volume_digest=worst.volume_digest, media=worst.media,
        created=worst.created, host=worst.host, last_group=True, total_length=longest_number,
        volume_count=longest_number, stream_digest=worst.stream_digest)
    return max(len(worst.to_json()), len(worst_parity.to_json()))


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


def _check_header(document):
    version = _get(document, "format_version", int)
    if version != FORMAT_VERSION:
        raise _Invalid(f"format_version {version} is not supported (this mirrorpipe reads version "
                       f"{FORMAT_VERSION}; a newer mirrorpipe may read it)")
    if document.get("hash_algorithm") != HASH_ALGORITHM:
        raise _Invalid(f"'hash_algorithm' is not \"{HASH_ALGORITHM}\"")


def _sizes(document):
    """(chunk_size, volume_size) of a manifest."""
    chunk_size = _integer(document, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    volume_size = _integer(document, "volume_size", MIN_VOLUME_SIZE, min(MAX_VOLUME_SIZE, chunk_size * MAX_CHUNKS))
    return chunk_size, volume_size


def _chunk_digests(document, length, chunk_size):
    hashes = _get(document, "chunk_hashes", list)
    if len(hashes) != chunk_count(length, chunk_size):
        raise _Invalid(f"{len(hashes)} chunk hashes for {length} bytes in {chunk_size}-byte chunks")
    digests = bytearray()
    for value in hashes:
        if type(value) is not str or not DIGEST_RE.fullmatch(value):
            raise _Invalid("a chunk hash is not 32 hex digits")
        digests += bytes.fromhex(value)
    return bytes(digests)


def _common_fields(document):
    """The fields both formats share, besides sizes and hashes."""
    fields = dict(
        set_id=_text(document, "set_id", SET_ID_RE),
        set_name=_text(document, "set_name", SET_NAME_RE),
        media=_text(document, "media", MEDIA_RE, nullable=True),
        created=_text(document, "created", CREATED_RE),
        host=_get(document, "host", str))
    if len(fields["host"]) > MAX_HOST_LENGTH or not fields["host"].isprintable():
        raise _Invalid("field 'host' is not a printable host name")
    return fields


def _stream_end(document, manifest, last_index, last_offset, last_length):
    """The last volume's (or last group's) total length, volume count and stream hash."""
    manifest.total_length = _integer(document, "total_length", 0, MAX_STREAM_LENGTH)
    manifest.volume_count = _integer(document, "volume_count", 1, MAX_VOLUMES)
    manifest.stream_digest = _digest(document, "stream_hash")
    if manifest.total_length != last_offset + last_length or manifest.volume_count != last_index:
        raise _Invalid("total_length or volume_count does not match the last volume")


def _check(document):
    _check_header(document)
    chunk_size, volume_size = _sizes(document)
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
    manifest = Manifest(
        index=index, offset=offset, length=length, chunk_size=chunk_size, volume_size=volume_size,
        chunk_digests=_chunk_digests(document, length, chunk_size),
        volume_digest=_digest(document, "volume_hash"), last=last, **_common_fields(document))
    if last:
        _stream_end(document, manifest, index, offset, length)
    scheme = _get(document, "parity", dict, required=False)
    if scheme is not None:
        manifest.parity = ParityScheme(_integer(scheme, "count", 1, erasure.MAX_PARITY),
                                       _integer(scheme, "group_size", 1, erasure.MAX_DATA))
    return manifest


def _check_parity(document):
    _check_header(document)
    if document.get("code") != erasure.CODE_ID:
        raise _Invalid(f"made with the parity code {str(document.get('code'))[:40]!r}, which this "
                       f"mirrorpipe does not know (it knows \"{erasure.CODE_ID}\")")
    chunk_size, volume_size = _sizes(document)
    group = _integer(document, "group", 1, MAX_VOLUMES)
    group_size = _integer(document, "group_size", 1, erasure.MAX_DATA)
    parity_count = _integer(document, "parity_count", 1, erasure.MAX_PARITY)
    parity_index = _integer(document, "parity_index", 1, parity_count)
    last_group = _get(document, "last_group", bool)
    entries = _get(document, "data_volumes", list)
    if not 1 <= len(entries) <= group_size or (not last_group and len(entries) != group_size):
        raise _Invalid(f"{len(entries)} data volumes in a group of {group_size}")
    data_volumes = []
    first = (group - 1) * group_size + 1
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _Invalid("a data volume entry is not a JSON object")
        data_volumes.append(DataVolumeEntry(
            index=_integer(entry, "index", first + position, first + position),
            length=_integer(entry, "length", 0, volume_size),
            volume_digest=_digest(entry, "volume_hash")))
    if any(entry.length != volume_size for entry in data_volumes[:-1]) or \
            (not last_group and data_volumes[-1].length != volume_size):
        raise _Invalid("a data volume other than the set's last is not full")
    coefficients = _get(document, "coefficients", list)
    if coefficients != [erasure.coefficient(parity_index - 1, i) for i in range(len(data_volumes))]:
        raise _Invalid("its coefficients are not those of its code")
    length = _integer(document, "length", 0, volume_size)
    if length != max(entry.length for entry in data_volumes):
        raise _Invalid("its length is not its group's longest data volume's")
    manifest = ParityManifest(
        group=group, group_size=group_size, parity_index=parity_index, parity_count=parity_count,
        coefficients=coefficients, data_volumes=data_volumes, length=length, chunk_size=chunk_size,
        volume_size=volume_size, chunk_digests=_chunk_digests(document, length, chunk_size),
        volume_digest=_digest(document, "volume_hash"), last_group=last_group,
        **_common_fields(document))
    if last_group:
        end = data_volumes[-1]
        _stream_end(document, manifest, end.index, (end.index - 1) * volume_size, end.length)
    return manifest


def parse(data, name="manifest"):
    """A Manifest (or a ParityManifest) from a manifest file's bytes; errors.Error naming `name`
    when it is not valid."""
    try:
        document = _decode(data)
        if document.get("format") == PARITY_FORMAT:
            return _check_parity(document)
        if document.get("format") != FORMAT:
            raise _Invalid(f"'format' is not \"{FORMAT}\"")
        return _check(document)
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

"""xxHash digests of streams and files, and sum files in the formats xxhsum/xxh128sum read.

Lines are written as the stock tools write them: `HEX  NAME` for xxh128 and xxh64, and the tagged
`XXH3 (NAME) = HEX` for 64-bit XXH3, which xxhsum writes that way to tell it from XXH64.
"""

import re

import xxhash

from ..errors import Error
from .streams import BLOCK_SIZE, read_full, write_all

ALGORITHMS = {
    "xxh128": xxhash.xxh3_128,
    "xxh3": xxhash.xxh3_64,
    "xxh64": xxhash.xxh64,
}
DEFAULT_ALGORITHM = "xxh128"
# The name xxh128sum gives standard input in its output.
STDIN_NAME = "stdin"

_TAGS = {"XXH128": "xxh128", "XXH3": "xxh3", "XXH64": "xxh64"}
_GNU_LINE = re.compile(r"^\\?([0-9a-fA-F]+) [ *](.*)$")
_TAG_LINE = re.compile(r"^\\?(XXH\w+) \((.*)\) = ([0-9a-fA-F]+)$")
_LENGTH_ALGORITHM = {32: "xxh128", 16: "xxh64"}


def new(algorithm):
    return ALGORITHMS[algorithm]()


def hash_stream(src_fd, algorithm, copy_to=None, progress=None, confirm_end=None):
    """Digest (hex) of everything readable from src_fd, passing it on to copy_to when given.
    confirm_end(bytes read) is called at end of input and raises when the input was cut short."""
    hasher = new(algorithm)
    received = 0
    buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)
    while True:
        got = read_full(src_fd, view)
        if got == 0:
            break
        hasher.update(view[:got])
        received += got
        if copy_to is not None:
            write_all(copy_to, view[:got])
        if progress:
            progress.advance(got)
        if got < BLOCK_SIZE:
            break
    if confirm_end:
        confirm_end(received)
    return hasher.hexdigest()


def _unescape(name):
    """The name of a line that starts with a backslash: xxhsum 0.8.2 and later, like coreutils,
    escape a name holding a backslash or newline that way."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), name)


def check_name(name):
    """Error unless NAME can stand in a sum file line that every xxhsum reads back. Names are
    written as they are: xxh128sum 0.8.1 reads no escapes (it refuses a line with the backslash
    prefix of later versions), and takes everything after the two spaces up to the newline as the
    name, spaces, tabs, backslashes and carriage returns included; so only a newline cannot be."""
    if "\n" in name:
        raise Error(f"the name {name!r} holds a newline, which no line of a sum file can hold "
                    "(xxh128sum 0.8.1 reads one name a line, without escapes)")


def format_line(algorithm, hexdigest, name):
    check_name(name)
    if algorithm == "xxh3":
        return f"XXH3 ({name}) = {hexdigest}\n"
    return f"{hexdigest}  {name}\n"


def parse_sum_file(path):
    """[(algorithm, hexdigest, name)] from a sum file in xxhsum's GNU or tagged (BSD) format."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise Error(f"cannot read the sum file {path}: {exc.strerror}") from None
    entries = []
    # Lines end at newlines only: a name may hold a carriage return, form feed or U+2028.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        escaped = line.startswith("\\")
        tagged = _TAG_LINE.match(line)
        plain = _GNU_LINE.match(line)
        if tagged and tagged.group(1) in _TAGS:
            algorithm, name, hexdigest = _TAGS[tagged.group(1)], tagged.group(2), tagged.group(3)
        elif plain and len(plain.group(1)) in _LENGTH_ALGORITHM:
            hexdigest, name = plain.group(1), plain.group(2)
            algorithm = _LENGTH_ALGORITHM[len(hexdigest)]
        else:
            raise Error(f"{path}:{number}: not a line of an xxh128, xxh3 or xxh64 sum file")
        entries.append((algorithm, hexdigest.lower(), _unescape(name) if escaped else name))
    if not entries:
        raise Error(f"{path} holds no checksum lines")
    return entries


def pick_entry(entries, path, name=None):
    """The entry of a sum file a stream is checked against: the one named, else the only one."""
    if name is not None:
        for entry in entries:
            if entry[2] == name:
                return entry
        raise Error(f"{path} has no line for {name!r}")
    if len(entries) == 1:
        return entries[0]
    for entry in entries:
        if entry[2] in (STDIN_NAME, "-"):
            return entry
    raise Error(f"{path} has {len(entries)} lines; say which one to check with --name")

"""ISO images of volumes: packaging a volume with its manifest and README.TXT, sizing, reading back.

An image holds three files at its root: the volume, its manifest and README.TXT, under ISO 9660
level 3 (files over 4 GiB as multi-extent records), Rock Ridge, Joliet and UDF, so that Linux,
Windows and macOS read the disc without mirrorpipe.

pycdlib lays the image out. The volume's bytes do not pass through Python: pycdlib is handed a
placeholder of zeros, which the writer turns into a hole, and the volume is then copied into its
extent with copy_file_range (only the data segments of a sparse volume). Reading back finds the
volume's extents through the first file system of the disc that gives them (UDF, ISO 9660,
Joliet: a damaged one is passed over) and reads them with pread, so neither direction holds
more than one buffer of the volume in memory.
"""

import errno
import io
import os
import re
import struct
from dataclasses import dataclass

from . import discreadme
from ..sets import manifests
from ..sets.chunks import read_chunk
from ..sets.names import IMAGE_SUFFIX, VolumeKey, volume_suffix
from ..stream import streams
from ..errors import Error

SECTOR_SIZE = 2048
README_NAME = "README.TXT"

# README.TXT is a few KiB; this bounds it for any set name and host a manifest can hold.
README_ALLOWANCE = 16 * 1024

# What a burner adds after the image: `xorriso -as cdrecord` pads a data track with 300 KiB of
# zeros (the old Linux read-ahead bug at the end of a TAO track), and DVD and Blu-ray media are
# written in whole ECC blocks (16 sectors on DVD, 32 on BD), so a track ends on 32 sectors.
BURNER_PADDING = 300 * 1024
WRITE_UNIT_SECTORS = 32

ISO_LABEL_LENGTH = 32       # ECMA-119 volume identifier, d-characters
JOLIET_LABEL_LENGTH = 16    # Joliet: 16 UCS-2 characters
UDF_LABEL_LENGTH = 126      # UDF logical volume identifier: 128-byte dstring, 8-bit characters
ISO_NAME_LENGTH = 30        # level 3: name + '.' + extension, without ';1'
JOLIET_NAME_LENGTH = 64

_NOT_D_CHARACTERS = re.compile(r"[^A-Z0-9_]")
COPY_PIECE = 64 << 20       # copy_file_range per call: small enough for a lively progress line


# ---------------------------------------------------------------------------------------------
# Names and labels

def iso9660_name(name):
    """An ISO 9660 level 3 file identifier for NAME: d-characters, one dot, at most 30 characters.
    Readers of Rock Ridge, Joliet and UDF see the real name; this one is for plain ISO 9660."""
    stem, dot, extension = name.upper().rpartition(".")
    if not dot:
        stem, extension = extension, ""
    stem = _NOT_D_CHARACTERS.sub("_", stem)
    extension = _NOT_D_CHARACTERS.sub("_", extension)[:ISO_NAME_LENGTH - 2]
    stem = stem[:ISO_NAME_LENGTH - 1 - len(extension)] or "_"
    return f"{stem}.{extension};1"


def joliet_name(name):
    """NAME within Joliet's 64 characters, keeping its end ('.001.manifest') that tells the files
    of a disc apart. Windows reads the full name from UDF anyway."""
    if len(name) <= JOLIET_NAME_LENGTH:
        return name
    return name[:JOLIET_NAME_LENGTH - 16] + name[-16:]


@dataclass(frozen=True)
class Labels:
    iso9660: str
    joliet: str
    udf: str


def disc_labels(set_name, key):
    """Volume labels for the disc of the volume of KEY (a names.VolumeKey) of SET_NAME, within
    each file system's limits: 'PC1_2026_11_25_003' (ISO 9660), 'PC1_2026_11_003' (Joliet),
    'pc1-2026-11-25 disc 3' (UDF); for parity disc 2 of group 1: 'PC1_2026_11_25_P001_2',
    'pc1-2026-11-25 parity 1-2'."""
    number, title = key.label_number(), key.label_title()
    upper = _NOT_D_CHARACTERS.sub("_", set_name.upper())
    return Labels(
        iso9660=f"{upper[:ISO_LABEL_LENGTH - 1 - len(number)].rstrip('_')}_{number}",
        joliet=f"{upper[:JOLIET_LABEL_LENGTH - 1 - len(number)].rstrip('_')}_{number}",
        udf=f"{set_name[:UDF_LABEL_LENGTH - 1 - len(title)]} {title}")


# ---------------------------------------------------------------------------------------------
# Layout

class _Zeros(io.RawIOBase):
    """Stands in for the volume while pycdlib writes the image: zeros, which _HoleWriter skips."""

    def readable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        return 0

    def read(self, size=-1):
        return streams.ZEROS if size == len(streams.ZEROS) else bytes(size)


class _HoleWriter(io.RawIOBase):
    """pycdlib's output file: all-zero writes become seeks, leaving holes in a new, empty file."""

    def __init__(self, fd):
        super().__init__()
        self.fd = fd
        self.position = 0
        self.end = 0

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        self.position = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.end}[whence] + offset
        return self.position

    def tell(self):
        return self.position

    def write(self, data):
        length = len(data)
        if not streams.is_zero(data):
            streams.pwrite_all(self.fd, data, self.position)
        self.position += length
        self.end = max(self.end, self.position)
        return length


def _layout(members, labels):
    """A pycdlib image of MEMBERS ([(name, length, file object)]) at the root, not yet written."""
    # Imported here, where images are written: it took ~25 ms of the start of every command that
    # reads a set (reassemble, mount-image), which read ISO images without it.
    import pycdlib
    image = pycdlib.PyCdlib()
    # pycdlib.new() takes one identifier for every file system, and Joliet's holds 16 characters;
    # ISO 9660 and UDF get their longer labels below. "2.60" is the only UDF value pycdlib 1.22
    # takes, but what it writes is UDF 1.02 (NSR02, domain revision 0x0102: udfinfo says
    # udfrev=1.02), which burn-iso.1 names.
    image.new(interchange_level=3, vol_ident=labels.joliet, joliet=3, rock_ridge="1.09",
              udf="2.60", app_ident_str="MIRRORPIPE")
    image.pvd.volume_identifier = labels.iso9660.encode("ascii").ljust(ISO_LABEL_LENGTH)
    udf_label = _udf_dstring(labels.udf, 128)
    for descriptors in (image.udf_main_descs, image.udf_reserve_descs):
        for volume in descriptors.logical_volumes:
            volume.logical_vol_ident = udf_label
    for name, length, fp in members:
        # rw-r--r--: copies taken off the disc can be removed without a write-protection prompt.
        image.add_fp(fp, length, iso_path="/" + iso9660_name(name), rr_name=name,
                     joliet_path="/" + joliet_name(name), udf_path="/" + name, file_mode=0o100644)
    return image


def _udf_dstring(text, field_length):
    """A UDF dstring: compression id 8 (Latin-1), the text, zeros, the used length in the last byte."""
    data = b"\x08" + text.encode("latin-1", "replace")[:field_length - 2]
    return data.ljust(field_length - 1, b"\x00") + bytes([len(data)])


def image_size(volume_name, volume_length, manifest_length, readme_length):
    """Exact bytes of the image of a volume of VOLUME_LENGTH with a manifest and README of the
    given lengths (file names and labels affect only the directory records, not the size)."""
    image = _layout([(volume_name, volume_length, _Zeros()),
                     (volume_name + manifests.SUFFIX, manifest_length, _Zeros()),
                     (README_NAME, readme_length, _Zeros())], disc_labels("size", VolumeKey(1)))
    return image.pvd.space_size * SECTOR_SIZE


def image_size_bound(volume_length, chunk_size):
    """Upper bound of the image size of a volume of VOLUME_LENGTH hashed in CHUNK_SIZE chunks,
    before its manifest and README exist: the largest manifest a volume of that length can have."""
    manifest = manifests.largest_size(manifests.chunk_count(volume_length, chunk_size))
    return image_size("x" * 48 + ".001", volume_length, manifest, README_ALLOWANCE)


def burned_sectors(image_length):
    """Sectors a disc gives to an image of IMAGE_LENGTH bytes: the image and the burner's padding,
    rounded up to the media's write unit."""
    sectors = -(-(image_length + BURNER_PADDING) // SECTOR_SIZE)
    return -(-sectors // WRITE_UNIT_SECTORS) * WRITE_UNIT_SECTORS


def fits(image_length, disc_sectors):
    return burned_sectors(image_length) <= disc_sectors


def largest_image(disc_sectors):
    """The longest image that fits DISC_SECTORS once burned: burned_sectors turned round."""
    return disc_sectors // WRITE_UNIT_SECTORS * WRITE_UNIT_SECTORS * SECTOR_SIZE - BURNER_PADDING


def largest_volume(disc_sectors, chunk_size):
    """The largest volume length (whole sectors) whose image, burned, fits DISC_SECTORS."""
    capacity = disc_sectors * SECTOR_SIZE
    overhead = image_size_bound(capacity, chunk_size) - capacity
    length = (capacity - overhead - BURNER_PADDING) // SECTOR_SIZE * SECTOR_SIZE
    while length > 0 and not fits(image_size_bound(length, chunk_size), disc_sectors):
        length -= SECTOR_SIZE
    if length <= 0:
        raise Error(f"a disc of {disc_sectors} sectors is too small for an ISO image")
    return length


# ---------------------------------------------------------------------------------------------
# Writing

def package(volume_path, image_path, compressed=None, progress=None):
    """Write the ISO image of the finished volume at VOLUME_PATH, whose manifest lies beside it.
    COMPRESSED (whether the set's stream is zstd, for README.TXT) is found out from volume 1 when
    it is this volume or lies beside it, unless given. Returns the image size in bytes."""
    manifest_path = manifests.manifest_path(volume_path)
    manifest = manifests.read(manifest_path)
    with open(manifest_path, "rb") as stream:  # read() checked it: a regular file, not too large
        manifest_bytes = stream.read(manifests.MAX_MANIFEST_SIZE + 1)
    try:
        volume_length = os.stat(volume_path).st_size
    except OSError as exc:
        raise Error(f"cannot read {volume_path}: {exc.strerror}") from None
    if volume_length != manifest.length:
        raise Error(f"{volume_path} is {volume_length} bytes, its manifest says {manifest.length}; "
                    "give a complete volume")
    if compressed is None:
        compressed = stream_compressed(volume_path, manifest)
    readme = discreadme.readme_text(manifest, os.path.basename(volume_path), compressed)
    return write_image(volume_path, manifest_bytes, readme, image_path,
                       disc_labels(manifest.set_name, manifest.key), progress)


def stream_compressed(volume_path, manifest):
    """Whether the set's stream is zstd, from the first bytes of volume 1 when it is this volume
    or lies beside it; None when it is not at hand."""
    first = volume_path
    if manifest.key != VolumeKey(1):
        prefix = volume_path.rpartition(".")[0]
        first = f"{prefix}.{volume_suffix(1)}"
        try:
            if manifests.read(manifests.manifest_path(first)).set_id != manifest.set_id:
                return None
        except Error:
            return None
    try:
        with open(first, "rb") as stream:
            return discreadme.looks_compressed(stream.read(4))
    except OSError:
        return None


def replace_with_image(volume_path, compressed=None, progress=None):
    """Package the finished volume at VOLUME_PATH into VOLUME_PATH.iso, then remove the volume and
    its manifest: the disk space of one volume is all the image needs besides. The manifest goes
    first, so that nothing is left that reads as a volume without its data. Returns the image path."""
    image_path = volume_path + IMAGE_SUFFIX
    package(volume_path, image_path, compressed, progress)
    for path in (manifests.manifest_path(volume_path), volume_path):
        os.unlink(path)
    return image_path


class ImageHook:
    """split-span --iso: replaces each finished volume by its image, then hands the image's path
    to THEN (the --exec hook), if any. Volume 1 comes first and tells whether the stream is zstd,
    which the README.TXT of every disc then says."""

    def __init__(self, then=None):
        self.then = then
        self.compressed = None

    def __call__(self, manifest, path):
        if manifest.key == VolumeKey(1):
            self.compressed = stream_compressed(path, manifest)
        image_path = replace_with_image(path, self.compressed)
        if self.then:
            self.then(manifest, image_path)


def write_image(volume_path, manifest_bytes, readme_text, image_path, labels, progress=None):
    """Write the ISO image of the volume at VOLUME_PATH to IMAGE_PATH (through IMAGE_PATH.part,
    renamed when complete). Returns the image size in bytes."""
    volume_name = os.path.basename(volume_path)
    readme_bytes = readme_text.encode("utf-8")
    part_path = image_path + ".part"
    try:
        source = os.open(volume_path, os.O_RDONLY)
    except OSError as exc:
        raise Error(f"cannot read {volume_path}: {exc.strerror}") from None
    try:
        volume_length = os.fstat(source).st_size
        image = _layout([(volume_name, volume_length, _Zeros()),
                         (volume_name + manifests.SUFFIX, len(manifest_bytes), io.BytesIO(manifest_bytes)),
                         (README_NAME, len(readme_bytes), io.BytesIO(readme_bytes))], labels)
        size = image.pvd.space_size * SECTOR_SIZE
        try:
            target = os.open(part_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            raise Error(f"cannot write {part_path}: {exc.strerror}") from None
        try:
            image.write_fp(_HoleWriter(target), blocksize=streams.BLOCK_SIZE)
            if volume_length:  # an empty volume (of an empty stream) has no extent
                record = image.get_record(udf_path="/" + volume_name)
                copy_into(source, target, record.inode.extent_location() * SECTOR_SIZE, volume_length,
                          progress)
            os.ftruncate(target, size)
            os.fsync(target)
        except OSError as exc:
            os.unlink(part_path)
            raise Error(f"cannot write {part_path}: {exc.strerror}") from None
        except BaseException:
            os.unlink(part_path)
            raise
        finally:
            os.close(target)
        os.replace(part_path, image_path)
        return size
    finally:
        os.close(source)


def copy_into(source, target, target_offset, length, progress=None):
    """Copy LENGTH bytes of file SOURCE into TARGET at TARGET_OFFSET, in the kernel, skipping the
    holes of a sparse source (the target's own holes already read as zeros)."""
    position = 0
    while position < length:
        try:
            data = os.lseek(source, position, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            break
        hole = min(os.lseek(source, data, os.SEEK_HOLE), length)
        if progress:
            progress.advance(data - position)
        while data < hole:
            copied = _copy_piece(source, target, data, target_offset + data, min(COPY_PIECE, hole - data))
            if copied == 0:
                raise Error("the volume shrank while it was being packaged")
            data += copied
            if progress:
                progress.advance(copied)
        position = hole
    if progress and length > position:
        progress.advance(length - position)


def _copy_piece(source, target, source_offset, target_offset, count):
    try:
        return os.copy_file_range(source, target, count, source_offset, target_offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        # Across file systems on old kernels, or where the file system cannot: copy by hand.
    data = os.pread(source, min(count, streams.BLOCK_SIZE), source_offset)
    streams.pwrite_all(target, data, target_offset)
    return len(data)


# ---------------------------------------------------------------------------------------------
# Reading back, without mounting

MAX_SMALL_MEMBER = 64 << 20   # manifest and README: read whole, but never an absurd amount
MAX_DIRECTORY = 1 << 20       # a disc's root directory holds three entries: a few hundred bytes

UDF_ANCHOR_SECTOR = 256
UDF_ANCHOR, UDF_PARTITION, UDF_LOGICAL_VOLUME, UDF_TERMINATOR = 2, 5, 6, 8
UDF_FILE_SET, UDF_FILE_IDENTIFIER, UDF_FILE_ENTRY, UDF_EXTENDED_FILE_ENTRY = 256, 257, 261, 266
UDF_MAX_SEQUENCE = 64        # sectors of a volume descriptor sequence read; pycdlib writes 6
ISO_FIRST_DESCRIPTOR = 16
ISO_MAX_DESCRIPTORS = 16      # burn-iso writes 3 (primary, Joliet, terminator)
JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")


def device_path(device):
    """The file behind a drive name: xorriso's 'stdio:PATH' pseudo-drive is PATH."""
    return device[len("stdio:"):] if device.startswith("stdio:") else device


class _Unreadable(Exception):
    """One file system of a disc cannot give its files (the others may)."""


def _read_at(fd, offset, length):
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise _Unreadable(f"read error at byte {offset}: {exc.strerror}") from None
    if len(data) < length:
        raise _Unreadable(f"the disc ends at byte {offset + len(data)}, before its structures do")
    return data


def _sector(fd, number):
    return _read_at(fd, number * SECTOR_SIZE, SECTOR_SIZE)


def _read_extents(fd, extents, limit):
    if sum(length for _, length in extents) > limit:
        raise _Unreadable("a directory or file is implausibly large")
    return b"".join(_read_at(fd, offset, length) for offset, length in extents)


def _udf_descriptor(data, identifier, location=None):
    """DATA when it holds a UDF descriptor IDENTIFIER (recorded for LOCATION, when given), its
    tag checksum right (ECMA-167 3/7.2), else _Unreadable."""
    tag, _, checksum = struct.unpack_from("<HHB", data)
    if (tag != identifier or (sum(data[:4]) + sum(data[5:16])) & 0xFF != checksum
            or location is not None and struct.unpack_from("<I", data, 12)[0] != location):
        where = f" at block {location}" if location is not None else ""
        raise _Unreadable(f"no valid descriptor {identifier}{where}")
    return data


def _udf_files(fd):
    """{name: [(byte offset, length)]} of the root directory through UDF, from the first anchor,
    volume descriptor sequence (main, then reserve) and file set that read."""
    last_sector = os.lseek(fd, 0, os.SEEK_END) // SECTOR_SIZE - 1
    reasons = []
    for anchor in (UDF_ANCHOR_SECTOR, last_sector):
        try:
            data = _udf_descriptor(_sector(fd, anchor), UDF_ANCHOR, anchor)
        except _Unreadable as exc:
            reasons.append(f"anchor: {exc}")
            continue
        # The main volume descriptor sequence's extent (length, location) at 16, the reserve's at 24.
        for length, location in (struct.unpack_from("<II", data, 16), struct.unpack_from("<II", data, 24)):
            try:
                return _udf_root(fd, location, length // SECTOR_SIZE)
            except _Unreadable as exc:
                reasons.append(str(exc))
    raise _Unreadable("; ".join(dict.fromkeys(reasons)))


def _udf_root(fd, sequence_start, sequence_sectors):
    """The root directory's files through the volume descriptor sequence at SEQUENCE_START. Field
    offsets are ECMA-167's (part 3/10, 4/14); a block number in a long_ad is 4 bytes after its
    start."""
    partition_start = file_set = None
    for number in range(sequence_start, sequence_start + min(sequence_sectors, UDF_MAX_SEQUENCE)):
        data = _sector(fd, number)
        tag = struct.unpack_from("<H", data)[0]
        if tag == UDF_TERMINATOR:
            break
        if tag == UDF_PARTITION:   # partition starting location
            partition_start = struct.unpack_from("<I", _udf_descriptor(data, tag, number), 188)[0]
        elif tag == UDF_LOGICAL_VOLUME:   # logical block size; the file set's long_ad at 248
            data = _udf_descriptor(data, tag, number)
            if struct.unpack_from("<I", data, 212)[0] != SECTOR_SIZE:
                raise _Unreadable("the logical block size is not 2048")
            file_set = struct.unpack_from("<I", data, 252)[0]
    if partition_start is None or file_set is None:
        raise _Unreadable("no partition or logical volume descriptor")
    data = _udf_descriptor(_sector(fd, partition_start + file_set), UDF_FILE_SET, file_set)
    root = struct.unpack_from("<I", data, 404)[0]   # the root directory's ICB, a long_ad at 400
    directory = _read_extents(fd, _udf_file(fd, partition_start, root), MAX_DIRECTORY)
    files = {}
    position = 0
    while position + 38 <= len(directory):   # file identifier descriptors, 38 bytes and the name
        _udf_descriptor(directory[position:position + 16], UDF_FILE_IDENTIFIER)
        characteristics, name_length = directory[position + 18], directory[position + 19]
        entry = struct.unpack_from("<I", directory, position + 24)[0]
        use_length = struct.unpack_from("<H", directory, position + 36)[0]
        name = directory[position + 38 + use_length:position + 38 + use_length + name_length]
        if not characteristics & 0x0E and name:   # not a directory, deleted or the parent
            files[_udf_name(name)] = _udf_file(fd, partition_start, entry)
        position += (38 + use_length + name_length + 3) // 4 * 4
    return files


def _udf_name(identifier):
    """A file identifier: compression id 8 (one byte a character) or 16 (UTF-16BE)."""
    if identifier[0] == 16:
        return identifier[1:].decode("utf-16-be", "replace")
    return identifier[1:].decode("latin-1")


def _udf_file(fd, partition_start, block):
    """[(byte offset, length)] of the file whose (extended) file entry is at BLOCK."""
    data = _sector(fd, partition_start + block)
    tag = struct.unpack_from("<H", data)[0]
    if tag not in (UDF_FILE_ENTRY, UDF_EXTENDED_FILE_ENTRY):
        raise _Unreadable(f"no file entry at block {block}")
    _udf_descriptor(data, tag, block)
    # The information length at 56; the lengths of the extended attributes and of the allocation
    # descriptors after them at 168 (208 in an extended file entry); the ICB tag's flags at 34,
    # whose low 3 bits give the kind of allocation descriptor.
    length = struct.unpack_from("<Q", data, 56)[0]
    attributes_at = 168 if tag == UDF_FILE_ENTRY else 208
    attributes_length, descriptors_length = struct.unpack_from("<II", data, attributes_at)
    start = attributes_at + 8 + attributes_length
    descriptors = data[start:start + descriptors_length]
    kind = struct.unpack_from("<H", data, 34)[0] & 7
    if kind == 3:   # the data is in the entry itself
        return [((partition_start + block) * SECTOR_SIZE + start, length)]
    if kind not in (0, 1):
        raise _Unreadable(f"the file entry at block {block} has extended allocation descriptors")
    size = 8 if kind == 0 else 16   # short_ad or long_ad: length, then block
    extents = []
    for at in range(0, len(descriptors) - size + 1, size):
        extent_length, position = struct.unpack_from("<II", descriptors, at)
        if extent_length & 0x3FFFFFFF and extent_length >> 30 == 0:   # recorded and allocated
            extents.append(((partition_start + position) * SECTOR_SIZE, extent_length & 0x3FFFFFFF))
    if sum(extent_length for _, extent_length in extents) != length:
        raise _Unreadable(f"the extents of the file at block {block} do not add up to its length")
    return extents


def _iso9660_files(fd, joliet):
    """{name: [(byte offset, length)]} of the root directory through the primary volume
    descriptor (names from Rock Ridge) or the Joliet one; a damaged descriptor before it in the
    set is skipped."""
    for number in range(ISO_FIRST_DESCRIPTOR, ISO_FIRST_DESCRIPTOR + ISO_MAX_DESCRIPTORS):
        data = _sector(fd, number)
        if data[1:6] != b"CD001":
            continue
        if data[0] == 255:
            break
        if (data[0], data[88:91] in JOLIET_ESCAPES) == ((2, True) if joliet else (1, False)):
            # The root directory record (at 156): extent at +2, length at +10, both little-endian.
            location, length = struct.unpack_from("<I", data, 158)[0], struct.unpack_from("<I", data, 166)[0]
            directory = _read_extents(fd, [(location * SECTOR_SIZE, length)], MAX_DIRECTORY)
            return _iso9660_directory(directory, joliet)
    raise _Unreadable(f"no {'Joliet' if joliet else 'primary'} volume descriptor")


def _iso9660_directory(directory, joliet):
    files = {}
    position = 0
    while position < len(directory):
        record_length = directory[position]
        if record_length == 0:   # records do not cross sectors: the rest of this one is padding
            position = (position // SECTOR_SIZE + 1) * SECTOR_SIZE
            continue
        record = directory[position:position + record_length]
        position += record_length
        if len(record) < 34 or record[32] + 33 > len(record):
            raise _Unreadable("a damaged directory record")
        flags, name_length = record[25], record[32]
        identifier = record[33:33 + name_length]
        if flags & 0x02 or identifier in (b"\x00", b"\x01"):   # a directory, itself or its parent
            continue
        if joliet:
            name = identifier.decode("utf-16-be", "replace")
        else:
            system_use = record[33 + name_length + (1 - name_length % 2):]   # after a padding byte
            name = _rock_ridge_name(system_use) or identifier.decode("ascii", "replace")
        name = name.rsplit(";", 1)[0]
        # A file over 4 GiB is several records of one name (multi-extent), one after the other.
        files.setdefault(name, []).append(
            (struct.unpack_from("<I", record, 2)[0] * SECTOR_SIZE, struct.unpack_from("<I", record, 10)[0]))
    return files


def _rock_ridge_name(system_use):
    """The name in the Rock Ridge NM entries of a record's system use area, or None."""
    name = b""
    position = 0
    while position + 4 <= len(system_use):
        signature, length = system_use[position:position + 2], system_use[position + 2]
        if length < 4:
            break
        if signature == b"NM":
            name += system_use[position + 5:position + length]
        position += length
    return name.decode("utf-8", "replace") if name else None


# The file systems of a disc, in the order they are tried: UDF first (burn-iso's own choice),
# then the ISO 9660 trees that any disc reader falls back to, as 7z and the kernel do.
FILE_SYSTEMS = (("UDF", _udf_files),
                ("ISO 9660", lambda fd: _iso9660_files(fd, joliet=False)),
                ("Joliet", lambda fd: _iso9660_files(fd, joliet=True)))


def _joined(extents):
    """EXTENTS with each run of adjacent ones made one: the same bytes, however a file system cuts
    them (UDF in 1 GiB pieces, ISO 9660 in 4 GiB ones)."""
    joined = []
    for offset, length in extents:
        if joined and sum(joined[-1]) == offset:
            joined[-1] = (joined[-1][0], joined[-1][1] + length)
        else:
            joined.append((offset, length))
    return joined


class Disc:
    """An ISO image file or an optical drive's medium holding one volume, read without mounting
    through the first of its file systems (UDF, ISO 9660 with Rock Ridge, Joliet) that gives the
    volume and its manifest: damage to one leaves the others.

    disc.volume_name, disc.volume_length, disc.extents, disc.manifest (parsed),
    disc.manifest_bytes and disc.readme_text; disc.file_system names the file system read,
    disc.damage what is wrong with the others. open_volume() gives the volume as a file object
    reading straight from the image with pread.
    """

    def __init__(self, path):
        self.path = path
        try:
            self._file = open(device_path(path), "rb", buffering=0)
        except OSError as exc:
            raise Error(f"cannot read {path}: {exc.strerror}") from None
        try:
            self._read_directory()
        except BaseException:
            self._file.close()
            raise

    def _read_directory(self):
        fd = self._file.fileno()
        self.file_system = None
        self.damage = []
        for name, read_files in FILE_SYSTEMS:
            try:
                found = self._volume_of(read_files(fd))
            except (_Unreadable, Error) as exc:
                self.damage.append(f"{name}: {exc}")
                continue
            if self.file_system is None:
                self.file_system = name
                (self.volume_name, self.extents, self.manifest_bytes, self.manifest,
                 self.readme_text) = found
            elif (found[0], _joined(found[1]), found[2]) != (self.volume_name, _joined(self.extents),
                                                              self.manifest_bytes):
                self.damage.append(f"{name}: gives another volume than {self.file_system}")
        if self.file_system is None:
            raise Error(f"{self.path} is not a readable ISO image (no file system on it gives a "
                        f"volume: {'; '.join(self.damage)}); is it a disc made by burn-iso?")
        self.volume_length = self.manifest.length

    def _volume_of(self, files):
        """(volume name, extents, manifest bytes, manifest, README text) of a root directory."""
        manifest_names = [name for name in files if name.endswith(manifests.SUFFIX)]
        if len(manifest_names) != 1 or manifests.volume_path(manifest_names[0]) not in files:
            raise Error(f"it does not hold exactly one volume with its manifest "
                        f"(found: {', '.join(sorted(files)) or 'nothing'})")
        volume_name = manifests.volume_path(manifest_names[0])
        extents = files[volume_name]
        fd = self._file.fileno()
        try:
            manifest_bytes = _read_extents(fd, files[manifest_names[0]], MAX_SMALL_MEMBER)
            readme = _read_extents(fd, files[README_NAME], MAX_SMALL_MEMBER) if README_NAME in files else None
        except _Unreadable as exc:
            raise Error(str(exc)) from None
        manifest = manifests.parse(manifest_bytes, f"{self.path}: {manifest_names[0]}")
        volume_length = sum(length for _, length in extents)
        if manifest.length != volume_length:
            raise Error(f"{volume_name} is {volume_length} bytes, its manifest says {manifest.length}")
        return (volume_name, extents, manifest_bytes, manifest,
                readme.decode("utf-8", "replace") if readme is not None else None)

    def open_volume(self):
        return ExtentReader(self._file.fileno(), self.extents, self.path)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class DiscVolume:
    """A volume inside an ISO image or on a disc, with the interface of finder.VolumeFile
    (manifest, manifest_path, path, open_checked()), so that reassemble reads it like a file."""

    manifest: manifests.Manifest    # or a ParityManifest
    image: str
    volume_name: str
    start: int          # the volume's bytes are contiguous in the images burn-iso writes

    @property
    def path(self):
        return f"{self.image}:{self.volume_name}"

    @property
    def label(self):
        return self.manifest.key.describe_at(self.path)

    def open_file(self):
        """The volume as a file object (seek, readinto), checked as open_checked() does."""
        return ExtentReader(self.open_checked(), [(self.start, self.manifest.length)], self.path,
                            owns_fd=True)

    @property
    def manifest_path(self):
        return self.path + manifests.SUFFIX

    def open_checked(self):
        """A descriptor positioned at the volume's first byte, after checking that the image is
        long enough to hold it."""
        try:
            fd = os.open(device_path(self.image), os.O_RDONLY)
        except OSError as exc:
            raise Error(f"cannot read {self.image}: {exc.strerror}") from None
        end = self.start + self.manifest.length
        if os.lseek(fd, 0, os.SEEK_END) < end:
            os.close(fd)
            raise Error(f"{self.label} is truncated: the image ends before "
                        f"byte {end}; copy the image again from the original")
        os.lseek(fd, self.start, os.SEEK_SET)
        return fd


def disc_volume(path):
    """The DiscVolume of the ISO image or disc at PATH."""
    with Disc(path) as disc:
        extents = _joined(disc.extents)
        if len(extents) > 1:
            raise Error(f"{path}: the volume {disc.volume_name} is stored in pieces; extract it "
                        "(xorriso -osirrox on -indev IMAGE -extract / DIR) and give the directory")
        return DiscVolume(disc.manifest, path, disc.volume_name, extents[0][0] if extents else 0)


class ExtentReader(io.RawIOBase):
    """A read-only file made of byte ranges [(offset, length)] of an open descriptor."""

    def __init__(self, fd, extents, name, owns_fd=False):
        super().__init__()
        self.fd = fd
        self.owns_fd = owns_fd      # close() closes fd
        self.extents = extents
        self.name = name
        self.position = 0
        self.length = sum(length for _, length in extents)

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        self.position = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence] + offset
        return self.position

    def tell(self):
        return self.position

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self.position < self.length:
            offset, available = self._locate(self.position)
            count = min(available, len(view) - filled)
            try:
                got = os.preadv(self.fd, [view[filled:filled + count]], offset)
            except OSError as exc:
                raise Error(f"read error on {self.name} at byte {offset} "
                            f"(volume offset {self.position}): {exc.strerror}") from None
            if got == 0:
                raise Error(f"{self.name} ends at byte {offset}, inside the volume: "
                            "the image or disc is truncated")
            filled += got
            self.position += got
        return filled

    def close(self):
        if self.owns_fd and not self.closed:
            os.close(self.fd)
        super().close()

    def _locate(self, position):
        """(byte offset in the image, bytes left in that extent) of a volume position."""
        for offset, length in self.extents:
            if position < length:
                return offset + position, length - position
            position -= length
        raise AssertionError("position beyond the volume")


def check_file_systems(disc):
    """errors.Error unless every file system of DISC gives its volume."""
    if disc.damage:
        raise Error(f"{disc.path}: a file system of the disc is damaged ({'; '.join(disc.damage)}); "
                    f"its volume reads through {disc.file_system}, other readers may fail")


def verify(disc, progress=None):
    """Check the volume on DISC against the hashes of its manifest, chunk by chunk; errors.Error
    naming the first bad chunk's offset. A file system of the disc that does not give the volume
    fails the check too: burn-iso promises a disc that every reader can read."""
    check_file_systems(disc)
    manifest = disc.manifest
    reader = disc.open_volume()
    view = memoryview(bytearray(manifest.chunk_size))
    volume_hash = manifests.new_hash()
    for number in range(manifest.chunks):
        start = number * manifest.chunk_size
        want = min(manifest.chunk_size, manifest.length - start)
        if read_chunk(reader, number, manifest.chunk_size, view[:want], hashes=(volume_hash,)) \
                != manifest.chunk_digest(number):
            raise Error(f"{disc.path}: {disc.volume_name} is corrupt at offset {start}: the "
                        f"{want}-byte chunk there does not match its manifest")
        if progress:
            progress.advance(want)
    if volume_hash.digest() != manifest.volume_digest:
        raise Error(f"{disc.path}: {disc.volume_name} does not match its manifest's volume hash")


def is_image(path):
    """Whether PATH looks like an ISO image: an ISO 9660 volume descriptor 'CD001' at sector 16
    or 17 (primary or Joliet), or a UDF anchor at sector 256, so that one damaged descriptor
    does not hide a readable disc."""
    try:
        fd = os.open(device_path(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        descriptors = (ISO_FIRST_DESCRIPTOR, ISO_FIRST_DESCRIPTOR + 1)
        if any(_sector(fd, number)[1:6] == b"CD001" for number in descriptors):
            return True
        _udf_descriptor(_sector(fd, UDF_ANCHOR_SECTOR), UDF_ANCHOR, UDF_ANCHOR_SECTOR)
        return True
    except _Unreadable:
        return False
    finally:
        os.close(fd)

"""ISO images of volumes: packaging a volume with its manifest and README.TXT, sizing, reading back.

An image holds three files at its root: the volume, its manifest and README.TXT, under ISO 9660
level 3 (files over 4 GiB as multi-extent records), Rock Ridge, Joliet and UDF, so that Linux,
Windows and macOS read the disc without mirrorpipe.

pycdlib lays the image out. The volume's bytes do not pass through Python: pycdlib is handed a
placeholder of zeros, which the writer turns into a hole, and the volume is then copied into its
extent with copy_file_range (only the data segments of a sparse volume). Reading back goes
through the UDF allocation descriptors with pread, so neither direction holds more than one
buffer of the volume in memory.
"""

import errno
import io
import os
import re
from dataclasses import dataclass

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from . import discreadme, manifests, streams, volumes
from .errors import Error

SECTOR_SIZE = 2048
README_NAME = "README.TXT"
IMAGE_SUFFIX = volumes.IMAGE_SUFFIX

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


def disc_labels(set_name, index, parity_group=None):
    """Volume labels for disc INDEX of SET_NAME, within each file system's limits:
    'PC1_2026_11_25_003' (ISO 9660), 'PC1_2026_11_003' (Joliet), 'pc1-2026-11-25 disc 3' (UDF);
    for parity disc INDEX of group PARITY_GROUP: 'PC1_2026_11_25_P001_2', 'pc1-2026-11-25 parity
    1-2'."""
    number = f"{index:03d}" if parity_group is None else f"P{parity_group:03d}_{index}"
    title = f"disc {index}" if parity_group is None else f"parity {parity_group}-{index}"
    upper = _NOT_D_CHARACTERS.sub("_", set_name.upper())
    return Labels(
        iso9660=f"{upper[:ISO_LABEL_LENGTH - 1 - len(number)].rstrip('_')}_{number}",
        joliet=f"{upper[:JOLIET_LABEL_LENGTH - 1 - len(number)].rstrip('_')}_{number}",
        udf=f"{set_name[:UDF_LABEL_LENGTH - 1 - len(title)]} {title}")


def labels_for(manifest):
    if isinstance(manifest, manifests.ParityManifest):
        return disc_labels(manifest.set_name, manifest.parity_index, manifest.group)
    return disc_labels(manifest.set_name, manifest.index)


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
    image = pycdlib.PyCdlib()
    # pycdlib.new() takes one identifier for every file system, and Joliet's holds 16 characters;
    # ISO 9660 and UDF get their longer labels below.
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
                     (README_NAME, readme_length, _Zeros())], disc_labels("size", 1))
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
                       labels_for(manifest), progress)


def stream_compressed(volume_path, manifest):
    """Whether the set's stream is zstd, from the first bytes of volume 1 when it is this volume
    or lies beside it; None when it is not at hand."""
    first = volume_path
    if not is_first_volume(manifest):
        prefix = volume_path.rpartition(".")[0]
        first = f"{prefix}.{volumes.volume_suffix(1)}"
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


def is_first_volume(manifest):
    return isinstance(manifest, manifests.Manifest) and manifest.index == 1


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
        if is_first_volume(manifest):
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


def device_path(device):
    """The file behind a drive name: xorriso's 'stdio:PATH' pseudo-drive is PATH."""
    return device[len("stdio:"):] if device.startswith("stdio:") else device


class Disc:
    """An ISO image file or an optical drive's medium holding one volume, read through UDF.

    disc.volume_name, disc.volume_length, disc.manifest (parsed), disc.manifest_bytes and
    disc.readme_text; open_volume() gives the volume as a file object reading straight from the
    image with pread. (ISO 9660's multi-extent records would do as well; pycdlib's Rock Ridge
    reader would not: it truncates files over 4 GiB.)
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
        self._image = pycdlib.PyCdlib()
        try:
            self._image.open_fp(self._file)
        except OSError as exc:
            raise Error(f"cannot read {self.path}: {exc.strerror}") from None
        except Exception as exc:  # noqa: BLE001 - on a damaged image pycdlib fails in many ways
            reason = str(exc) if isinstance(exc, PyCdlibException) else "damaged or truncated"
            raise Error(f"{self.path} is not a readable ISO image ({reason}); "
                        "is it a disc made by burn-iso?") from None
        if not self._image.has_udf():
            raise Error(f"{self.path} has no UDF file system; is it a disc made by burn-iso?")
        entries = {}
        for entry in self._image.list_children(udf_path="/"):
            if entry is not None and entry.is_file():
                entries[entry.file_identifier().decode("utf-8", "replace")] = entry
        manifest_names = [name for name in entries if name.endswith(manifests.SUFFIX)]
        if len(manifest_names) != 1 or manifests.volume_path(manifest_names[0]) not in entries:
            raise Error(f"{self.path} does not hold exactly one volume with its manifest "
                        f"(found: {', '.join(sorted(entries)) or 'nothing'})")
        self.volume_name = manifests.volume_path(manifest_names[0])
        volume = entries[self.volume_name]
        self.volume_length = volume.get_data_length()
        partition_start = self._image.udf_main_descs.partitions[0].part_start_location
        self.extents = [((partition_start + descriptor.log_block_num) * SECTOR_SIZE, descriptor.extent_length)
                        for descriptor in volume.alloc_descs]
        if sum(length for _, length in self.extents) != self.volume_length:
            raise Error(f"{self.path}: the UDF extents of {self.volume_name} do not add up to its length")
        self.manifest_bytes = self._small_member(manifest_names[0], entries[manifest_names[0]])
        self.manifest = manifests.parse(self.manifest_bytes, f"{self.path}: {manifest_names[0]}")
        if self.manifest.length != self.volume_length:
            raise Error(f"{self.path}: {self.volume_name} is {self.volume_length} bytes, its manifest "
                        f"says {self.manifest.length}")
        self.readme_text = (self._small_member(README_NAME, entries[README_NAME]).decode("utf-8", "replace")
                            if README_NAME in entries else None)

    def _small_member(self, name, entry):
        if entry.get_data_length() > MAX_SMALL_MEMBER:
            raise Error(f"{self.path}: {name} is implausibly large ({entry.get_data_length()} bytes)")
        data = io.BytesIO()
        self._image.get_file_from_iso_fp(data, udf_path="/" + name)
        return data.getvalue()

    def open_volume(self):
        return ExtentReader(self._file.fileno(), self.extents, self.path)

    def close(self):
        self._image.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class DiscVolume:
    """A volume inside an ISO image or on a disc, with the interface of volumes.VolumeFile
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
        return volumes.describe_volume(self.manifest, self.path)

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
        extents = disc.extents
        contiguous = all(offset + length == next_offset
                         for (offset, length), (next_offset, _) in zip(extents, extents[1:]))
        if not contiguous:
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


def verify(disc, progress=None):
    """Check the volume on DISC against the hashes of its manifest, chunk by chunk; errors.Error
    naming the first bad chunk's offset."""
    manifest = disc.manifest
    reader = disc.open_volume()
    buffer = bytearray(manifest.chunk_size)
    view = memoryview(buffer)
    volume_hash = manifests.new_hash()
    for number in range(manifest.chunks):
        start = number * manifest.chunk_size
        want = min(manifest.chunk_size, manifest.length - start)
        got = reader.readinto(view[:want])
        chunk_hash = manifests.new_hash()
        chunk_hash.update(view[:got])
        if got != want or chunk_hash.digest() != manifest.chunk_digest(number):
            raise Error(f"{disc.path}: {disc.volume_name} is corrupt at offset {start}: the "
                        f"{want}-byte chunk there does not match its manifest")
        volume_hash.update(view[:got])
        if progress:
            progress.advance(got)
    if volume_hash.digest() != manifest.volume_digest:
        raise Error(f"{disc.path}: {disc.volume_name} does not match its manifest's volume hash")


def is_image(path):
    """Whether PATH starts like an ISO 9660 image: a volume descriptor 'CD001' at sector 16."""
    try:
        with open(device_path(path), "rb") as stream:
            stream.seek(16 * SECTOR_SIZE + 1)
            return stream.read(5) == b"CD001"
    except OSError:
        return False

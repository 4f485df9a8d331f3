"""Disc media presets and how large a volume may be so that its ISO image, burned, fits the disc
(iso.fits: the one rule of what a burned image takes, used by burning too).

Capacities are what a blank disc really holds in 2048-byte sectors (DESIGN.md), not the marketed
size: the smallest common disc of each kind, Blu-ray with the spare area drives format by default.
"""

import math
from dataclasses import dataclass

from ..sets import manifests
from .iso import BURNER_PADDING, SECTOR_SIZE, WRITE_UNIT_SECTORS, largest_image


@dataclass(frozen=True)
class Preset:
    name: str          # the flag without dashes, also recorded in manifests: 'dvd', 'bd25'
    media: str
    sectors: int

    @property
    def capacity(self):
        return self.sectors * SECTOR_SIZE


PRESETS = {preset.name: preset for preset in (
    Preset("cd650", "CD-R 74 min", 333_000),
    Preset("cd700", "CD-R 80 min", 359_424),
    Preset("dvd", "DVD±R single layer", 2_295_104),
    Preset("dvd-dl", "DVD±R dual layer", 4_171_712),
    Preset("bd25", "BD-R single layer", 11_826_176),
    Preset("bd50", "BD-R dual layer", 23_652_352),
    Preset("bd100", "BD-R XL triple layer", 47_305_728),
    Preset("bd128", "BD-R XL quad layer", 60_403_712),
)}

# What an ISO image adds to the volume file, generously (the ISO packaging tests check the fit):
# ISO 9660 system area (16 sectors), primary/Joliet/terminator descriptors, UDF recognition
# sequence, anchors at sector 256 and at the end, main and reserve descriptor sequences, path
# tables, the root directories of all three trees and the file entries of three files come to
# about 300 sectors in pycdlib's layout; 2 MiB is more than three times that.
FILE_SYSTEM_RESERVE = 2 << 20
# A file over 4 GiB is stored as extents of at most 4 GiB - 1 sector, each with its own directory
# record (with Rock Ridge entries) in the ISO 9660 and Joliet trees and UDF allocation descriptors
# of at most 1 GiB: one sector per extent covers all of it.
ISO_EXTENT_SIZE = (4 << 30) - SECTOR_SIZE
EXTENT_RESERVE = SECTOR_SIZE
README_RESERVE = 64 << 10


def _sectors(size):
    return math.ceil(size / SECTOR_SIZE) * SECTOR_SIZE


def iso_reserve(capacity, chunk_size=manifests.DEFAULT_CHUNK_SIZE):
    """Bytes of a disc of `capacity` bytes kept free for the ISO packaging of its volume.

    The manifest grows with the chunk count; the count of a volume as large as the whole disc is
    an upper bound for the real (smaller) volume."""
    chunks = manifests.chunk_count(capacity, chunk_size)
    extents = math.ceil(capacity / ISO_EXTENT_SIZE)
    return FILE_SYSTEM_RESERVE + extents * EXTENT_RESERVE + _sectors(largest_manifest(chunks)) + README_RESERVE


# The largest manifest grows by one hex digest per chunk, a fixed number of bytes: two samples
# give its size for any chunk count, without building one of millions of digests (split-span
# --help tables 1.9 million chunks for --bd128 with 64K chunks: 9 s that way, 0.1 s this way).
_MANIFEST_PER_CHUNK = manifests.largest_size(2) - manifests.largest_size(1)
_MANIFEST_BASE = manifests.largest_size(1) - _MANIFEST_PER_CHUNK


def largest_manifest(chunks):
    """manifests.largest_size(chunks), in constant time."""
    return _MANIFEST_BASE + _MANIFEST_PER_CHUNK * chunks


# The chunk sizes split-span's --help and man page give the preset volume sizes for.
TABLED_CHUNK_SIZES = (64 << 10, 1 << 20, 4 << 20, manifests.DEFAULT_CHUNK_SIZE, manifests.MAX_CHUNK_SIZE)

# iso_reserve and volume_size_for in words, for split-span's --help (its man page says the same).
RESERVE_RULE = (
    "A preset's volume is the largest whose ISO image, burned, fits the disc: the disc's sectors\n"
    f"rounded down to {WRITE_UNIT_SECTORS} (the burner's write unit) x 2048, less the {BURNER_PADDING:,} "
    "bytes a burner pads a\n"
    "track with, less a reserve for the ISO image, rounded down to 2048 bytes. The reserve is\n"
    f"{FILE_SYSTEM_RESERVE + README_RESERVE:,} bytes (file systems, README.TXT), plus {EXTENT_RESERVE:,} "
    f"per started {ISO_EXTENT_SIZE:,} bytes of the\n"
    f"disc, plus the largest manifest of a volume as large as the disc ({_MANIFEST_BASE:,} bytes + "
    f"{_MANIFEST_PER_CHUNK} per\n"
    "chunk, rounded up to 2048): the smaller the chunks, the smaller the volumes. A volume holds\n"
    f"at most {manifests.MAX_CHUNKS:,} chunks: a dash below marks a chunk size too small for the disc.")


def presets_help():
    """The presets, the rule of their volume sizes and the sizes it gives, as split-span's --help
    says them (its man page says the same)."""
    capacities = "\n".join(f"  --{p.name:<7} {p.media:<22} {p.sectors:>11,} sectors"
                           for p in PRESETS.values())
    header = f"  {'':<9}" + "".join(f"{size_label(size):>16}" for size in TABLED_CHUNK_SIZES)
    rows = "\n".join(f"  --{p.name:<7}" + "".join(f"{tabled_volume_size(p, size):>16}"
                                                 for size in TABLED_CHUNK_SIZES)
                     for p in PRESETS.values())
    return (f"media presets:\n{capacities}\n\n{RESERVE_RULE}\n\n"
            f"volume bytes by --chunk-size (default {manifests.DEFAULT_CHUNK_SIZE >> 20}M):\n"
            f"{header}\n{rows}")


def size_label(size):
    """A tabled chunk size as --chunk-size takes it: '64K', '16M'."""
    return f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"


def volume_size_for(preset, chunk_size=manifests.DEFAULT_CHUNK_SIZE):
    """The largest volume, in whole sectors, whose ISO image, burned, still fits a disc of the
    preset."""
    usable = largest_image(preset.sectors) - iso_reserve(preset.capacity, chunk_size)
    return usable // SECTOR_SIZE * SECTOR_SIZE


def tabled_volume_size(preset, chunk_size):
    """volume_size_for as split-span's --help and man page table it: '4,697,851,904', or '-' when
    such a volume would need more chunks than a manifest may hold."""
    size = volume_size_for(preset, chunk_size)
    return f"{size:,}" if manifests.chunk_count(size, chunk_size) <= manifests.MAX_CHUNKS else "-"

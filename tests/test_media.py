"""Media presets: the capacities of DESIGN.md and volume sizes that leave room for the ISO image."""

import pytest

from mirrorpipe import manifests, media

DESIGN_CAPACITIES = {   # flag: (sectors, bytes), the table of DESIGN.md
    "cd650": (333_000, 681_984_000),
    "cd700": (359_424, 736_100_352),
    "dvd": (2_295_104, 4_700_372_992),
    "dvd-dl": (4_171_712, 8_543_666_176),
    "bd25": (11_826_176, 24_220_008_448),
    "bd50": (23_652_352, 48_440_016_896),
    "bd100": (47_305_728, 96_882_130_944),
    "bd128": (60_403_712, 123_706_802_176),
}


def test_presets_are_the_design_table():
    assert {name: (p.sectors, p.capacity) for name, p in media.PRESETS.items()} == DESIGN_CAPACITIES


@pytest.mark.parametrize("name", DESIGN_CAPACITIES)
def test_volume_leaves_room_for_its_iso_packaging(name):
    preset = media.PRESETS[name]
    volume = media.volume_size_for(preset)
    assert volume % media.SECTOR_SIZE == 0
    reserve = preset.capacity - volume
    # Room for the file systems, the largest manifest this volume can have, README and padding.
    chunks = manifests.chunk_count(volume, manifests.DEFAULT_CHUNK_SIZE)
    assert reserve >= (media.FILE_SYSTEM_RESERVE + manifests.largest_size(chunks)
                       + media.README_RESERVE + media.BURNER_PADDING)
    # ... but not wasteful: under 0.5% of any disc from DVD up (and of CDs).
    assert reserve < preset.capacity * 0.005


def test_the_reserve_grows_with_the_chunk_count():
    bd128 = media.PRESETS["bd128"]
    small_chunks = media.volume_size_for(bd128, chunk_size=4 << 20)
    large_chunks = media.volume_size_for(bd128, chunk_size=64 << 20)
    assert small_chunks < large_chunks
    # 4 MiB chunks on a BD-XL: ~29,500 chunk hashes, about a megabyte of manifest.
    assert large_chunks - small_chunks >= manifests.largest_size(29_000) - manifests.largest_size(2000) - 4096


def test_multi_extent_files_get_room_for_their_extents():
    dvd_dl = media.PRESETS["dvd-dl"]
    assert media.iso_reserve(dvd_dl.capacity) - media.iso_reserve(4 << 30) >= media.EXTENT_RESERVE

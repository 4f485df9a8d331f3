"""Media presets: the capacities of DESIGN.md and volume sizes that leave room for the ISO image."""

import json
import math
import random
import re

import pytest

from conftest import REPO, sh
from mirrorpipe.disc import iso, media
from mirrorpipe.sets import manifests

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
    image = volume + media.FILE_SYSTEM_RESERVE + manifests.largest_size(chunks) + media.README_RESERVE
    assert iso.fits(image, preset.sectors)
    assert reserve >= image - volume + iso.BURNER_PADDING
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


def split_span_help():
    return sh("split-span --help", check=True).stdout.decode()


def test_the_rule_split_span_states_gives_every_preset_volume_size():
    """The reserve rule in --help and the man page, with its numbers as stated, gives exactly the
    volume size of every preset for any chunk size."""
    words = re.sub(r"\s+", " ", split_span_help())
    rule = re.search(r"the disc's sectors rounded down to (\d+) \(the burner's write unit\) x 2048, less the "
                     r"([\d,]+) bytes a burner pads a track with, less a reserve for the ISO image, rounded down "
                     r"to 2048 bytes. The reserve is ([\d,]+) bytes .*?, plus ([\d,]+) per started ([\d,]+) bytes "
                     r"of the disc, plus the largest manifest of a volume as large as the disc \(([\d,]+) bytes "
                     r"\+ (\d+) per chunk, rounded up to 2048\)", words)
    assert rule, words
    unit, padding, fixed, per_extent, extent, base, per_chunk = (int(n.replace(",", "")) for n in rule.groups())
    page = re.sub(r"\s+", " ", (REPO / "man" / "split-span.1").read_text())
    assert (f"the disc's sectors rounded down to {unit} (the burner's write unit) \\(mu 2048, less the "
            f"{padding:,} bytes a burner pads a track with, less the reserve for the ISO image, rounded down "
            f"to 2048 bytes. The reserve is {fixed:,} bytes (file systems, README.TXT), plus {per_extent:,} "
            f"per started {extent:,} bytes of the disc, plus the largest manifest of a volume as large as "
            f"the disc: {base:,} bytes and {per_chunk} per chunk, rounded up to 2048.") in page
    for chunks in (1, 2, 3, 1000, 1_900_000):   # the stated manifest size is the real one
        assert manifests.largest_size(chunks) == base + per_chunk * chunks
    rng = random.Random(5)
    chunk_sizes = [1 << bits for bits in range(16, 27)] + [rng.randrange(64 << 10, 64 << 20) for _ in range(20)]
    for preset in media.PRESETS.values():
        for chunk_size in chunk_sizes:
            capacity = preset.sectors * 2048
            burnable = preset.sectors // unit * unit * 2048 - padding
            manifest = base + per_chunk * math.ceil(capacity / chunk_size)
            reserve = fixed + per_extent * math.ceil(capacity / extent) + math.ceil(manifest / 2048) * 2048
            assert (burnable - reserve) // 2048 * 2048 == media.volume_size_for(preset, chunk_size), \
                (preset.name, chunk_size)


def test_help_and_man_page_table_every_preset_volume_size_split_span_writes(tmp_path):
    help_rows = {line.split()[0]: line.split()[1:] for line in split_span_help().splitlines()
                 if re.match(r"^  --[a-z0-9-]+ +[\d,-]+ ", line)}
    page = (REPO / "man" / "split-span.1").read_text()
    for preset in media.PRESETS.values():
        man_row = re.search(rf"^\.It Fl \\-{preset.name}((?: Ta [\d,-]+)+)$", page, re.M)
        assert man_row, preset.name
        man_cells = man_row.group(1).split(" Ta ")[1:]
        assert len(man_cells) == len(help_rows[f"--{preset.name}"]) == len(media.TABLED_CHUNK_SIZES)
        for column, chunk_size in enumerate(media.TABLED_CHUNK_SIZES):
            out = tmp_path / f"{preset.name}-{chunk_size}"
            result = sh(f"printf x | split-span --{preset.name} --chunk-size {chunk_size} {out}")
            if result.returncode == 0:
                stated = f'{json.loads((out / "image.001.manifest").read_text())["volume_size"]:,}'
            else:
                assert "more than 100000 chunks" in result.stderr_text, result.stderr_text
                stated = "-"
            assert help_rows[f"--{preset.name}"][column] == stated, (preset.name, chunk_size)
            assert man_cells[column] == stated, (preset.name, chunk_size)


def test_split_span_help_names_each_environment_variable_once():
    names = re.findall(r"MIRRORPIPE_[A-Z_]+", split_span_help())
    assert sorted(names) == sorted(set(names)) and len(names) == 7, names

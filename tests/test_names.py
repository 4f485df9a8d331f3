"""Names of a set's files and a volume's identity (sets/names.py): suffixes that widen in tiers and
sort in stream order, the shell patterns of the stock restore, VolumeKey."""

import fnmatch

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import KIB
from mirrorpipe.sets import manifests, names


def test_volume_numbers_widen_like_gnu_split():
    assert [names.volume_suffix(i) for i in (1, 9, 899, 900, 9899, 9900)] == \
        ["001", "009", "899", "90000", "98999", "9900000"]
    assert names.suffix_index("000") is None and names.suffix_index("0001") is None
    assert names.suffix_index("manifest") is None and names.suffix_index("9001") is None


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10 ** 8), st.integers(1, 10 ** 8))
def test_property_names_sort_in_stream_order_and_read_back(a, b):
    assert names.suffix_index(names.volume_suffix(a)) == a
    assert (names.volume_suffix(a) < names.volume_suffix(b)) == (a < b)


def test_describe_indices():
    assert names.describe_indices([5, 1, 2, 3, 7, 8]) == "1-3, 5, 7-8"


def test_shell_patterns_give_every_volume_in_stream_order_and_nothing_else():
    """What README.TXT's stock restore `cat PATTERNS` relies on: each pattern one tier, in order."""
    for last in (1, 899, 900, 9899, 9900, 12345):
        patterns = names.volume_patterns("image", last).split()
        assert len(patterns) == (len(names.volume_suffix(last)) - 1) // 2
        files = [names.volume_name("image", index) for index in range(1, names.tier_end(last) + 1)]
        expanded = [name for pattern in patterns for name in sorted(fnmatch.filter(files, pattern))]
        assert expanded == files
        others = ["image.001.manifest", "image.parity-001-1", "image.001.part", "image.001.iso",
                  "image.90000.manifest"]
        assert not [name for pattern in patterns for name in fnmatch.filter(others, pattern)]
    assert [names.tier_end(index) for index in (1, 899, 900, 9899, 9900)] == [899, 899, 9899, 9899, 99899]


def test_a_volume_key_names_its_volume_everywhere_and_sorts_in_writing_order():
    data, parity = names.VolumeKey(3), names.VolumeKey.parity(2, 1)
    assert (data.describe(), parity.describe()) == ("volume 3", "parity volume 1 of group 2")
    assert data.describe_at("out/image.003") == "volume 3 (out/image.003)"
    assert (data.file_name("image"), parity.file_name("image")) == ("image.003", "image.parity-002-1")
    assert (data.disc_title(), parity.disc_title()) == ("disc 3", "parity disc 1 of group 2")
    assert not data.is_parity and parity.is_parity and parity == names.VolumeKey(1, group=2)
    keys = [names.VolumeKey.parity(1, 2), names.VolumeKey(10), names.VolumeKey.parity(2, 1),
            names.VolumeKey.parity(1, 1), names.VolumeKey(9)]
    assert sorted(keys) == [names.VolumeKey(9), names.VolumeKey(10), names.VolumeKey.parity(1, 1),
                            names.VolumeKey.parity(1, 2), names.VolumeKey.parity(2, 1)]
    manifest = manifests.Manifest(set_id="0" * 32, set_name="pc1", index=3, offset=0, length=0,
                                  chunk_size=64 * KIB, volume_size=64 * KIB, chunk_digests=b"",
                                  volume_digest=bytes(16))
    assert manifest.key == data and manifest.describe() == "volume 3 of set 'pc1'"

"""sets/volumeset.py in-process: the set as found, checked as a whole: another set's volume named
with both sets, missing volumes counted, no last volume (with the leftovers that explain it)."""

import os
import shutil

import pytest

from conftest import restore_set
from mirrorpipe.errors import Error
from mirrorpipe.sets import manifests


def test_a_volume_of_another_set_is_named_with_both_sets(two_sets):
    tmp_path, _ = two_sets
    shutil.copy(tmp_path / "b" / "other.001", tmp_path / "a" / "x.001")
    shutil.copy(tmp_path / "b" / "other.001.manifest", tmp_path / "a" / "x.001.manifest")
    a_id = manifests.read(str(tmp_path / "a" / "image.001.manifest")).set_id
    b_id = manifests.read(str(tmp_path / "b" / "other.001.manifest")).set_id
    with pytest.raises(Error) as caught:
        restore_set(tmp_path / "a")
    assert f"x.001 is volume 1 of another set 'other' (set id {b_id}), not of the set 'image' (set id {a_id})" \
        in str(caught.value)


def test_missing_volumes_are_listed_with_the_count(two_sets):
    tmp_path, _ = two_sets
    for index in (2, 3):
        os.unlink(tmp_path / "a" / f"image.00{index}.manifest")
    with pytest.raises(Error) as caught:
        restore_set(tmp_path / "a")
    assert "missing volumes 2-3 of 4 of set 'image'" in str(caught.value)
    assert "image.002, " in str(caught.value) and "without manifest" in str(caught.value)


def test_no_last_volume(two_sets):
    tmp_path, _ = two_sets
    os.unlink(tmp_path / "a" / "image.004")
    os.unlink(tmp_path / "a" / "image.004.manifest")
    (tmp_path / "a" / "image.004.part").write_bytes(b"partial")
    with pytest.raises(Error) as caught:
        restore_set(tmp_path / "a")
    assert "no last volume of set 'image' (found 1-3)" in str(caught.value)
    assert "image.004.part unfinished (left by an interrupted split-span)" in str(caught.value)

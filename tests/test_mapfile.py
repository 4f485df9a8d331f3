"""mapfile: areas and statuses kept right, written in a form GNU ddrescuelog reads."""

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrorpipe.disk import mapfile
from mirrorpipe.errors import Error

SECTOR = 512


def ddrescuelog(*args):
    if shutil.which("ddrescuelog") is None:
        pytest.skip("needs ddrescuelog (Debian package gddrescue)")
    return subprocess.run(["ddrescuelog", *args], capture_output=True, text=True, check=True).stdout


def test_new_map_is_one_non_tried_area():
    assert mapfile.Map(4096).areas() == [(0, 4096, "?")]


@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 64), st.sampled_from(mapfile.STATUSES)),
                max_size=40))
@settings(max_examples=300)
def test_areas_follow_every_set_like_a_status_per_byte(changes):
    size = 64
    bad_map = mapfile.Map(size)
    model = ["?"] * size
    for start, end, status in changes:
        bad_map.set(start, end, status)
        model[start:end] = [status] * max(0, end - start)
    areas = bad_map.areas()
    # The areas cover the source in order, neighbours differ, and each byte has its status.
    assert areas[0][0] == 0 and areas[-1][1] == size
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in zip(areas, areas[1:]))
    assert [status for start, end, status in areas for _ in range(start, end)] == model
    assert [bad_map.status(i) for i in range(size)] == model
    # A clipped query gives the same statuses for the range.
    picked = bad_map.areas("-", 10, 50)
    assert [i for start, end, _ in picked for i in range(start, end)] == \
        [i for i in range(10, 50) if model[i] == "-"]


def test_ddrescuelog_reads_the_map_and_lists_the_bad_sectors(tmp_path):
    path = tmp_path / "map"
    bad_map = mapfile.Map(1 << 20, str(path))
    bad_map.set(0, 1 << 20, mapfile.FINISHED)
    bad_map.set(10 * SECTOR, 11 * SECTOR, mapfile.BAD_SECTOR)
    bad_map.set(100 * SECTOR, 103 * SECTOR, mapfile.BAD_SECTOR)
    bad_map.set(1000 * SECTOR, 1010 * SECTOR, mapfile.NON_TRIED)
    bad_map.position = 1 << 20
    bad_map.save(finished=True)
    assert ddrescuelog("-l-", str(path)).split() == ["10", "100", "101", "102"]
    assert ddrescuelog("-l?", str(path)).split() == [str(s) for s in range(1000, 1010)]
    summary = ddrescuelog("-t", str(path))
    assert "bad-sector:     2048 B,  in      2 area(s)" in summary
    assert "non-tried:     5120 B,  in      1 area(s)" in summary
    assert "current status: finished" in summary


def test_save_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "map"
    bad_map = mapfile.Map(8192, str(path))
    bad_map.save()
    first = path.read_text()
    bad_map.set(0, 4096, mapfile.FINISHED)
    bad_map.save()
    assert path.read_text() != first
    assert "0x00000000  0x00001000  +\n0x00001000  0x00001000  ?\n" in path.read_text()
    assert os.listdir(tmp_path) == ["map"]


def test_unwritable_map_is_a_one_line_error(tmp_path):
    bad_map = mapfile.Map(8192, str(tmp_path / "missing-directory" / "map"))
    with pytest.raises(Error, match="cannot write the map .*missing-directory/map"):
        bad_map.save()

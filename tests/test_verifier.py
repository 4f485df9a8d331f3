"""verifier.Verify in-process: the verdict, its exit status, the rows and the table, for an
intact set, one a copy makes up for, and one missing a volume (the command's own tests, with
--json and parity groups, are in test_reassemble.py and test_parity_sets.py)."""

import os
import shutil

import pytest

from conftest import split
from mirrorpipe.errors import EXIT_REBUILDABLE
from mirrorpipe.sets import verifier

CHUNK = 64 << 10


@pytest.fixture
def a_set(tmp_path):
    stream = os.urandom(3 * 4 * CHUNK + 1000)
    split(stream, tmp_path / "out", "--size", str(4 * CHUNK), "--chunk-size", str(CHUNK))
    return tmp_path / "out", stream


def test_an_intact_set(a_set):
    out, stream = a_set
    result = verifier.Verify([str(out)]).run()
    assert (result.verdict, result.exit_status, result.error()) == (verifier.INTACT, 0, None)
    assert [(r.index, verifier.Verification.row_status(r)) for r in result.rows] == \
        [(1, "ok"), (2, "ok"), (3, "ok"), (4, "ok")]
    assert result.table().endswith(f"4 volumes, {len(stream)} bytes, all verified\n")


def test_a_copy_damaged_where_another_is_intact(a_set, tmp_path):
    out, _ = a_set
    shutil.copytree(out, tmp_path / "copy")
    with open(tmp_path / "copy" / "image.002", "r+b") as damaged:
        damaged.seek(CHUNK + 10)
        damaged.write(b"\0" * 4)
    result = verifier.Verify([str(out), str(tmp_path / "copy")]).run()
    assert (result.verdict, result.exit_status) == (verifier.REPAIRABLE, EXIT_REBUILDABLE)
    row = result.rows[1]
    assert verifier.Verification.row_status(row) == "ok-copy-bad"
    assert row.damaged_copies == [f"volume 2: the chunk at offset {CHUNK} is damaged in "
                                  f"{tmp_path / 'copy' / 'image.002'} and intact in {out / 'image.002'}, "
                                  "which gave it"]


def test_a_missing_volume(a_set):
    out, _ = a_set
    for name in ("image.003", "image.003.manifest"):
        (out / name).unlink()
    result = verifier.Verify([str(out)]).run()
    assert (result.verdict, result.exit_status) == (verifier.UNRESTORABLE, 1)
    assert [verifier.Verification.row_status(r) for r in result.rows] == ["ok", "ok", "missing", "ok"]
    assert str(result.error()) == "missing volume 3 of 4 of set 'image'"
    assert "1 problem(s)" in result.table()

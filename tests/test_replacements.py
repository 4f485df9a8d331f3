"""sets/replacements.py in-process, through verifier.Verify(rebuild_into=...): a lost data volume
whose manifest survives and a damaged parity volume are rewritten byte for byte with their own
manifests, the set is whole again with them, and a directory already holding a replacement's name
is refused (reassemble --verify --rebuild-into itself is tested in test_parity_sets.py)."""

import os
import shutil

import pytest

from conftest import flip, write_set
from mirrorpipe.errors import Error
from mirrorpipe.sets import manifests, verifier

VOLUME = 4 * manifests.MIN_VOLUME_SIZE
CHUNK = manifests.MIN_VOLUME_SIZE


@pytest.fixture
def parity_set(tmp_path):
    """A set of four data volumes in two groups of two, one parity volume each: (directory, the
    files as written)."""
    out = tmp_path / "out"
    write_set(out, os.urandom(3 * VOLUME + 5000), VOLUME, chunk_size=CHUNK,
              parity=manifests.ParityScheme(count=1, group_size=2), parity_workers=1)
    return out, {name: (out / name).read_bytes() for name in os.listdir(out)}


def test_lost_and_damaged_volumes_are_written_again_with_their_manifests(parity_set, tmp_path):
    out, original = parity_set
    os.unlink(out / "image.001")                       # its manifest survives
    flip(out / "image.parity-002-1", CHUNK + 99)        # damaged in its second chunk
    said = []
    result = verifier.Verify([str(out)], rebuild_into=str(tmp_path / "new"), say=said.append).run()
    new = tmp_path / "new"
    assert result.verdict == verifier.REPLACED and result.exit_status == 0
    assert result.replacements == [str(new / "image.001"), str(new / "image.parity-002-1")]
    assert sorted(os.listdir(new)) == ["image.001", "image.001.manifest",
                                       "image.parity-002-1", "image.parity-002-1.manifest"]
    for name in os.listdir(new):
        assert (new / name).read_bytes() == original[name], name
    assert said == [f"wrote {new}/image.001 (256.0 KiB), a replacement for volume 1, with its manifest",
                    f"wrote {new}/image.parity-002-1 (256.0 KiB), a replacement for parity volume 1 of "
                    "group 2, with its manifest"]
    for name in os.listdir(new):
        shutil.copy(new / name, out)
    assert verifier.Verify([str(out)]).run().verdict == verifier.INTACT


def test_a_replacement_never_overwrites_a_file(parity_set, tmp_path):
    out, _ = parity_set
    os.unlink(out / "image.003")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "image.003.manifest").write_text("someone's file\n")
    with pytest.raises(Error, match=f"{tmp_path}/new/image.003 already exists; give --rebuild-into an "
                                    "empty directory"):
        verifier.Verify([str(out)], rebuild_into=str(tmp_path / "new")).run()
    assert (tmp_path / "new" / "image.003.manifest").read_text() == "someone's file\n"
    assert not (tmp_path / "new" / "image.003").exists()

"""sets/reader.py in-process: Restore checks what it can before the first byte, writes the stream
with every chunk checked, counts it on the progress it is handed, says what a copy made up for,
and reads swapped volume files as the volumes they hold (reassemble itself is test_reassemble.py;
parity rebuilds, test_parity_sets.py)."""

import os
import shutil
import tempfile

import pytest

from conftest import flip, write_set
from mirrorpipe.errors import Error
from mirrorpipe.progress import NoProgress
from mirrorpipe.sets import manifests, reader

VOLUME = 4 * manifests.MIN_VOLUME_SIZE
CHUNK = manifests.MIN_VOLUME_SIZE


def run(restore, **options):
    """(the stream restore.run writes, what it returns)."""
    with tempfile.TemporaryFile() as out:
        end = restore.run(out.fileno(), **options)
        out.seek(0)
        return out.read(), end


def test_a_restore_counts_the_stream_and_says_what_a_copy_made_up_for(tmp_path):
    data = os.urandom(3 * VOLUME + 12_345)
    write_set(tmp_path / "a", data, VOLUME, chunk_size=CHUNK)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    flip(tmp_path / "a" / "image.002", CHUNK + 5)
    progress, said = NoProgress(), []
    written, end = run(reader.Restore([str(tmp_path / "a"), str(tmp_path / "b")]), progress=progress,
                       say=said.append)
    assert written == data
    assert progress.done == len(data)
    assert (end.index, end.total_length, end.volume_count) == (4, len(data), 4)
    assert said == [f"volume 2: the chunk at offset {CHUNK} is damaged in {tmp_path}/a/image.002 and "
                    f"intact in {tmp_path}/b/image.002, which gave it"]


def test_a_truncated_volume_stops_the_restore_before_the_first_byte(tmp_path):
    write_set(tmp_path / "set", os.urandom(2 * VOLUME), VOLUME, chunk_size=CHUNK)
    os.truncate(tmp_path / "set" / "image.002", VOLUME - 1)
    with pytest.raises(Error, match=rf"volume 2 \({tmp_path}/set/image.002\) is truncated: {VOLUME - 1} "
                                    rf"bytes, its manifest says {VOLUME}"):
        reader.Restore([str(tmp_path / "set")])


def test_a_set_with_parity_left_behind_says_to_give_it(tmp_path):
    write_set(tmp_path / "set", os.urandom(3 * VOLUME), VOLUME, chunk_size=CHUNK,
              parity=manifests.ParityScheme(count=1, group_size=2), parity_workers=1)
    data_only = [str(tmp_path / "set" / f"image.00{i}") for i in (1, 3)]
    with pytest.raises(Error) as caught:
        reader.Restore(data_only)
    assert str(caught.value) == ("missing volume 2 of 3 of set 'image' (the set has 1 parity volume per "
                                 "group of 2 (image.parity-001-1 ...), which can rebuild lost volumes: "
                                 "give them too)")


def test_swapped_volume_files_are_read_as_the_volumes_they_hold(tmp_path):
    data = os.urandom(2 * VOLUME + 1000)
    out = tmp_path / "set"
    write_set(out, data, VOLUME, chunk_size=CHUNK)
    os.rename(out / "image.001", out / "swap")
    os.rename(out / "image.002", out / "image.001")
    os.rename(out / "swap", out / "image.002")
    restore = reader.Restore([str(out)])
    assert sorted(restore.notes) == [
        f"{out}/image.001 holds the data of volume 2 (its manifest says volume 1): the files were renamed or "
        "swapped; reading it as the volume it holds",
        f"{out}/image.002 holds the data of volume 1 (its manifest says volume 2): the files were renamed or "
        "swapped; reading it as the volume it holds"]
    assert run(restore)[0] == data

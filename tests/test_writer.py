"""sets/writer.py in-process: cutting a stream into a set while it streams, the manifests, refusals,
running out of space, --exec hooks, and sets wide enough to widen their volume numbers."""

import os
import subprocess
import tempfile

import pytest
import xxhash

from conftest import KIB, MIB, restore_set, write_set
from mirrorpipe.sets import manifests, writer
from mirrorpipe.errors import Error

def test_volumes_are_plain_slices_with_matching_manifests(tmp_path):
    data = os.urandom(5 * MIB + 123)
    finished = write_set(tmp_path / "out", data, 2 * MIB, chunk_size=512 * KIB)
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["image.001", "image.001.manifest", "image.002", "image.002.manifest",
                     "image.003", "image.003.manifest"]
    assert b"".join((tmp_path / "out" / f"image.00{i}").read_bytes() for i in (1, 2, 3)) == data
    last = manifests.read(str(tmp_path / "out" / "image.003.manifest"))
    assert last.last and last.total_length == len(data) and last.volume_count == 3
    assert last.stream_digest == xxhash.xxh3_128(data).digest()
    assert last.chunks == 3
    assert last.chunk_digest(1) == xxhash.xxh3_128(data[4 * MIB + 512 * KIB:5 * MIB]).digest()
    assert last.chunk_digest(2) == xxhash.xxh3_128(data[5 * MIB:]).digest()
    first = finished[0]
    assert not first.last and first.chunks == 4 and first.volume_digest == xxhash.xxh3_128(data[:2 * MIB]).digest()
    assert len({m.set_id for m in finished}) == 1 and len(first.set_id) == 32


def test_a_stream_ending_on_a_volume_boundary_has_no_empty_last_volume(tmp_path):
    data = os.urandom(4 * MIB)
    finished = write_set(tmp_path / "out", data, 2 * MIB)
    assert [(m.index, m.length, m.last) for m in finished] == [(1, 2 * MIB, False), (2, 2 * MIB, True)]
    assert restore_set(tmp_path / "out") == data


def test_an_empty_stream_makes_a_set_of_one_empty_volume(tmp_path):
    finished = write_set(tmp_path / "out", b"", 2 * MIB)
    assert [(m.index, m.length, m.last, m.chunks) for m in finished] == [(1, 0, True, 0)]
    assert restore_set(tmp_path / "out") == b""


def test_every_set_gets_its_own_random_id(tmp_path):
    ids = {write_set(tmp_path / f"out{i}", b"same", 2 * MIB)[0].set_id for i in range(3)}
    assert len(ids) == 3


def test_an_existing_set_is_not_overwritten_but_part_leftovers_are_removed(tmp_path):
    write_set(tmp_path / "out", b"x" * 100, 2 * MIB)
    with pytest.raises(Error, match="already holds a volume set named 'image'"):
        write_set(tmp_path / "out", b"y" * 100, 2 * MIB)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "image.004.part").write_bytes(b"killed run")
    (tmp_path / "other" / "image.txt").write_bytes(b"not ours")
    write_set(tmp_path / "other", b"z" * 100, 2 * MIB)
    assert sorted(os.listdir(tmp_path / "other")) == ["image.001", "image.001.manifest", "image.txt"]


def test_invalid_parameters_are_refused(tmp_path):
    for kwargs, message in [({"name": "../escape"}, "invalid set name"),
                            ({"chunk_size": 1000}, "chunk size"),
                            ({"volume_size": 1000}, "volume size")]:
        args = {"name": "image", "chunk_size": 64 * KIB, "volume_size": MIB, **kwargs}
        with pytest.raises(Error, match=message):
            writer.VolumeSetWriter(str(tmp_path), args["name"], args["volume_size"], chunk_size=args["chunk_size"])
    with pytest.raises(Error, match="choose a larger chunk size"):
        writer.VolumeSetWriter(str(tmp_path), "x", 10 ** 12, chunk_size=64 * KIB)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 6 MiB tmpfs: out of space after two volumes of 2 MiB."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5M", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_out_of_space_says_which_volumes_are_complete_and_leaves_no_partial_volume(small_filesystem):
    data = os.urandom(9 * MIB)
    with pytest.raises(Error) as caught:
        write_set(small_filesystem / "out", data, 2 * MIB)
    message = str(caught.value)
    assert message.startswith(f"no space left in {small_filesystem}/out while writing volume 3")
    assert "volumes 1-2 were finished but not the last one" in message
    assert "\n" not in message
    left = sorted(os.listdir(small_filesystem / "out"))
    assert left == ["image.001", "image.001.manifest", "image.002", "image.002.manifest"]
    with pytest.raises(Error, match="no last volume"):
        restore_set(small_filesystem / "out")
    # The message's command clears the way: the backup then runs again into the same directory.
    removal = message.split("files this run left: ")[1]
    subprocess.run(["sh", "-c", removal], check=True)
    assert os.listdir(small_filesystem / "out") == []
    write_set(small_filesystem / "out", data[:3 * MIB], 2 * MIB)
    assert restore_set(small_filesystem / "out") == data[:3 * MIB]


def test_exec_hook_gets_the_volume_safely_with_its_environment(tmp_path):
    odd = tmp_path / "o'dd $(touch pwned) dir"
    log = tmp_path / "log"
    hook = writer.ExecHook(
        f'printf "%s|%s|%s|%s|%s|%s|" {{}} "$MIRRORPIPE_VOLUME" "$MIRRORPIPE_VOLUME_INDEX" '
        f'"$MIRRORPIPE_SET_NAME" "$MIRRORPIPE_LAST" "$MIRRORPIPE_SET_ID" >> {log}; '
        f'cat >> {log}; echo >> {log}; test -f {{}}')
    finished = write_set(odd, os.urandom(3 * MIB), 2 * MIB, on_finished=hook)
    lines = log.read_text().splitlines()
    first, last = (line.split("|") for line in lines)
    assert first[:5] == [str(odd / "image.001"), str(odd / "image.001"), "1", "image", "0"]
    assert last[:5] == [str(odd / "image.002"), str(odd / "image.002"), "2", "image", "1"]
    assert first[5] == finished[0].set_id
    assert first[6] == "" and last[6] == ""   # stdin was /dev/null, not the stream
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_a_failing_exec_hook_stops_the_run(tmp_path):
    hook = writer.ExecHook("test {} != '" + str(tmp_path / "out" / "image.002") + "'")
    with pytest.raises(Error, match=r"--exec command failed with status 1 for .*image\.002; stopping"):
        write_set(tmp_path / "out", os.urandom(5 * MIB), 2 * MIB, on_finished=hook)
    # Volume 2 itself is complete (the hook runs on finished volumes); nothing after it was written.
    assert sorted(os.listdir(tmp_path / "out")) == ["image.001", "image.001.manifest",
                                                    "image.002", "image.002.manifest"]


def test_a_set_of_more_than_899_volumes_widens_its_numbers_in_order():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None   # tmpfs: 2,700 fsyncs cost nothing
    with tempfile.TemporaryDirectory(dir=base) as directory:
        volume = manifests.MIN_VOLUME_SIZE
        data = os.urandom(901 * volume + 10)
        finished = write_set(directory, data, volume)
        assert len(finished) == 902
        files = sorted(name for name in os.listdir(directory) if not name.endswith(".manifest"))
        assert files[898:] == ["image.899", "image.90000", "image.90001", "image.90002"]
        # Name order is stream order: what `cat` of the sorted names relies on.
        assert b"".join(open(os.path.join(directory, name), "rb").read() for name in files) == data
        assert restore_set(directory) == data

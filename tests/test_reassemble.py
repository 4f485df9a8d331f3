"""reassemble as a command: the fault matrix (every fault at the first, a middle and the last
volume, refused with the exact problem and status 1, no byte of a bad chunk written), --verify,
and disc-by-disc reading through a pseudo-terminal."""

import json
import os
import re
import select
import shutil
import time

import pytest
import xxhash

from conftest import MIB, assert_one_line_error, command, flip, insert, open_files, sh, split, volume_files
from mirrorpipe.errors import EXIT_REBUILDABLE
from mirrorpipe.sets import manifests

VOLUME = 2 * MIB
CHUNK = 256 << 10
COUNT = 5


@pytest.fixture(scope="module")
def volume_sets(tmp_path_factory):
    """A five-volume set 'image' and a set 'other' of the same shape, made by split-span."""
    base = tmp_path_factory.mktemp("sets")
    stream = os.urandom((COUNT - 1) * VOLUME + 300_000)
    split(stream, base / "image", "--size", "2M", "--chunk-size", "256K")
    split(os.urandom(len(stream)), base / "other", "--size", "2M", "--chunk-size", "256K", "--name", "other")
    return base, stream


def set_id(path):
    return manifests.read(str(path)).set_id


def forge_volume(original, forged, data):
    """A self-consistent volume with the original's set and index but other content."""
    manifest = manifests.read(f"{original}.manifest")
    manifest.chunk_digests = b"".join(xxhash.xxh3_128(data[i:i + manifest.chunk_size]).digest()
                                      for i in range(0, len(data), manifest.chunk_size))
    manifest.volume_digest = xxhash.xxh3_128(data).digest()
    forged.write_bytes(data)
    forged.with_name(forged.name + ".manifest").write_bytes(manifest.to_json())


def flip_bit(d, i, name):
    path = d / name
    where = path.stat().st_size // 2 + 12345
    flip(path, where, mask=0x10)
    start = where // CHUNK * CHUNK
    return (rf"corrupt data in volume {i} \({re.escape(str(path))}\) at offset {start} "
            rf"\(stream offset {(i - 1) * VOLUME + start}\)"), (i - 1) * VOLUME + start


def truncate(d, i, name):
    path = d / name
    size = path.stat().st_size
    os.truncate(path, size - 1000)
    return rf"volume {i} \({re.escape(str(path))}\) is truncated: {size - 1000} bytes, its manifest says {size}", 0


def delete(d, i, name):
    os.unlink(d / name)
    os.unlink(d / f"{name}.manifest")
    if i == COUNT:
        return rf"no last volume of set 'image' \(found 1-{COUNT - 1}\)", 0
    return rf"missing volume {i} of {COUNT} of set 'image'", 0


def duplicate_with_other_content(d, i, name):
    original = d / name
    forge_volume(original, d / "copy.bin", os.urandom(original.stat().st_size))
    return (rf"two different volumes {i} of set 'image': {re.escape(str(d / 'copy.bin'))} and "
            rf"{re.escape(str(original))} \(different content\)"), 0


def other_sets_volume(d, i, name, other_dir):
    theirs = other_dir / f"other.00{i}"
    shutil.copy(theirs, d / name)
    shutil.copy(f"{theirs}.manifest", d / f"{name}.manifest")
    mine = set_id(d / ("image.001.manifest" if i != 1 else "image.002.manifest"))
    return (rf"{re.escape(str(d / name))} is volume {i} of another set 'other' \(set id {set_id(f'{theirs}.manifest')}\), "
            rf"not of the set 'image' \(set id {mine}\)"), 0


def renamed_volume(d, i, name):
    os.rename(d / name, d / "renamed.bin")
    return (rf"volume {i} \({re.escape(str(d / name))}\) is missing: its manifest "
            rf"{re.escape(str(d / name))}\.manifest is there but not the volume file beside it"), 0


def part_leftover(d, i, name):
    # What SIGKILL between the volume's and the manifest's rename leaves.
    os.rename(d / f"{name}.manifest", d / f"{name}.manifest.part")
    leftover = re.escape(str(d / f"{name}.manifest.part")) + r" unfinished \(left by an interrupted split-span\)"
    if i == COUNT:
        return rf"no last volume of set 'image' \(found 1-{COUNT - 1}\).*{leftover}", 0
    return rf"missing volume {i} of {COUNT} of set 'image' \({leftover}", 0


FAULTS = [flip_bit, truncate, delete, duplicate_with_other_content, other_sets_volume,
          renamed_volume, part_leftover]


@pytest.mark.parametrize("position", [1, 3, COUNT], ids=["first", "middle", "last"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_fault_matrix(tmp_path, volume_sets, fault, position):
    base, stream = volume_sets
    d = tmp_path / "set"
    shutil.copytree(base / "image", d)
    extra = (base / "other",) if fault is other_sets_volume else ()
    expected, good_prefix = fault(d, position, f"image.00{position}", *extra)
    with open(tmp_path / "stream.out", "wb") as out:
        result = command("reassemble", d, stdout=out)
    message = result.stderr.decode()
    assert result.returncode == 1, message
    assert re.search(expected, assert_one_line_error(result, "reassemble")), message
    # Only verified chunks before the problem reach the output; before any byte when the problem
    # shows in the files themselves.
    assert (tmp_path / "stream.out").read_bytes() == stream[:good_prefix]


def test_any_file_names_and_order(tmp_path, volume_sets):
    base, stream = volume_sets
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    names = ["zeta", "alpha", "mid", "b", "a"]
    for i, name in enumerate(names, start=1):
        shutil.copy(base / "image" / f"image.00{i}", shuffled / name)
        shutil.copy(base / "image" / f"image.00{i}.manifest", shuffled / f"{name}.manifest")
    result = command("reassemble", shuffled / "mid.manifest", shuffled / "zeta", shuffled, check_status=0)
    assert result.stdout == stream


def test_a_terminal_on_stdout_is_refused(volume_sets):
    base, _ = volume_sets
    controller, terminal = os.openpty()
    try:
        result = command("reassemble", base / "image", stdout=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "refusing to write binary data to a terminal" in result.stderr.decode()


def test_verify_prints_a_table_and_finds_every_problem(tmp_path, volume_sets):
    base, stream = volume_sets
    ok = command("reassemble", "--verify", base / "image", check_status=0).stdout.decode()
    assert ok.count(" ok ") == COUNT and f"{COUNT} volumes, {len(stream)} bytes, all verified" in ok

    d = tmp_path / "set"
    shutil.copytree(base / "image", d)
    flip_bit(d, 2, "image.002")
    truncate(d, 4, "image.004")
    result = command("reassemble", "--verify", d)
    table = result.stdout.decode()
    assert result.returncode == 1
    rows = {int(line.split()[0]): line.split()[3] for line in table.splitlines()[1:COUNT + 1]}
    assert rows == {1: "ok", 2: "BAD", 3: "ok", 4: "BAD", 5: "ok"}
    assert "2 problem(s)" in table
    error = assert_one_line_error(result, "reassemble")
    # Each problem names its volume once.
    assert re.search(r"error: corrupt data in volume 2 \(.*; volume 4 \(.*\) is truncated", error), error
    assert "volume 2: corrupt" not in error and "volume 4: volume 4" not in error


def test_verify_json_gives_a_verdict_that_agrees_with_the_exit_status(tmp_path):
    stream = os.urandom(3 * VOLUME + 300_000)
    out = tmp_path / "out"
    split(stream, out, "--size", "2M", "--chunk-size", "256K", "--parity", "1")

    def verify_json(status):
        result = command("reassemble", "--verify", "--json", out)
        assert result.returncode == status, result.stderr.decode()
        document = json.loads(result.stdout)
        assert document["exit_status"] == result.returncode
        return result, document, {row["volume"]: row for row in document["volumes"]}

    _, intact, rows = verify_json(0)
    assert intact["verdict"] == "intact" and intact["problems"] == [] and intact["made_up"] == []
    assert intact["set"] == {"name": "image", "id": set_id(out / "image.001.manifest"), "volumes": 4,
                             "bytes": len(stream)}
    assert list(rows) == ["1", "2", "3", "4", "p1-1"] and rows["p1-1"]["parity"]
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert intact["groups"] == [{"group": 1, "data_volumes": [1, 4], "parity_volumes": 1, "lost_volumes": 0,
                                 "most_lost_at_one_place": 0, "can_still_lose": 1, "rebuildable": True}]

    (out / "image.002").unlink()
    _, rebuildable, rows = verify_json(EXIT_REBUILDABLE)
    assert rebuildable["verdict"] == "repairable" and rebuildable["problems"] == []
    assert rows["2"]["status"] == "REBUILDABLE" and rows["1"]["status"] == "ok"
    assert rebuildable["groups"][0]["can_still_lose"] == 0 and rebuildable["groups"][0]["lost_volumes"] == 1
    assert "rebuilds them from parity" in rebuildable["made_up"][0]

    (out / "image.003").unlink()
    result, lost, rows = verify_json(1)
    assert lost["verdict"] == "unrestorable" and not lost["groups"][0]["rebuildable"]
    assert "group 1 cannot be rebuilt" in lost["problems"]
    assert_one_line_error(result, "reassemble", "group 1 cannot be rebuilt")


def test_json_needs_verify(tmp_path, volume_sets):
    base, _ = volume_sets
    result = command("reassemble", "--json", base / "image")
    assert result.returncode == 2 and not result.stdout
    assert_one_line_error(result, "reassemble", "--json needs --verify")


# ---------------------------------------------------------------------------------------------
# The volume and stream hashes, checked by every reassemble

def rewrite_manifest(path, **fields):
    """Give a manifest other values (what an altered manifest says), keeping it well-formed."""
    manifest = manifests.read(str(path))
    for name, value in fields.items():
        setattr(manifest, name, value)
    path.write_bytes(manifest.to_json())


def test_a_volume_hash_that_does_not_match_fails_at_the_end_of_the_volume(tmp_path, volume_sets):
    base, stream = volume_sets
    d = tmp_path / "set"
    shutil.copytree(base / "image", d)
    # Every chunk hash still matches: only the volume hash can tell.
    rewrite_manifest(d / "image.002.manifest", volume_digest=bytes(16))
    with open(tmp_path / "stream.out", "wb") as out:
        result = command("reassemble", d, stdout=out)
    assert result.returncode == 1
    assert_one_line_error(result, "reassemble", f"volume 2 ({d}/image.002) does not match its manifest's "
                                                "volume hash although every chunk does")
    assert (tmp_path / "stream.out").read_bytes() == stream[:2 * VOLUME]   # stopped at its end


def test_a_stream_hash_that_does_not_match_fails_after_the_last_byte(tmp_path, volume_sets):
    base, stream = volume_sets
    d = tmp_path / "set"
    shutil.copytree(base / "image", d)
    rewrite_manifest(d / f"image.00{COUNT}.manifest", stream_digest=xxhash.xxh3_128(b"another stream").digest())
    result = sh(f"reassemble {d} | wc -c")
    # The bytes are out before the stream hash is known: the exit status is what tells.
    assert result.returncode == 1 and result.stdout.decode().strip() == str(len(stream))
    assert_one_line_error(result, "reassemble", f"the reassembled stream ({len(stream)} bytes) does not "
                                                "match the stream hash", "do not use it")
    verify = command("reassemble", "--verify", d)
    assert verify.returncode == 1 and "does not match the stream hash" in verify.stderr.decode()


# ---------------------------------------------------------------------------------------------
# Two copies of a volume: each chunk from a copy that holds it intact

def flip_chunk(path, number):
    """Flip a bit inside chunk `number` of a volume file or, given the chunk's place, an image."""
    flip(path, number * CHUNK + 1000)


def two_copies(directory, tmp_path):
    """Two copies of the set in directory, as from two backup disks: a/ and copy/."""
    a, b = tmp_path / "a", tmp_path / "copy"
    shutil.copytree(directory, a)
    shutil.copytree(directory, b)
    return a, b


def test_each_chunk_comes_from_an_intact_copy(tmp_path, volume_sets):
    base, stream = volume_sets
    a, b = two_copies(base / "image", tmp_path)
    flip_chunk(a / "image.003", 2)
    flip_chunk(b / "image.003", 5)
    result = command("reassemble", a, b, check_status=0)
    assert result.stdout == stream
    said = result.stderr.decode()
    assert (f"volume 3: the chunk at offset {2 * CHUNK} is damaged in {a}/image.003 and intact in "
            f"{b}/image.003, which gave it") in said, said
    assert f"offset {5 * CHUNK}" not in said     # a's chunk 5 was intact: b's was never needed
    # --verify reads every copy: the volume is good, a copy of it is damaged (exit status 3).
    result = command("reassemble", "--verify", a, b, check_status=3)
    table = result.stdout.decode()
    rows = {line.split()[0]: line.split()[3] for line in table.splitlines()[1:COUNT + 1]}
    assert rows == {"1": "ok", "2": "ok", "3": "ok-copy-bad", "4": "ok", "5": "ok"}, table
    assert f"the chunk at offset {5 * CHUNK} is damaged in {b}/image.003 and intact in {a}/image.003" in table
    assert "1 volume(s) with a damaged copy" in table


def test_a_chunk_damaged_in_every_copy_is_refused_naming_each(tmp_path, volume_sets):
    base, stream = volume_sets
    a, b = two_copies(base / "image", tmp_path)
    flip_chunk(a / "image.003", 2)
    flip_chunk(b / "image.003", 2)
    with open(tmp_path / "stream.out", "wb") as out:
        result = command("reassemble", a, b, stdout=out)
    assert_one_line_error(result, "reassemble", f"corrupt data in volume 3 ({a}/image.003) at offset {2 * CHUNK}",
                          f"no other copy holds it intact ({b}/image.003 damaged there too)")
    assert result.returncode == 1
    assert (tmp_path / "stream.out").read_bytes() == stream[:2 * VOLUME + 2 * CHUNK]


def test_a_truncated_copy_is_passed_over_for_a_whole_one(tmp_path, volume_sets):
    base, stream = volume_sets
    a, b = two_copies(base / "image", tmp_path)
    os.truncate(a / "image.002", VOLUME - 1000)
    result = command("reassemble", a, b, check_status=0)
    assert result.stdout == stream
    assert f"volume 2 ({a}/image.002) is truncated" in result.stderr.decode()
    assert f"{b}/image.002 was read instead" in result.stderr.decode()


# ---------------------------------------------------------------------------------------------
# Volume files that hold another volume's data

def swap(first, second):
    temporary = first.with_name("swapping")
    os.rename(first, temporary)
    os.rename(second, first)
    os.rename(temporary, second)


@pytest.mark.parametrize("what", ["volumes", "manifests", "last volume"])
def test_swapped_volume_files_are_named_and_read_as_what_they_hold(tmp_path, volume_sets, what):
    base, stream = volume_sets
    d = tmp_path / "set"
    shutil.copytree(base / "image", d)
    # (the file's name, the volume whose data it holds, the volume its manifest says)
    if what == "volumes":
        swap(d / "image.002", d / "image.003")
        said = [(2, 3, 2), (3, 2, 3)]
    elif what == "manifests":
        # A volume beside the wrong manifest.
        swap(d / "image.002.manifest", d / "image.003.manifest")
        said = [(2, 2, 3), (3, 3, 2)]
    else:
        swap(d / "image.004", d / f"image.00{COUNT}")      # lengths differ too
        said = [(4, COUNT, 4), (COUNT, 4, COUNT)]
    result = command("reassemble", d, check_status=0)
    assert result.stdout == stream
    for name, data, manifest in said:
        assert (f"{d}/image.00{name} holds the data of volume {data} (its manifest says volume "
                f"{manifest}): the files were renamed or swapped") in result.stderr.decode()
    table = command("reassemble", "--verify", d, check_status=3).stdout.decode()
    assert table.count(" ok ") == COUNT and "2 volume file(s) under another volume's name" in table


def test_a_volume_whose_data_is_nowhere_is_named_before_the_first_byte(tmp_path, volume_sets):
    base, _ = volume_sets
    d = tmp_path / "set"
    shutil.copytree(base / "image", d)
    shutil.copy(d / "image.002", d / "image.003")     # volume 3's file now holds volume 2 again
    with open(tmp_path / "stream.out", "wb") as out:
        result = command("reassemble", d, stdout=out)
    assert_one_line_error(result, "reassemble",
                          f"{d}/image.003 holds the data of volume 2 (its manifest says volume 3): the files "
                          "were renamed or swapped; no file given holds the data of volume 3")
    assert (tmp_path / "stream.out").read_bytes() == b""


# ---------------------------------------------------------------------------------------------
# Disc by disc, through a pseudo-terminal

@pytest.fixture
def discs(tmp_path, volume_sets):
    """One directory per disc, as burn-iso lays them out: a volume, its manifest and a README."""
    base, stream = volume_sets
    made = {}
    for set_name in ("image", "other"):
        for i in range(1, COUNT + 1):
            disc = made[set_name, i] = tmp_path / f"{set_name}-disc{i}"
            disc.mkdir()
            for path in volume_files(base / set_name, f"{set_name}.00{i}"):
                shutil.copy(path, disc)
            (disc / "README.TXT").write_text(f"disc {i} of the set '{set_name}'\n")
    drive = tmp_path / "drive"
    drive.mkdir()
    return made, drive, stream


def test_disc_by_disc_with_wrong_discs(tmp_path, discs, terminal):
    made, drive, stream = discs
    insert(drive, made["image", 1])
    term = terminal(f"exec reassemble {drive} > {tmp_path}/out")
    term.read_until("insert disc 2 of set 'image' and press Enter")
    # The disc that was read is closed, so it can be ejected.
    assert not [p for p in open_files(term.process.pid).values() if p.startswith(str(drive))]
    insert(drive, made["image", 4])
    term.send("")
    term.read_until("this is disc 4 of set 'image', not disc 2 of set 'image'")
    insert(drive, made["other", 2])
    term.send("")
    term.read_until("this is disc 2 of another set")
    insert(drive, made["image", 2])
    term.send("")
    for i in range(3, COUNT + 1):
        term.read_until(f"insert disc {i} of set 'image'")
        insert(drive, made["image", i])
        term.send("")
    assert term.wait() == 0, term.output.decode(errors="replace")
    assert re.search(r"this is disc 2 of another set 'other' \(set id [0-9a-f]{32}\), not disc 2",
                     term.output.decode())
    assert term.output.decode().count("insert disc 2 of set 'image'") == 3
    assert (tmp_path / "out").read_bytes() == stream


def test_disc_by_disc_giving_up(tmp_path, discs, terminal):
    made, drive, stream = discs
    insert(drive, made["image", 1])
    term = terminal(f"exec reassemble -P {drive} > {tmp_path}/out")
    shown = term.read_until("insert disc 2 of set 'image' and press Enter (q to give up): ")
    # The progress line (redrawn twice a second) leaves the question alone while it waits.
    time.sleep(1.2)
    while select.select([term.master], [], [], 0)[0]:
        shown = term.output = term.output + os.read(term.master, 4096)
    assert shown.decode().endswith("(q to give up): "), shown
    term.send("q")
    assert term.wait() == 1
    assert "reassemble: error: gave up waiting for disc 2 of set 'image'" in term.output.decode()
    assert (tmp_path / "out").read_bytes() == stream[:VOLUME]


def test_part_of_a_set_without_a_terminal_lists_what_is_missing(discs):
    made, drive, _ = discs
    insert(drive, made["image", 2])
    result = command("reassemble", drive)
    assert_one_line_error(result, "reassemble",
                          "missing volume 1 of set 'image'; no last volume of set 'image' (found 2)")
    assert result.returncode == 1 and result.stdout == b""

"""reassemble as a command: the fault matrix (every fault at the first, a middle and the last
volume, refused with the exact problem and status 1, no byte of a bad chunk written), --verify,
and disc-by-disc reading through a pseudo-terminal."""

import os
import re
import select
import shutil
import time

import pytest
import xxhash

from conftest import assert_one_line_error
from mirrorpipe import manifests
from test_split_span import MIB, command, split

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
    data = bytearray(path.read_bytes())
    where = len(data) // 2 + 12345
    data[where] ^= 0x10
    path.write_bytes(data)
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
    assert "volume 2: corrupt data in volume 2" in result.stderr.decode()
    assert "volume 4: volume 4" in result.stderr.decode() and "is truncated" in result.stderr.decode()


# ---------------------------------------------------------------------------------------------
# Disc by disc, through a pseudo-terminal

def insert(drive, disc):
    """Swap the drive's contents for a disc's (what ejecting and inserting does to a mount point)."""
    for name in os.listdir(drive):
        os.unlink(drive / name)
    for name in os.listdir(disc):
        shutil.copy(disc / name, drive / name)


@pytest.fixture
def discs(tmp_path, volume_sets):
    """One directory per disc, as burn-iso lays them out: a volume, its manifest and a README."""
    base, stream = volume_sets
    made = {}
    for set_name in ("image", "other"):
        for i in range(1, COUNT + 1):
            disc = made[set_name, i] = tmp_path / f"{set_name}-disc{i}"
            disc.mkdir()
            for suffix in ("", ".manifest"):
                shutil.copy(base / set_name / f"{set_name}.00{i}{suffix}", disc)
            (disc / "README.TXT").write_text(f"disc {i} of the set '{set_name}'\n")
    drive = tmp_path / "drive"
    drive.mkdir()
    return made, drive, stream


def open_paths(pid):
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return paths


def test_disc_by_disc_with_wrong_discs(tmp_path, discs, terminal):
    made, drive, stream = discs
    insert(drive, made["image", 1])
    term = terminal(f"exec reassemble {drive} > {tmp_path}/out")
    term.read_until("insert disc 2 of set 'image' and press Enter")
    # The disc that was read is closed, so it can be ejected.
    assert not [p for p in open_paths(term.process.pid) if p.startswith(str(drive))]
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

"""Sets with parity volumes (split-span --parity, reassemble): every combination of up to K lost
volumes rebuilt byte-identical, K+1 refused before the first byte, damaged chunks in several
volumes repaired, --verify's health report, --exec deleting each volume, ISO images, disc by disc.

The exhaustive loss combinations run reassemble's engine in-process (reader.Restore: what the
command runs) to keep hundreds of cases fast; the other tests run the commands."""

import dataclasses
import itertools
import os
import re
import shutil

import pytest

from conftest import (assert_one_line_error, command, flip, insert, need_tools, parity_rows, restore_set, sh, split,
                      volume_files)
from mirrorpipe.sets import finder, manifests, names
from mirrorpipe.errors import Error

VOLUME = 256 << 10
CHUNK = 64 << 10


def make_set(outdir, data_count, parity, *options, seed=0):
    """A set of data_count volumes (the last one short) with `parity` parity volumes per group;
    the stream."""
    stream = os.urandom((data_count - 1) * VOLUME + 100_003 + seed)
    split(stream, outdir, "--size", str(VOLUME), "--chunk-size", str(CHUNK), "--parity", str(parity), *options)
    return stream


def manifest_files(outdir):
    """{'image.001': path of its manifest, 'image.parity-001-1': ...}"""
    return {name[:-len(manifests.SUFFIX)]: os.path.join(outdir, name)
            for name in sorted(os.listdir(outdir)) if name.endswith(manifests.SUFFIX)}


@pytest.mark.parametrize("data_count, parity, group", [
    (1, 1, None), (3, 1, None), (2, 2, None), (4, 2, None), (3, 3, None), (5, 3, None), (5, 2, 2),
    (4, 4, None),
])
def test_every_combination_of_up_to_k_lost_volumes_is_rebuilt(tmp_path, data_count, parity, group):
    options = ["--group", str(group)] if group else []
    stream = make_set(tmp_path / "out", data_count, parity, *options)
    files = manifest_files(tmp_path / "out")
    group = group or data_count
    groups = -(-data_count // group)
    assert len(files) == data_count + groups * parity
    # Losses are counted per group: up to `parity` volumes of each group, data or parity; with
    # several groups, the losses of the first and the last group combine.
    by_group = [[name for name in files if _group_of(name, group) == g] for g in range(1, groups + 1)]
    cases = 0
    for first_lost in _losses(by_group[0], parity):
        for last_lost in _losses(by_group[-1], parity) if groups > 1 else [()]:
            lost = set(first_lost) | set(last_lost)
            assert restore_set(*[path for name, path in files.items() if name not in lost]) == stream, lost
            cases += 1
    assert cases > data_count
    # One more loss in a group is refused before a byte is written, naming what is lost.
    for lost in itertools.combinations(by_group[0], parity + 1):
        if all(".parity-" in name for name in lost) or len(lost) == len(files):
            continue     # parity volumes alone (the data is all there), or nothing left at all
        # (with all its parity volumes lost, the set is told to have parity volumes to give)
        with pytest.raises(Error, match=r"group 1 \(volumes .*\) lost \d data volumes? .* cannot be "
                                        r"rebuilt|which can rebuild lost volumes: give them too"):
            restore_set(*[path for name, path in files.items() if name not in lost])


def _group_of(name, group_size):
    suffix = name.rpartition(".")[2]
    if suffix.startswith("parity-"):
        return names.suffix_index(suffix.split("-")[1])
    return (names.suffix_index(suffix) - 1) // group_size + 1


def _losses(names, most):
    return [lost for count in range(most + 1) for lost in itertools.combinations(names, count)]


def test_the_command_rebuilds_and_says_what_it_rebuilt(tmp_path):
    stream = make_set(tmp_path / "out", 4, 2)
    out = tmp_path / "out"
    os.unlink(out / "image.004")                     # the last data volume, file and manifest
    os.unlink(out / "image.004.manifest")
    with open(out / "image.002", "r+b") as f:        # truncated
        f.truncate(1000)
    result = command("reassemble", out)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == stream
    text = result.stderr.decode()
    assert "volume 2 (" in text and "is truncated" in text and "rebuilding it from parity" in text
    assert "rebuilt volume 2 (256.0 KiB) from parity" in text
    assert "volume 4 of set 'image' is missing; rebuilding it from parity" in text
    assert re.search(r"rebuilt volume 4 \(97\.\d KiB\) from parity", text)


def test_more_losses_than_parity_are_refused_before_the_first_byte(tmp_path):
    make_set(tmp_path / "out", 4, 2)
    out = tmp_path / "out"
    for name in ("image.001", "image.003", "image.parity-001-2"):
        os.unlink(out / name)
        os.unlink(out / f"{name}.manifest")
    result = command("reassemble", out)
    assert result.stdout == b""
    assert_one_line_error(
        result, "reassemble",
        "missing volumes 1, 3 of 4 of set 'image'",
        "group 1 (volumes 1-4) lost 2 data volumes (1, 3) and has 1 of its 2 parity volumes: they "
        "cannot be rebuilt; find 1 more of the group's volumes (data or parity)")


def test_damaged_chunks_in_several_volumes_are_repaired(tmp_path):
    stream = make_set(tmp_path / "out", 5, 2)
    out = tmp_path / "out"
    # Two damaged volumes at the same chunk (as much as 2 parity volumes can take there), and
    # damage at other chunks in three more volumes, parity included.
    flip(out / "image.001", CHUNK + 5)
    flip(out / "image.003", CHUNK + 60_000)
    flip(out / "image.002", 0)
    flip(out / "image.005", 30_000)               # the short last volume

    flip(out / "image.parity-001-1", 3 * CHUNK + 9)
    result = command("reassemble", out)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == stream
    text = result.stderr.decode()
    for name, offset in (("image.001", CHUNK), ("image.003", CHUNK), ("image.002", 0), ("image.005", 0)):
        assert re.search(rf"{name}\): 1 damaged chunk \(at offset {offset}\) rebuilt from parity", text), text
    # A third damaged volume at the same chunk is beyond 2 parity volumes: refused, naming them.
    flip(out / "image.004", CHUNK + 7)
    result = command("reassemble", out)
    assert result.returncode == 1
    error = assert_one_line_error(result, "reassemble", "cannot rebuild group 1 (volumes 1-5)",
                                  f"at chunk 1 (offset {CHUNK})")
    for name in ("image.001", "image.003", "image.004"):
        assert name in error
    # Only what was verified or rebuilt reached the output, and it stopped before chunk 1 of volume 1.
    assert result.stdout == stream[:CHUNK]


def rewrite_manifests(paths, change):
    """Alter manifests consistently (change(manifest) edits one in place), keeping them well-formed."""
    for path in paths:
        manifest = manifests.read(str(path))
        change(manifest)
        path.write_bytes(manifest.to_json())


def test_volume_and_stream_hashes_are_checked_with_parity_too(tmp_path):
    stream = make_set(tmp_path / "out", 4, 1)
    out = tmp_path / "out"
    parity = out / "image.parity-001-1.manifest"

    def volume_2_hash(manifest):
        if isinstance(manifest, manifests.ParityManifest):
            manifest.data_volumes = [dataclasses.replace(entry, volume_digest=bytes(16)) if entry.index == 2
                                     else entry for entry in manifest.data_volumes]
        else:
            manifest.volume_digest = bytes(16)

    # Every chunk hash still matches: only the volume hash, which the parity manifest repeats, can tell.
    rewrite_manifests([out / "image.002.manifest", parity], volume_2_hash)
    result = command("reassemble", out)
    assert_one_line_error(result, "reassemble", f"volume 2 ({out}/image.002) does not match its manifest's "
                                                "volume hash although every chunk does")
    assert result.returncode == 1 and result.stdout == stream[:2 * VOLUME]

    make_set(tmp_path / "again", 4, 1)
    again = tmp_path / "again"

    def stream_hash(manifest):
        manifest.stream_digest = bytes(16)

    rewrite_manifests([again / "image.004.manifest", again / "image.parity-001-1.manifest"], stream_hash)
    result = command("reassemble", again)
    assert_one_line_error(result, "reassemble", "does not match the stream hash")
    assert result.returncode == 1


def test_copies_make_up_for_damage_beyond_the_parity(tmp_path):
    stream = make_set(tmp_path / "out", 3, 1)
    out, copy = tmp_path / "out", tmp_path / "copy"
    shutil.copytree(out, copy)
    # At chunk 0, volumes 1 and 2 of out/ are damaged: more than one parity volume can rebuild.
    # copy/ holds volume 1's chunk 0 intact (its own damage is at chunk 2), and its volume 2 is
    # damaged at chunk 0 too: parity rebuilds that one from the rest.
    flip(out / "image.001", 5)
    flip(out / "image.002", 9)
    flip(copy / "image.001", 2 * CHUNK + 5)
    flip(copy / "image.002", 7)
    assert command("reassemble", out).returncode == 1
    result = command("reassemble", out, copy, check_status=0)
    assert result.stdout == stream
    text = result.stderr.decode()
    assert f"volume 1: the chunk at offset 0 is damaged in {out}/image.001 and intact in {copy}/image.001" in text
    assert re.search(r"image\.002\): 1 damaged chunk \(at offset 0\) rebuilt from parity", text), text


def test_verify_reports_how_much_more_each_group_can_lose(tmp_path):
    make_set(tmp_path / "out", 5, 2, "--group", "3")
    out = tmp_path / "out"
    result = command("reassemble", "--verify", out)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert "group 1 (volumes 1-3, 2 parity volumes): intact; can still lose 2 more volumes" in text
    assert "group 2 (volumes 4-5, 2 parity volumes): intact; can still lose 2 more volumes" in text
    assert re.search(r"p1-2 +262144 +4 +ok +\S+image\.parity-001-2", text), text
    assert text.rstrip().endswith("all verified")

    os.unlink(out / "image.002")
    flip(out / "image.parity-002-1", 10)
    result = command("reassemble", "--verify", out)
    assert result.returncode == 3, result.stderr.decode()
    text = result.stdout.decode()
    assert "group 1 (volumes 1-3, 2 parity volumes): 1 volume(s) lost or damaged, all rebuildable; " \
           "can still lose 1 more volume" in text
    assert "group 2 (volumes 4-5, 2 parity volumes): 1 volume(s) lost or damaged, all rebuildable; " \
           "can still lose 1 more volume" in text
    assert re.search(r"\n +2 +262144 +4 +REBUILDABLE", text), text
    assert "reassemble rebuilds them from parity" in text

    for name in ("image.001", "image.003"):
        os.unlink(out / name)
    result = command("reassemble", "--verify", out)
    assert result.returncode == 1
    assert "group 1 (volumes 1-3, 2 parity volumes): 3 volumes lost at the same place, more than the " \
           "parity can rebuild: DATA LOST" in result.stdout.decode()
    assert_one_line_error(result, "reassemble", "group 1 cannot be rebuilt")


def test_parity_is_right_when_exec_deletes_each_volume_at_once(tmp_path):
    """What a user who burns and deletes each volume gets: the data volumes are gone from the
    spool before the parity volumes are finished, and the parity still rebuilds them."""
    spool, kept = tmp_path / "spool", tmp_path / "kept"
    kept.mkdir()
    stream = os.urandom(6 * VOLUME + 12_345)
    split(stream, spool, "--size", str(VOLUME), "--chunk-size", str(CHUNK), "--parity", "2", "--group", "4",
          "--exec", f'cp "$MIRRORPIPE_VOLUME" "$MIRRORPIPE_VOLUME.manifest" {kept} && '
                    f'rm "$MIRRORPIPE_VOLUME" "$MIRRORPIPE_VOLUME.manifest" && '
                    f'echo "$MIRRORPIPE_VOLUME_INDEX/$MIRRORPIPE_PARITY_GROUP-$MIRRORPIPE_PARITY_INDEX/'
                    f'$MIRRORPIPE_LAST" >> {tmp_path}/log')
    assert os.listdir(spool) == []
    log = (tmp_path / "log").read_text().split()
    # Each group's parity volumes follow its data volumes; only the very last file is LAST.
    assert log == ["1/-/0", "2/-/0", "3/-/0", "4/-/0", "/1-1/0", "/1-2/0",
                   "5/-/0", "6/-/0", "7/-/0", "/2-1/0", "/2-2/1"]
    # The parity volumes hold exactly the code's sums of the data volumes...
    pieces = [stream[i:i + VOLUME] for i in range(0, len(stream), VOLUME)]
    for group, members in ((1, pieces[:4]), (2, pieces[4:])):
        for p in range(2):
            assert (kept / f"image.parity-00{group}-{p + 1}").read_bytes() == parity_rows(members, 2)[p]
    # ...and rebuild lost volumes.
    files = manifest_files(kept)
    for lost in (("image.002", "image.004"), ("image.007", "image.parity-002-1"), ("image.005", "image.006")):
        assert restore_set(*[path for name, path in files.items() if name not in lost]) == stream


def test_stock_restore_ignores_parity_volumes(tmp_path):
    need_tools("zstd")
    stream = os.urandom(3 * VOLUME)
    compressed = sh("zstd -q -c", input=stream, check=True).stdout
    split(compressed, tmp_path / "out", "--size", "64K", "--chunk-size", "64K", "--parity", "2")
    assert any(".parity-" in name for name in os.listdir(tmp_path / "out"))
    result = sh(f"cat {tmp_path}/out/image.??? | zstd -d", check=True)
    assert result.stdout == stream


def test_parity_iso_images_restore_a_set_that_lost_an_image(tmp_path):
    need_tools("xorriso")
    stream = make_set(tmp_path / "out", 3, 1, "--iso")
    out = tmp_path / "out"
    names = sorted(os.listdir(out))
    assert names == ["image.001.iso", "image.002.iso", "image.003.iso", "image.parity-001-1.iso"]
    readme = _readme(out / "image.parity-001-1.iso", tmp_path / "parity.txt")
    assert "parity disc 1 of 1 of group 1 of the set 'image'" in readme
    readme = _readme(out / "image.002.iso", tmp_path / "data.txt")
    assert "PARITY DISCS: this set has 1 parity disc for every 240 data discs" in readme
    os.unlink(out / "image.002.iso")
    result = command("reassemble", out)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == stream
    assert "rebuilt volume 2" in result.stderr.decode()


def _readme(image, into):
    sh(f"xorriso -osirrox on -indev {image} -extract /README.TXT {into}", check=True)
    return into.read_text()


def test_burn_iso_packages_and_burns_a_parity_volume(tmp_path):
    need_tools("xorriso")
    stream = make_set(tmp_path / "out", 2, 1)
    # Burned (to a pseudo-drive, which xorriso treats as a disc) and verified like a data volume,
    # the disc then stands in for the parity volume.
    drive = tmp_path / "drive.img"
    drive.write_bytes(os.urandom(1 << 20))
    burned = command("burn-iso", "-q", "--overwrite", "--device", f"stdio:{drive}",
                     tmp_path / "out" / "image.parity-001-1")
    assert burned.returncode == 0, burned.stderr.decode()
    files = manifest_files(tmp_path / "out")
    result = command("reassemble", files["image.001"], drive)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == stream and "rebuilt volume 2" in result.stderr.decode()
    (tmp_path / "images").mkdir()
    result = command("burn-iso", "-o", tmp_path / "images", tmp_path / "out" / "image.parity-001-1")
    assert result.returncode == 0, result.stderr.decode()
    image = tmp_path / "images" / "image.parity-001-1.iso"
    found = finder.scan([str(image)])
    assert not found.volumes and len(found.parity) == 1
    assert found.parity[0].manifest.parity_index == 1


def test_parity_options(tmp_path):
    for args, message in ((["--parity", "0"], "0 parity volumes: choose 1 to 16"),
                          (["--parity", "17"], "17 parity volumes: choose 1 to 16"),
                          (["--parity", "2", "--group", "241"], "241 data volumes per group: choose 1 to 240"),
                          (["--group", "3"], "--group needs --parity")):
        result = command("split-span", "--size", "1M", *args, tmp_path / "out", input=b"x")
        assert result.returncode == 2
        assert_one_line_error(result, "split-span", message)


def test_a_set_given_without_its_parity_volumes_says_they_exist(tmp_path):
    make_set(tmp_path / "out", 3, 2)
    out = tmp_path / "out"
    os.unlink(out / "image.002")
    os.unlink(out / "image.002.manifest")
    data_only = [str(out / f"image.00{i}.manifest") for i in (1, 3)]
    result = command("reassemble", *data_only)
    assert_one_line_error(result, "reassemble", "missing volume 2 of 3",
                          "the set has 2 parity volumes per group of 240", "give them too")


def test_disc_by_disc_giving_up_says_how_to_rebuild_and_a_directory_of_copies_works(tmp_path, terminal):
    stream = make_set(tmp_path / "out", 4, 1, "--group", "2")
    out, drive, scratch = tmp_path / "out", tmp_path / "drive", tmp_path / "scratch"
    drive.mkdir()
    insert(drive, *volume_files(out, "image.001"))
    term = terminal(f"TMPDIR={tmp_path} exec reassemble {drive} > {tmp_path}/stream")
    term.read_until("insert disc 2 of set 'image' and press Enter")
    term.send("q")          # disc 2 is lost
    assert term.wait() == 1
    text = term.output.decode()
    assert "gave up waiting for disc 2 of set 'image'. The set has parity: run reassemble again and " \
           "answer l when it asks for disc 2; it rebuilds volume 2 from the other discs of group 1 (data " \
           "discs 1-2 and a parity disc of group 1), which it asks for, in 256.0 KiB of scratch space in " \
           f"{tmp_path} (TMPDIR), which has" in text.replace("\r\n", " ").replace("\n", " "), text

    # Doing what it says: the rest of group 1 copied into a directory, the next disc in the drive.
    scratch.mkdir()
    for path in volume_files(out, "image.001", "image.parity-001-1"):
        shutil.copy(path, scratch)
    insert(drive, *volume_files(out, "image.003"))
    term = terminal(f"exec reassemble {scratch} {drive} > {tmp_path}/stream")
    term.read_until("insert disc 4 of set 'image' and press Enter")
    insert(drive, *volume_files(out, "image.parity-002-1"))
    term.send("")
    term.read_until("this is parity disc 1 of group 2 of set 'image', not disc 4 of set 'image'")
    insert(drive, *volume_files(out, "image.004"))
    term.send("")
    assert term.wait() == 0, term.output.decode()
    assert "rebuilt volume 2 (256.0 KiB) from parity" in term.output.decode()
    assert (tmp_path / "stream").read_bytes() == stream


def test_disc_by_disc_rebuilds_a_lost_disc_and_a_damaged_one_from_the_other_discs(tmp_path, terminal):
    stream = make_set(tmp_path / "out", 4, 1, "--group", "2")
    out, drive = tmp_path / "out", tmp_path / "drive"
    drive.mkdir()
    flip(out / "image.003", 2 * CHUNK + 17)      # disc 3 is scratched in its third chunk
    insert(drive, *volume_files(out, "image.001"))
    term = terminal(f"TMPDIR={tmp_path} exec reassemble {drive} > {tmp_path}/stream")
    term.read_until("insert disc 2 of set 'image' and press Enter (l if it is lost or unreadable, q to give up)")
    answered = len(term.output)
    term.send("l")
    # Rebuilding volume 2 takes parity disc 1 of group 1 and disc 1 again.
    for wanted, name in (("parity disc 1 of group 1", "image.parity-001-1"), ("disc 1", "image.001"),
                         ("disc 3", "image.003"),
                         # disc 3 is damaged: its group's parity disc and disc 4 rebuild it,
                         # then disc 4, still in the drive, is read in its turn unasked.
                         ("parity disc 1 of group 2", "image.parity-002-1"), ("disc 4", "image.004")):
        # Each prompt is looked for after the last answer: matching an earlier one made the test
        # swap disc 4 while reassemble read it, which hung it under load.
        term.read_until(f"insert {wanted} ", since=answered)   # ('disc 4 (of 4)' once the end is known)
        answered = len(term.output)
        insert(drive, *volume_files(out, name))
        term.send("")
    assert term.wait() == 0, term.output.decode()
    text = term.output.decode()
    assert re.search(rf"rebuilding 1 volume of group 1 from its other discs, in 256\.0 KiB of scratch space "
                     rf"in {re.escape(str(tmp_path))}/mirrorpipe-rebuild-\w+ \({re.escape(str(tmp_path))} has "
                     r"[\d.]+ \w+ free\)", text), text
    assert "rebuilt volume 2 (256.0 KiB) from parity" in text
    assert f"corrupt data in volume 3 ({drive}/image.003) at offset {2 * CHUNK}" in text
    assert "rebuilt volume 3 (256.0 KiB) from parity" in text
    assert (tmp_path / "stream").read_bytes() == stream
    assert not [name for name in os.listdir(tmp_path) if name.startswith("mirrorpipe-rebuild-")]


def test_disc_by_disc_more_lost_discs_than_parity_is_refused_naming_them(tmp_path, terminal):
    make_set(tmp_path / "out", 4, 1, "--group", "2")
    drive = tmp_path / "drive"
    drive.mkdir()
    insert(drive, *volume_files(tmp_path / "out", "image.001"))
    term = terminal(f"TMPDIR={tmp_path} exec reassemble {drive} > {tmp_path}/stream")
    term.read_until("insert disc 2 of set 'image'")
    term.send("l")
    term.read_until("insert parity disc 1 of group 1 of set 'image'")
    term.send("l")
    assert term.wait() == 1
    text = term.output.decode()
    assert "parity volume 1 of group 1 of set 'image' is lost too" in text
    assert "reassemble: error: cannot rebuild group 1 of set 'image': parity volume 1 of group 1, volume 2 " \
           "are lost, more than its 1 parity volume can rebuild" in text, text
    assert not [name for name in os.listdir(tmp_path) if name.startswith("mirrorpipe-rebuild-")]


def test_rebuild_into_writes_replacements_that_make_the_set_whole(tmp_path):
    make_set(tmp_path / "out", 5, 1, "--group", "2")
    out, new = tmp_path / "out", tmp_path / "new"
    original = {name: (out / name).read_bytes() for name in os.listdir(out)}
    # Group 1 loses data volume 2 with its manifest, group 2 its only parity volume (its
    # manifest is made anew from the data manifests), group 3 has a damaged last volume.
    for name in ("image.002", "image.002.manifest", "image.parity-002-1", "image.parity-002-1.manifest"):
        os.unlink(out / name)
    flip(out / "image.005", 40_000)
    result = command("reassemble", "--verify", "--rebuild-into", new, out)
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(os.listdir(new)) == ["image.002", "image.002.manifest", "image.005", "image.005.manifest",
                                       "image.parity-002-1", "image.parity-002-1.manifest"]
    for name in ("image.002", "image.005", "image.parity-002-1"):
        assert (new / name).read_bytes() == original[name]
        assert f"wrote {new}/{name} (" in result.stderr.decode()
        # The manifests say the same as the originals (the made ones may differ in their time).
        made = manifests.parse((new / f"{name}.manifest").read_bytes())
        kept = manifests.parse(original[f"{name}.manifest"])
        made.created = kept.created
        assert made.to_json() == kept.to_json()
    for name in os.listdir(new):
        shutil.copy(new / name, out)
    result = command("reassemble", "--verify", out)
    assert result.returncode == 0 and result.stdout.decode().rstrip().endswith("all verified")


def test_rebuild_into_needs_verify_and_parity(tmp_path):
    split(os.urandom(1000), tmp_path / "plain", "--size", "64K")
    result = command("reassemble", "--rebuild-into", tmp_path / "new", tmp_path / "plain")
    assert result.returncode == 2
    assert_one_line_error(result, "reassemble", "--rebuild-into needs --verify")
    result = command("reassemble", "--verify", "--rebuild-into", tmp_path / "new", tmp_path / "plain")
    assert_one_line_error(result, "reassemble", "--rebuild-into rebuilds from parity volumes")

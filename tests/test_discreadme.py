"""disc/discreadme.py: the README.TXT of a disc, whose stock-tools restore is run as written (a
stream told compressed or not by its first bytes, one disc or many, a set of more than 899 discs)."""

import os
import pathlib
import tempfile

from conftest import KIB, MIB, need_tools, sh, write_set
from mirrorpipe.disc import discreadme, iso
from mirrorpipe.sets import manifests, names
from mirrorpipe.stream import frames


def test_a_stream_is_told_compressed_by_its_first_bytes():
    assert discreadme.looks_compressed(frames.stream_header())              # compress
    assert discreadme.looks_compressed(discreadme.ZSTD_MAGIC + b"\0" * 10)  # stock zstd
    assert discreadme.looks_compressed(bytes([0x50, 0x2A, 0x4D, 0x18]))     # any skippable frame
    for raw in (b"\0" * 512, b"PK\x03\x04", b"\xeb\x63\x90\x10", discreadme.ZSTD_MAGIC[:3], b""):
        assert not discreadme.looks_compressed(raw), raw


def test_the_stock_restore_of_a_one_disc_set_is_the_stream(tmp_path):
    """An uncompressed one-volume set: the README's one stock command, run with the disc's mount
    point and the target put in, writes the stream; it names no decompressor."""
    data = os.urandom(300 * KIB)
    (manifest,) = write_set(tmp_path / "disc", data, MIB)
    readme = discreadme.readme_text(manifest, "image.001", False)
    assert "The set fits on this one disc." in readme and "not compressed." in readme
    (command,) = stock_commands(readme, "cat ")
    assert command == (f"cat {discreadme.DISC_PLACEHOLDER}/image.001 | dd of={discreadme.TARGET_PLACEHOLDER} "
                       "bs=4M conv=fsync")
    target = tmp_path / "target.img"
    sh(command.replace(discreadme.DISC_PLACEHOLDER, str(tmp_path / "disc"))
       .replace(discreadme.TARGET_PLACEHOLDER, str(target)), check=True)
    assert target.read_bytes() == data


def test_a_disc_that_cannot_tell_gives_both_ways_and_how_to_tell():
    _, second, last = manifests_of_a_set(3)
    readme = discreadme.readme_text(second, "image.002")
    assert "This is disc 2 of the set 'image'" in readme
    assert "The last disc of the set says how many discs there are." in readme
    assert "head -c 4 image.001 | od -An -tx1" in readme
    assert [line.split(" | ")[1] for line in stock_commands(readme, "cat ")] == ["zstd -d", "dd of=/dev/sdX bs=4M conv=fsync"]
    assert [line.split(" | ")[1] for line in stock_commands(readme, "reassemble ")] == \
        ["compress -d", "compress -d", "write-disk /dev/sdX", "write-disk /dev/sdX      # or from the drive, unmounted"]
    whole = discreadme.readme_text(last, "image.003", True)
    assert "This is disc 3 of 3 of the set 'image'" in whole and "It is the last disc of the set." in whole
    assert "head -c 4" not in whole and "zstd-compressed." in whole


def manifests_of_a_set(count):
    """The manifests of a set of count volumes of 64 KiB (written to a temporary directory)."""
    with tempfile.TemporaryDirectory() as directory:
        return write_set(directory, os.urandom((count - 1) * manifests.MIN_VOLUME_SIZE + 1000),
                         manifests.MIN_VOLUME_SIZE)


def stock_commands(readme, start="cat "):
    """The command lines (indented 4) of a README.TXT that start with `start`, in order: for the
    stock-tools restore ('cat '), the first is for a zstd stream."""
    return [line[4:] for line in readme.splitlines() if line.startswith("    " + start)]


def test_readme_of_disc_900_restores_a_set_of_more_than_899_volumes(tmp_path):
    """From disc 900 on the volume numbers widen (image.90000): the README's stock restore still
    joins every volume in order, tier by tier, and its hint reads volume 1 (image.001)."""
    need_tools("zstd")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)   # tmpfs: 1,800 fsyncs cost nothing
    with tempfile.TemporaryDirectory(dir=base) as directory:
        work = pathlib.Path(directory)
        raw, volumes = work / "raw.img", work / "set"
        raw.write_bytes(os.urandom(901 * manifests.MIN_VOLUME_SIZE))
        sh(f"compress < {raw} | split-span --size {manifests.MIN_VOLUME_SIZE} {volumes}", check=True)
        count = manifests.read(str(max(volumes.glob("image.9????.manifest")))).volume_count
        assert count > 900
        image = work / "image.90000.iso"
        iso.package(str(volumes / "image.90000"), str(image))
        with iso.Disc(str(image)) as disc:
            readme = disc.readme_text
        assert "This is disc 900 of the set 'image'" in readme
        command = stock_commands(readme)[0]
        assert command.startswith("cat image.??? image.9???? | zstd -d | dd of=/dev/sdX"), command
        target = work / "target.img"
        sh(f"cd {volumes} && " + command.replace(discreadme.TARGET_PLACEHOLDER, str(target)), check=True)
        assert target.read_bytes() == raw.read_bytes()
        # Disc 1 cannot know how far the set reaches: it says so, and the last disc's command is whole.
        first = discreadme.readme_text(manifests.read(str(volumes / "image.001.manifest")), "image.001", True)
        assert stock_commands(first)[0].startswith("cat image.??? | zstd -d") and "joins a set of up to 899 discs" in first
        last = manifests.read(str(volumes / f"image.{names.volume_suffix(count)}.manifest"))
        whole = discreadme.readme_text(last, f"image.{names.volume_suffix(count)}", True)
        assert stock_commands(whole)[0].startswith("cat image.??? image.9???? | zstd -d") and "for a larger set" not in whole
        # Where the disc cannot tell whether the stream is compressed, its hint reads volume 1.
        unknown = discreadme.readme_text(manifests.read(str(volumes / "image.90000.manifest")), "image.90000")
        hint = next(line for line in unknown.splitlines() if line.startswith("head -c 4 "))
        assert hint.startswith("head -c 4 image.001 | od -An -tx1"), hint
        shown = sh(f"cd {volumes} && {hint.rstrip(').')}", check=True).stdout.decode()
        assert shown.split() == ["5b", "2a", "4d", "18"]

"""Sets as ISO images: split-span --iso writes them, reassemble reads them as files, in
directories, and from a drive disc by disc (a loop device whose image is swapped)."""

import os
import subprocess

import pytest

from conftest import MIB, flip, need_root, need_tools, sh


@pytest.fixture
def iso_set(tmp_path):
    """A compressed stream cut into three ISO images by split-span --iso; (directory, raw data)."""
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(5 * MIB) + bytes(10 * MIB) + os.urandom(5 * MIB))
    out = tmp_path / "out"
    log = tmp_path / "exec.log"
    result = sh(f"compress -1 < {raw} | split-span --size 4M --iso "
                f"--exec 'echo \"$MIRRORPIPE_VOLUME_INDEX {{}}\" >> {log}' {out}")
    assert result.returncode == 0, result.stderr_text
    return out, raw.read_bytes(), log


def test_split_span_iso_writes_images_and_hands_them_to_exec(iso_set):
    out, _, log = iso_set
    images = sorted(os.listdir(out))
    assert images and all(name.endswith(".iso") for name in images)   # no volume left beside them
    lines = log.read_text().split("\n")[:-1]
    assert lines == [f"{i} {out}/{name}" for i, name in enumerate(images, start=1)]


def test_reassemble_reads_images_in_a_directory_and_as_files(iso_set):
    out, raw, _ = iso_set
    assert sh(f"reassemble {out} | compress -d", check=True).stdout == raw
    files = " ".join(str(out / name) for name in reversed(sorted(os.listdir(out))))
    assert sh(f"reassemble {files} | compress -d", check=True).stdout == raw
    table = sh(f"reassemble --verify {out}", check=True).stdout.decode()
    assert "all verified" in table


def test_stock_tools_read_the_volume_out_of_an_image(iso_set, tmp_path):
    need_tools("7z")
    out, raw, _ = iso_set
    extracted = tmp_path / "extracted"
    for name in sorted(os.listdir(out)):
        sh(f"7z x -y -o{extracted} {out / name}", check=True)
    assert sh(f"cat {extracted}/image.??? | zstd -d -q", check=True).stdout == raw


def test_a_damaged_image_is_refused(iso_set):
    out, _, _ = iso_set
    image = out / sorted(os.listdir(out))[1]
    flip(image, os.path.getsize(image) // 2, mask=0x40)
    result = sh(f"reassemble {out} > /dev/null")
    assert result.returncode == 1
    assert "corrupt data in volume 2" in result.stderr_text


def test_disc_by_disc_from_a_drive(iso_set, tmp_path, terminal):
    """A loop device stands in for the drive: 'inserting a disc' attaches another image to it."""
    need_root()
    need_tools("losetup")
    out, raw, _ = iso_set
    images = [out / name for name in sorted(os.listdir(out))]
    drive = subprocess.run(["losetup", "-f", "--show", "-r", str(images[0])],
                           capture_output=True, text=True)
    if drive.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {drive.stderr.strip()}")
    drive = drive.stdout.strip()
    try:
        term = terminal(f"exec reassemble {drive} > {tmp_path}/stream")
        for index, image in enumerate(images[1:], start=2):
            term.read_until(f"insert disc {index} of set 'image'")
            subprocess.run(["losetup", "-d", drive], check=True)
            subprocess.run(["losetup", "-r", drive, str(image)], check=True)
            term.send("")
        assert term.wait() == 0, term.output.decode(errors="replace")
    finally:
        subprocess.run(["losetup", "-d", drive], stderr=subprocess.DEVNULL)
    assert sh(f"compress -d < {tmp_path}/stream", check=True).stdout == raw


def test_burned_as_made_then_restored_from_the_discs(tmp_path):
    """The README's flow: each image burned (to xorriso's stdio: pseudo-drives) and removed as
    soon as split-span finishes it; the discs, files without an .iso name, restore the stream."""
    need_tools("xorriso")
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(9 * MIB))
    burned = tmp_path / "burned"
    burned.mkdir()
    result = sh(f"compress < {raw} | split-span --size 4M --iso --exec "
                f"'burn-iso -q --device stdio:{burned}/disc$MIRRORPIPE_VOLUME_INDEX {{}} && rm {{}}' "
                f"{tmp_path}/spool")
    assert result.returncode == 0, result.stderr_text
    assert os.listdir(tmp_path / "spool") == []
    discs = sorted(os.listdir(burned), reverse=True)
    assert discs == ["disc3", "disc2", "disc1"]
    restored = sh(f"reassemble {' '.join(str(burned / d) for d in discs)} | compress -d", check=True)
    assert restored.stdout == raw.read_bytes()


def test_an_image_and_the_volume_file_make_up_for_each_other(tmp_path):
    """Two copies of volume 2, its file and its ISO image, each damaged in another chunk: every
    chunk comes from the copy that holds it intact."""
    raw = os.urandom(10 * MIB)
    out, images = tmp_path / "out", tmp_path / "images"
    assert sh(f"split-span -q --size 4M --chunk-size 1M {out}", input=raw).returncode == 0
    images.mkdir()
    assert sh(f"burn-iso -q -o {images} {out}/image.002").returncode == 0
    image = images / "image.002.iso"
    volume = (out / "image.002").read_bytes()
    start = image.read_bytes().index(volume[:4096])      # where the volume lies in the image
    flip(out / "image.002", 1 * MIB + 77, mask=0x01)      # chunk 1 of the volume file
    flip(image, start + 3 * MIB + 77, mask=0x01)          # chunk 3 of the image's volume
    result = sh(f"reassemble {out} {image}")
    assert result.returncode == 0, result.stderr_text
    assert result.stdout == raw
    assert f"the chunk at offset {MIB} is damaged in {out}/image.002 and intact in {image}" in result.stderr_text
    verify = sh(f"reassemble --verify {out} {image}")
    assert verify.returncode == 3, verify.stderr_text
    table = verify.stdout.decode()
    assert f"the chunk at offset {3 * MIB} is damaged in {image}" in table, table
    assert "ok-copy-bad" in table

"""burn-iso: packaging volumes, burning a set disc by disc through a pseudo-terminal onto
xorriso's stdio: pseudo-drives (with a too-small, a non-blank and failing "discs" on the way),
and restoring from the discs with stock tools exactly as their README.TXT says. The burn workflow
in-process (disc/burner.py) is test_burner.py."""

import os
import re
import subprocess

import pytest

from conftest import assert_one_line_error, need_tools, sh
from mirrorpipe.disc import discreadme, iso
from mirrorpipe.sets import manifests

pytestmark = pytest.mark.usefixtures("tools")


@pytest.fixture
def tools():
    need_tools("xorriso", "zstd")


@pytest.fixture
def volume_set(tmp_path):
    """A compressed stream of 2.5 MB of random data cut into three volumes: (raw data, set dir)."""
    raw = tmp_path / "raw.img"
    raw.write_bytes(os.urandom(2_500_000))
    sh(f"compress < {raw} | split-span --size 1M --name pc1 {tmp_path}/set", check=True)
    assert sorted(os.listdir(tmp_path / "set"))[-2:] == ["pc1.003", "pc1.003.manifest"]
    return raw, tmp_path / "set"


def test_packages_each_volume(volume_set, tmp_path):
    _, set_dir = volume_set
    out = tmp_path / "iso"
    out.mkdir()
    result = sh(f"burn-iso -q -o {out} {set_dir}/pc1.??? && ls {out}", check=True)
    assert result.stdout.decode().split() == ["pc1.001.iso", "pc1.002.iso", "pc1.003.iso"]
    for index in (1, 2, 3):
        with iso.Disc(str(out / f"pc1.00{index}.iso")) as disc:
            assert disc.manifest_bytes == (set_dir / f"pc1.00{index}.manifest").read_bytes()
            iso.verify(disc)
            # Volume 1 beside them tells every disc that the stream is zstd.
            assert "This set's stream is zstd-compressed." in disc.readme_text


def test_usage_errors(volume_set, tmp_path):
    _, set_dir = volume_set
    assert_one_line_error(sh(f"burn-iso --overwrite {set_dir}/pc1.001"), "burn-iso", "--device")
    assert_one_line_error(sh(f"burn-iso -o {tmp_path}/nowhere {set_dir}/pc1.001"), "burn-iso", "not a directory")
    (tmp_path / "stray").write_bytes(b"not a volume")
    result = sh(f"burn-iso --device stdio:{tmp_path}/drive {tmp_path}/stray")
    assert_one_line_error(result, "burn-iso", "neither a volume")
    assert result.returncode == 2
    result = sh(f"burn-iso {tmp_path}/missing.001")
    assert_one_line_error(result, "burn-iso", "missing.001 has no manifest beside it")
    assert not list(tmp_path.glob("*.iso*"))


def test_burns_a_set_disc_by_disc(volume_set, tmp_path, terminal, loop_device):
    """Images and a volume burned in one run; the test plays the user changing discs by pointing
    the drive link at another file (or device) before pressing Enter."""
    raw, set_dir = volume_set
    sh(f"burn-iso -q {set_dir}/pc1.001 {set_dir}/pc1.002", check=True)
    small = tmp_path / "small.img"
    small.write_bytes(bytes(1 << 20))
    drive = tmp_path / "drive"
    discs = tmp_path / "discs"
    discs.mkdir()
    used = tmp_path / "used.img"
    used.write_bytes(os.urandom(1 << 20))

    def insert(target):
        drive.unlink(missing_ok=True)
        drive.symlink_to(target)

    insert(loop_device(small))
    term = terminal(f"burn-iso --no-progress --device stdio:{drive} "
                    f"{set_dir}/pc1.001.iso {set_dir}/pc1.002.iso {set_dir}/pc1.003")
    label = "disc 1 of set 'pc1' (pc1.001.iso)"
    term.read_until("press Enter")
    assert re.search(rf"{re.escape(label)}: the disc in stdio:\S+ is too small: \d+ free sectors", term.output.decode())
    insert(used)
    term.output = b""
    term.send("")
    term.read_until("press Enter")
    assert f"{label}: the disc in stdio:{drive} is not blank" in term.output.decode()
    insert("/dev/full")             # takes nothing: the burn fails
    term.output = b""
    term.send("")
    term.read_until("press Enter")
    assert f"{label}: failed: xorriso could not burn pc1.001.iso" in term.output.decode()
    insert(discs / "1")
    term.output = b""
    term.send("")
    term.read_until("Insert a blank disc for disc 2 of set 'pc1'")
    assert f"{label}: burned and verified" in term.output.decode()
    insert("/dev/zero")             # swallows everything: reading the disc back fails
    term.output = b""
    term.send("")
    term.read_until("press Enter")
    assert "disc 2 of set 'pc1' (pc1.002.iso): failed: " in term.output.decode()
    insert(discs / "2")
    term.send("")
    term.read_until("Insert a blank disc for disc 3 of set 'pc1' (pc1.003)")
    insert(discs / "3")
    term.send("")
    assert term.wait() == 0, term.output.decode()
    assert "disc 3 of set 'pc1' (pc1.003): burned and verified" in term.output.decode()
    assert not [name for name in os.listdir(set_dir) if name.startswith(".")], "temporary image left"

    # Each burned "disc" holds its volume as the manifest says, and the set restores from them.
    for index in (1, 2, 3):
        with iso.Disc(str(discs / str(index))) as disc:
            assert disc.manifest.index == index
            iso.verify(disc)
    sh(f"reassemble {discs}/3 {discs}/1 {discs}/2 | compress -d > {tmp_path}/out.img", check=True)
    assert (tmp_path / "out.img").read_bytes() == raw.read_bytes()


def test_stopping_at_a_prompt_names_the_disc(volume_set, tmp_path, terminal):
    _, set_dir = volume_set
    drive = tmp_path / "used.img"
    drive.write_bytes(os.urandom(1 << 20))
    term = terminal(f"burn-iso --no-progress --device stdio:{drive} {set_dir}/pc1.001")
    term.read_until("press Enter")
    term.send("q")
    assert term.wait() == 1
    text = term.output.decode()
    assert "burn-iso: error: disc 1 of set 'pc1' (pc1.001): the disc in " in text
    assert "stopped; no disc was burned" in text
    assert "Traceback" not in text


def test_without_a_terminal_a_bad_disc_stops(volume_set, tmp_path):
    _, set_dir = volume_set
    drive = tmp_path / "used.img"
    drive.write_bytes(os.urandom(1 << 20))
    result = subprocess.run(["burn-iso", "--device", f"stdio:{drive}", f"{set_dir}/pc1.001"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)   # no controlling terminal
    result.stderr_text = result.stderr.decode()
    assert_one_line_error(result, "burn-iso", "disc 1 of set 'pc1' (pc1.001): the disc in",
                          "not blank", "no terminal to ask for another disc")
    assert result.returncode == 1


def test_an_image_with_a_damaged_file_system_is_refused_before_any_disc(volume_set, tmp_path):
    """An image whose primary volume descriptor is gone still reads through UDF, but would make
    a disc that ISO 9660 readers cannot read: burn-iso refuses it before touching the drive,
    rather than failing the check of every disc it burns."""
    _, set_dir = volume_set
    sh(f"burn-iso -q -o {tmp_path} {set_dir}/pc1.001", check=True)
    image = tmp_path / "pc1.001.iso"
    with open(image, "r+b") as stream:
        stream.seek(16 * iso.SECTOR_SIZE)
        stream.write(bytes(iso.SECTOR_SIZE))
    drive = tmp_path / "blank.img"
    result = sh(f"burn-iso --device stdio:{drive} {image}")
    assert result.returncode == 1
    assert_one_line_error(result, "burn-iso", f"{image}: a file system of the disc is damaged",
                          "ISO 9660: no primary volume descriptor")
    assert not drive.exists()


def test_overwrite_reuses_a_written_disc(volume_set, tmp_path):
    _, set_dir = volume_set
    drive = tmp_path / "used.img"
    drive.write_bytes(os.urandom(1 << 20))
    sh(f"burn-iso -q --overwrite --device stdio:{drive} {set_dir}/pc1.002", check=True)
    with iso.Disc(str(drive)) as disc:
        assert disc.manifest.index == 2
        iso.verify(disc)


def stock_restore_script(readme):
    """The stock-tools commands of a README.TXT for a zstd stream, as written there."""
    section = readme.split("RESTORE WITH STOCK TOOLS ONLY", 1)[1]
    lines = []
    for line in section.splitlines()[1:]:
        if line.startswith("  if it is not compressed"):
            break
        if line.startswith("    "):
            lines.append(line[4:])
    return "\n".join(lines) + "\n"


def test_stock_tools_restore_as_the_readme_says(volume_set, tmp_path):
    """Runs the README's loop in sh, answering its prompts and 'mounting' each disc (extracting
    the image where the README says the disc is mounted), then compares the restored disk."""
    raw, set_dir = volume_set
    sh(f"burn-iso -q {set_dir}/pc1.???", check=True)
    with iso.Disc(str(set_dir / "pc1.003.iso")) as disc:
        readme = disc.readme_text
    script = stock_restore_script(readme)
    assert "while :; do" in script and "zstd -d | dd of=/dev/sdX bs=4M" in script
    mount = tmp_path / "cdrom"
    target = tmp_path / "target.img"
    script = script.replace(discreadme.DISC_PLACEHOLDER, str(mount)).replace(
        discreadme.TARGET_PLACEHOLDER, str(target))
    work = tmp_path / "work"
    work.mkdir()
    shell = subprocess.Popen(["sh", "-e", "-c", script], cwd=work, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for index in (1, 2, 3):
        prompt = b""
        while not prompt.endswith(b"press Enter: "):
            byte = shell.stdout.read(1)
            assert byte, f"the script ended before asking for disc {index}: {shell.stderr.read()!r}"
            prompt += byte
        assert f"Insert disc {index} of set pc1".encode() in prompt
        subprocess.run(["rm", "-rf", str(mount)], check=True)
        subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(set_dir / f"pc1.00{index}.iso"),
                        "-extract", "/", str(mount)], check=True, stderr=subprocess.DEVNULL)
        shell.stdin.write(b"\n")
        shell.stdin.flush()
    shell.stdin.close()
    assert shell.wait(timeout=60) == 0, shell.stderr.read()
    assert target.read_bytes() == raw.read_bytes()


def test_stock_tools_restore_of_a_one_disc_set(tmp_path):
    raw = tmp_path / "raw.img"
    raw.write_bytes(os.urandom(300_000))
    sh(f"compress < {raw} | split-span --size 1M --name one {tmp_path}/set && "
       f"burn-iso -q -o {tmp_path} {tmp_path}/set/one.001", check=True)
    mount, target = tmp_path / "cdrom", tmp_path / "target.img"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(tmp_path / "one.001.iso"), "-extract", "/",
                    str(mount)], check=True, stderr=subprocess.DEVNULL)
    readme = (mount / "README.TXT").read_text()
    script = stock_restore_script(readme)
    assert script.count("\n") == 1, script
    script = script.replace(discreadme.DISC_PLACEHOLDER, str(mount)).replace(
        discreadme.TARGET_PLACEHOLDER, str(target))
    sh(script, check=True)
    assert target.read_bytes() == raw.read_bytes()
    assert manifests.read(str(mount / "one.001.manifest")).volume_count == 1

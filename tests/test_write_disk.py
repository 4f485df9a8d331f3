"""write-disk: safe, durable writes to block devices and files."""

import os

import pytest

from conftest import assert_one_line_error, make_ext4_image, mount_or_skip, need_root, sh


def test_file_target_gets_holes_for_zero_blocks(tmp_path):
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.write(bytes(32 << 20))
        f.write(os.urandom(1 << 20))
        f.write(bytes(8 << 20))   # a zero tail must still give the full length
    result = sh(f"cat {src} | write-disk {tmp_path}/out")
    assert result.returncode == 0, result.stderr_text
    out = tmp_path / "out"
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_blocks * 512 < 8 << 20   # allocated: the two data MiB, not 42 MiB


def test_file_target_is_created_or_replaced(tmp_path):
    target = tmp_path / "restored.img"
    target.write_bytes(b"old content that is longer than the new one" * 1000)
    sh(f"printf 'new' | write-disk {target}", check=True)
    assert target.read_bytes() == b"new"


def test_block_device_round_trip_with_verify(tmp_path, loop_device):
    image = make_ext4_image(tmp_path / "disk.img")
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(image.stat().st_size)
    device = loop_device(blank)
    result = sh(f"read-disk {image} | write-disk --verify {device}")
    assert result.returncode == 0, result.stderr_text
    assert sh(f"cmp {device} {image}").returncode == 0


def test_refuses_a_disk_with_a_file_system_without_a_terminal_unless_forced(tmp_path, loop_device):
    image = make_ext4_image(tmp_path / "disk.img")
    device = loop_device(make_ext4_image(tmp_path / "other.img", seed=2))
    before = open(device, "rb").read(1 << 20)
    result = sh(f"read-disk {image} | write-disk {device}")
    assert result.returncode == 1
    assert_one_line_error(result, "write-disk", "ext2/3/4 file system", "--force")
    assert open(device, "rb").read(1 << 20) == before
    assert sh(f"read-disk {image} | write-disk --force {device}").returncode == 0
    assert sh(f"cmp {device} {image}").returncode == 0


@pytest.mark.parametrize("answer,written", [("no", False), ("yes", True)])
def test_asks_on_the_terminal_before_overwriting(tmp_path, loop_device, terminal, answer, written):
    image = make_ext4_image(tmp_path / "disk.img")
    device = loop_device(make_ext4_image(tmp_path / "other.img", seed=2))
    term = terminal(f"read-disk {image} | write-disk {device}")
    term.read_until("Type 'yes' to continue:")
    term.send(answer)
    status = term.wait()
    assert (status == 0) == written
    assert (sh(f"cmp {device} {image}").returncode == 0) == written
    if not written:
        assert b"not confirmed; nothing was written" in term.output


def test_refuses_a_mounted_target_before_writing(tmp_path, loop_device):
    device = loop_device(make_ext4_image(tmp_path / "disk.img"))
    mount_or_skip(device, tmp_path / "mnt")
    result = sh(f"head -c 1M /dev/urandom | write-disk --force {device}")
    assert result.returncode == 1
    assert_one_line_error(result, "write-disk", "is mounted at", "unmount it first")


def test_refuses_the_disk_the_system_runs_on():
    need_root()
    root_source = sh("findmnt -n -o SOURCE /").stdout.decode().strip()
    if not root_source.startswith("/dev/") or not os.path.exists(root_source):
        pytest.skip(f"the root file system is not on a block device here ({root_source!r})")
    result = sh(f"write-disk --force {root_source} < /dev/null")
    assert result.returncode == 1
    assert_one_line_error(result, "write-disk", "refusing to write")


def test_target_too_small_never_writes_past_its_end(tmp_path, loop_device):
    backing = tmp_path / "backing.img"
    guard = os.urandom(4 << 20)
    with open(backing, "wb") as f:
        f.write(bytes(16 << 20))
        f.write(guard)              # bytes just past the device's end must survive
    device = loop_device(backing, "--sizelimit", str(16 << 20))
    result = sh(f"head -c 20M /dev/urandom | write-disk --force {device}")
    assert result.returncode == 1
    error = assert_one_line_error(result, "write-disk", "target too small", str(16 << 20))
    assert "at least" in error
    with open(backing, "rb") as f:
        f.seek(16 << 20)
        assert f.read() == guard


def test_input_from_a_terminal_and_bad_targets(tmp_path, terminal):
    term = terminal(f"write-disk {tmp_path}/x < /dev/tty")
    assert term.wait() == 2
    assert b"refusing to read binary data from a terminal" in term.output
    assert_one_line_error(sh(f"write-disk {tmp_path} < /dev/null"), "write-disk", "is a directory")
    assert_one_line_error(sh(f"write-disk {tmp_path}/no/such/dir/x < /dev/null"), "write-disk",
                          "cannot create")


def test_zero_runs_are_really_zeroed_on_a_used_device(tmp_path, loop_device):
    """Zero runs skip the write on block devices too (the kernel zeroes them in one call): the
    device's old content must not show through."""
    backing = tmp_path / "used.img"
    backing.write_bytes(os.urandom(24 << 20))
    device = loop_device(backing)
    image = tmp_path / "image"
    with open(image, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.write(bytes(20 << 20))
        f.write(os.urandom(1 << 20) + bytes(1000))
    result = sh(f"compress < {image} | compress -d | write-disk --force --verify {device}")
    assert result.returncode == 0, result.stderr_text
    with open(device, "rb") as f:
        assert f.read(image.stat().st_size) == image.read_bytes()


def test_dash_is_not_a_target(tmp_path):
    result = sh(f"cd {tmp_path} && printf x | write-disk -")
    assert result.returncode == 2
    assert_one_line_error(result, "write-disk", "not to standard output")
    assert not (tmp_path / "-").exists()

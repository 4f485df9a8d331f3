"""write-disk: safe, durable writes to block devices and files."""

import os
import stat
import subprocess
import time

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
    assert f"{device} holds a partial image: bytes 0-{(16 << 20) - 1} were written from the " \
           "stream, the rest of the disk is unchanged" in error
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


def test_an_existing_file_is_untouched_until_the_first_byte(tmp_path):
    """write-disk waiting for its input has changed nothing: the file is emptied when the first
    byte arrives, not when it is opened."""
    target = tmp_path / "victim.img"
    old = os.urandom(1 << 20)
    target.write_bytes(old)
    read_end, write_end = os.pipe()
    process = subprocess.Popen(["write-disk", str(target)], stdin=read_end, stderr=subprocess.PIPE)
    os.close(read_end)
    try:
        deadline = time.monotonic() + 30
        while not any(os.path.realpath(f"/proc/{process.pid}/fd/{fd}") == str(target)
                      for fd in os.listdir(f"/proc/{process.pid}/fd")):
            assert time.monotonic() < deadline, "write-disk never opened its target"
            time.sleep(0.01)
        time.sleep(0.2)
        assert target.read_bytes() == old
        os.write(write_end, b"new image")
    finally:
        os.close(write_end)
    assert process.wait(timeout=30) == 0, process.stderr.read()
    assert target.read_bytes() == b"new image"


@pytest.mark.parametrize("upstream", ["compress -d < /dev/null", "head -c 5M /dev/urandom | compress -d"])
def test_a_stream_that_fails_before_its_first_byte_leaves_the_file_as_it_was(tmp_path, upstream):
    target = tmp_path / "victim.img"
    old = os.urandom(10 << 20)
    target.write_bytes(old)
    result = sh(f"set +o pipefail; {upstream} | write-disk {target}; exit ${{PIPESTATUS[-1]}}")
    assert_one_line_error(result, "write-disk", "nothing was written", f"{target} is unchanged")
    assert target.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["victim.img"]


def test_a_file_made_for_a_stream_that_never_came_is_removed(tmp_path):
    result = sh(f"set +o pipefail; compress -d < /dev/null | write-disk {tmp_path}/new.img; "
                "exit ${PIPESTATUS[1]}")
    assert_one_line_error(result, "write-disk", "nothing was written", "was not created")
    assert os.listdir(tmp_path) == []


def test_a_file_emptied_at_the_first_byte_is_not_called_unchanged(tmp_path):
    """The first byte came (the file was emptied) but its first block found no room: the message
    says the file was emptied, not that it is unchanged."""
    need_root()
    full = tmp_path / "small"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        target = full / "victim.img"
        target.write_bytes(os.urandom(64 << 10))
        result = sh(f"head -c 2M /dev/urandom | write-disk {target}")
        assert_one_line_error(result, "write-disk", "no space left",
                              f"nothing was written from the stream, but {target} was emptied")
        assert target.stat().st_size == 0
    finally:
        subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("pipeline", [
    "write-disk {target} < {target}",
    "cat {target} | write-disk {target}",
    "compress < {target} > {target}.zst && compress -d < {target}.zst | write-disk {target}.zst",
])
def test_refuses_a_file_that_is_its_own_input(tmp_path, pipeline):
    target = tmp_path / "x.img"
    target.write_bytes(os.urandom(3 << 20))
    before = {name: (tmp_path / name).read_bytes() for name in ("x.img",)}
    result = sh(pipeline.format(target=target))
    error = assert_one_line_error(result, "write-disk", "refusing to write to", "input")
    assert "write to another file or device" in error
    assert (tmp_path / "x.img").read_bytes() == before["x.img"]
    if ".zst" in pipeline:
        assert sh(f"zstd -dc {target}.zst | cmp - {target}").returncode == 0


@pytest.mark.parametrize("pipeline", ["write-disk --force {device} < {device}",
                                      "read-disk {device} | write-disk --force {device}"])
def test_refuses_a_device_that_is_its_own_input(tmp_path, loop_device, pipeline):
    backing = tmp_path / "disk.img"
    backing.write_bytes(os.urandom(4 << 20))
    before = backing.read_bytes()
    device = loop_device(backing)
    result = sh(pipeline.format(device=device))
    assert_one_line_error(result, "write-disk", f"refusing to write to {device}", "input")
    assert backing.read_bytes() == before


def test_refuses_a_file_backing_a_mounted_loop_device(tmp_path, loop_device):
    target = make_ext4_image(tmp_path / "tgt.img")
    device = loop_device(target)
    mount_or_skip(device, tmp_path / "mnt")
    result = sh(f"head -c 1M /dev/urandom | write-disk --force {target}")
    assert_one_line_error(result, "write-disk", f"{target} backs {device}, which is mounted at "
                          f"{tmp_path}/mnt", "unmount it first")
    assert subprocess.run(["umount", str(tmp_path / "mnt")]).returncode == 0
    assert sh(f"e2fsck -fn {target}").returncode == 0   # not a byte of the stream reached it


def test_refuses_a_device_under_mounted_stacked_loops(tmp_path, loop_device):
    """/dev/loopA holds, at an offset, what /dev/loopB shows (as a partition would); loopC shows
    loopB; loopC mounted: loopA, loopB and the file behind loopA are all in use."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(96 << 20)
    bottom = loop_device(backing)
    middle = loop_device(bottom, "-o", str(1 << 20), "--sizelimit", str(80 << 20))
    subprocess.run(["mkfs.ext4", "-q", middle], check=True)
    top = loop_device(middle)
    mount_or_skip(top, tmp_path / "mnt")
    before = backing.read_bytes()
    mounted = f"which is mounted at {tmp_path}/mnt"
    for target, chain in [(bottom, f"{bottom} backs {middle}, which backs {top}, {mounted}"),
                          (middle, f"{middle} backs {top}, {mounted}"),
                          (backing, f"{backing} backs {bottom}, which backs {middle}, which backs {top}")]:
        result = sh(f"head -c 1M /dev/urandom | write-disk --force {target}")
        assert_one_line_error(result, "write-disk", f"refusing to write to {target}: {chain}")
    assert backing.read_bytes() == before
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    assert sh(f"head -c 1M /dev/urandom | write-disk --force {bottom}").returncode == 0


def test_refuses_a_named_terminal_and_writes_a_device_node_in_place(tmp_path, terminal):
    need_root()
    tty = tmp_path / "tty"
    os.mknod(tty, 0o666 | stat.S_IFCHR, os.makedev(5, 0))
    term = terminal(f"head -c 64K /dev/urandom | write-disk {tty}")
    assert term.wait() == 2
    assert b"refusing to write binary data to the terminal" in term.output
    assert len(term.output) < 1000
    null = tmp_path / "nulldev"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert sh(f"head -c 1M /dev/urandom | write-disk {null}").returncode == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode) and stat.S_ISCHR(os.lstat(tty).st_mode)

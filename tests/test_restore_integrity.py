"""A restore never reports success it did not have: when the stream into write-disk is cut short
(reassemble or `compress -d` failing or killed, before the first byte or in the middle), write-disk
exits non-zero and says what the target holds; a target that got no byte is unchanged."""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import MIB, assert_one_line_error, flip, need_root, open_files, sh

SIZE = 24 * MIB          # the backed-up disk
KILL_SIZE = 128 * MIB    # long enough to kill a command of the restore while it streams


def make_set(directory, size):
    """A compressed set of 4 MiB volumes (256 KiB chunks) of size random bytes; (set, source)."""
    directory.mkdir()
    source = directory / "source.img"
    source.write_bytes(os.urandom(size))
    sh(f"compress < {source} | split-span --size 4M --chunk-size 256K {directory}/set", check=True)
    return directory / "set", source


@pytest.fixture(scope="module")
def backup(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("restore") / "backup", SIZE)


@pytest.fixture(scope="module")
def big_backup(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("restore") / "big", KILL_SIZE)


class Target:
    """What write-disk writes to, holding old content: a file (shorter than the stream) or a
    loop device (longer than the stream)."""

    def __init__(self, kind, tmp_path, loop_device, size):
        self.kind = kind
        if kind == "file":
            self.path = tmp_path / "restored.img"
            self.path.write_bytes(os.urandom(10 * MIB))
        else:
            need_root()
            backing = tmp_path / "disk.img"
            backing.write_bytes(os.urandom(size + 8 * MIB))
            self.path = loop_device(backing)
        self.old = self.read()

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()


@pytest.fixture(params=["file", "loop device"])
def target(request, tmp_path, loop_device):
    return lambda size=SIZE: Target(request.param, tmp_path, loop_device, size)


def restore(set_dir, target, upstream="reassemble {set} | compress -d"):
    """The restore pipeline without pipefail; the result's returncode is write-disk's own."""
    pipeline = upstream.format(set=set_dir) + f" | write-disk --force {target.path}"
    return sh(f"set +o pipefail; {pipeline}; exit ${{PIPESTATUS[-1]}}")


def assert_partial(result, target, source):
    """write-disk failed naming a partial image of N bytes; the target holds the stream's first
    N bytes and, on a disk, its old content after them. Returns N."""
    source = source.read_bytes()
    error = assert_one_line_error(result, "write-disk", "holds a partial image")
    if target.kind == "file":
        written = int(re.search(r"its first (\d+) bytes were written from the stream", error).group(1))
        assert target.read() == source[:written], error
    else:
        last = re.search(r"bytes 0-(\d+) were written from the stream, the rest of the disk is "
                         r"unchanged", error)
        assert last, error
        written = int(last.group(1)) + 1
        now = target.read()
        assert now[:written] == source[:written]
        assert now[written:] == target.old[written:]
    assert 0 < written < len(source), error
    return written


@pytest.mark.parametrize("fault", ["empty directory", "missing volume"])
def test_a_restore_that_fails_before_its_first_byte_leaves_the_target_unchanged(
        tmp_path, backup, target, fault):
    set_dir, _ = backup
    copy = tmp_path / "copy"
    if fault == "empty directory":
        copy.mkdir()
    else:
        shutil.copytree(set_dir, copy)
        os.unlink(copy / "image.002")
    target = target()
    result = restore(copy, target)
    assert_one_line_error(result, "write-disk", "nothing was written", f"{target.path} is unchanged")
    assert target.read() == target.old


def test_a_flipped_bit_in_the_middle_leaves_a_named_partial_image(tmp_path, backup, target):
    set_dir, source = backup
    copy = tmp_path / "copy"
    shutil.copytree(set_dir, copy)
    volume = copy / "image.003"
    flip(volume, volume.stat().st_size // 2)
    target = target()
    written = assert_partial(restore(copy, target), target, source)
    # The flip is at compressed byte 10 MiB (random data: about raw byte 10 MiB); no byte of the
    # damaged frame reaches the target.
    assert written <= 10 * MIB


def _position_of(pid, path):
    """Where the process's descriptor open on path stands (bytes written so far), or None."""
    real = os.path.realpath(path)
    try:
        for fd, target in open_files(pid).items():
            if target == real:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    return int(f.readline().split()[1])
    except OSError:
        return None
    return None


@pytest.mark.parametrize("killed", ["reassemble", "compress"])
def test_a_killed_upstream_command_leaves_a_named_partial_image(tmp_path, big_backup, target, killed):
    set_dir, source = big_backup
    target = target(KILL_SIZE)
    pids = tmp_path / "pids"
    pids.mkdir()
    script = (f"(echo $BASHPID > {pids}/reassemble; exec reassemble {set_dir}) | "
              f"(echo $BASHPID > {pids}/compress; exec compress -d) | "
              f"(echo $BASHPID > {pids}/write-disk; exec write-disk --force {target.path}); "
              "exit ${PIPESTATUS[2]}")
    process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        writer = pids / "write-disk"
        position = _position_of(int(writer.read_text()), target.path) if writer.exists() and \
            writer.read_text().strip() else None
        if position and position >= 4 * MIB:
            os.kill(int((pids / killed).read_text()), signal.SIGKILL)
            break
        assert process.poll() is None, "the restore ended before it could be killed"
        time.sleep(0.001)
    else:
        process.kill()
        pytest.fail("write-disk wrote nothing within a minute")
    _, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, b"", stderr)
    result.stderr_text = stderr.decode("utf-8", "replace")
    assert_partial(result, target, source)

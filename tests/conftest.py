"""Fixtures shared by the test modules: the commands on PATH, shell pipelines, skips for root and
tools, loop devices, real ext4 images, and running a command on a pseudo-terminal."""

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The FUSE fault-injection fixtures (faultfs, faulty_loop_device) for the bad-sector tests.
pytest_plugins = ["faultfs"]

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin"

# The commands under test run from the checkout, with this interpreter's packages.
os.environ["PATH"] = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: a volume over 4 GiB (sparse: about a minute and little disk); "
                   "deselect with -m 'not large'")


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")


def need_tools(*names):
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (install the Debian packages .ci/run installs)")


def sh(script, input=None, timeout=300, check=False):
    """Run a bash script with pipefail; return the CompletedProcess with text stderr."""
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], input=input,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    result.stderr_text = result.stderr.decode("utf-8", "replace")
    if check and result.returncode != 0:
        raise AssertionError(f"{script!r} failed with {result.returncode}: {result.stderr_text}")
    return result


def assert_one_line_error(result, command, *fragments):
    """The error convention: non-zero exit, one line 'COMMAND: error: ...', no traceback."""
    text = result.stderr_text if hasattr(result, "stderr_text") else result.stderr.decode()
    lines = [line for line in text.splitlines() if line.strip()]
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in lines if line.startswith(f"{command}: error: ")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def make_file_tree(root, seed=1):
    """A directory of real files: text and binaries from the system plus a few random files."""
    root.mkdir(parents=True, exist_ok=True)
    for source in ("/usr/share/doc/zstd", "/usr/share/doc/e2fsprogs", "/usr/share/doc/xxhash"):
        if os.path.isdir(source):
            shutil.copytree(source, root / os.path.basename(source), dirs_exist_ok=True)
    for name in ("zstd", "xxhsum", "mke2fs"):
        path = shutil.which(name)
        if path:
            shutil.copy(path, root / name)
    rng = __import__("random").Random(seed)
    (root / "random.bin").write_bytes(rng.randbytes(3 << 20))
    (root / "hidden").mkdir(exist_ok=True)
    (root / "hidden" / ".secret").write_text("hidden system file\n" * 1000)
    return root


def make_ext4_image(path, size="64M", seed=1):
    """A real ext4 image at path filled with real files by mkfs.ext4 -d (no mount needed)."""
    need_tools("mkfs.ext4")
    tree = make_file_tree(path.parent / f"{path.name}.files", seed)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path), size], check=True)
    return path


@pytest.fixture
def ext4_image(tmp_path):
    return make_ext4_image(tmp_path / "disk.img")


@pytest.fixture
def loop_device():
    """Factory: attach an image file as a loop device (root only); all are detached afterwards."""
    attached = []

    def attach(image, *options):
        need_root()
        need_tools("losetup")
        result = subprocess.run(["losetup", "-f", "--show", *options, str(image)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot attach a loop device: {result.stderr.strip()}")
        device = result.stdout.strip()
        attached.append(device)
        return device

    yield attach
    for device in attached:
        subprocess.run(["umount", device], stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", device], stderr=subprocess.DEVNULL)


def mount_or_skip(device, directory):
    """Mount device on directory (made here), or skip the test; loop_device's teardown unmounts."""
    need_root()
    directory.mkdir()
    result = subprocess.run(["mount", str(device), str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    return directory


class Terminal:
    """A command running with a pseudo-terminal as its controlling terminal (/dev/tty) and as
    stderr; its stdin and stdout stay ordinary files or pipes."""

    def __init__(self, script):
        self.master, slave = pty.openpty()
        self.output = b""
        self.process = subprocess.Popen(
            ["bash", "-o", "pipefail", "-c", script], stderr=slave, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lambda: _take_terminal(slave))
        os.close(slave)

    def read_until(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; terminal shows {self.output!r}")
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {text!r}; it showed {self.output!r}")
                self.output += chunk
        return self.output

    def send(self, line):
        os.write(self.master, line.encode() + b"\n")

    def wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:
                    break
        status = self.process.wait(timeout=max(1, deadline - time.monotonic()))
        os.close(self.master)
        return status


def _take_terminal(fd):
    import fcntl
    import termios
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


@pytest.fixture
def terminal():
    """Factory: run a bash script on a fresh pseudo-terminal (see Terminal)."""
    started = []

    def start(script):
        term = Terminal(script)
        started.append(term)
        return term

    yield start
    for term in started:
        if term.process.poll() is None:
            term.process.kill()
            term.process.wait()

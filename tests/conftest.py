"""Everything more than one test module needs (README.md says which module tests what): the
commands on PATH and run (sh, command, split), skips for root and tools, sets written and restored
in-process (write_set, restore_set, two_sets), data (random_data, compressible_data) and damage
(flipped, flip), loop devices, real ext4 images, a command on a pseudo-terminal and a user
answering it (Terminal, answer_as_a_user), and a private sshd (ssh, remote)."""

import fcntl
import os
import pty
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import pytest

from mirrorpipe.sets import erasure, manifests, reader, writer

# The FUSE fault-injection fixtures (faultfs, faulty_loop_device) for the bad-sector tests.
pytest_plugins = ["faultfs"]

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin"
KIB = 1 << 10
MIB = 1 << 20

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


def command(name, *args, stdin=None, input=None, stdout=subprocess.PIPE, check_status=None, **kwargs):
    """Run bin/NAME without a terminal (its own session: /dev/tty cannot be opened); the result."""
    result = subprocess.run([str(BIN / name), *map(str, args)], stdin=stdin, input=input,
                            stdout=stdout, stderr=subprocess.PIPE, start_new_session=True, **kwargs)
    if check_status is not None:
        assert result.returncode == check_status, result.stderr.decode(errors="replace")
    return result


def split(data, outdir, *options):
    """`split-span OPTIONS OUTDIR` with data on stdin; it must succeed."""
    return command("split-span", *options, outdir, input=data, check_status=0)


def write_set(directory, data, volume_size, chunk_size=64 * KIB, name="image", **kwargs):
    """Cut data into a set in directory with VolumeSetWriter, in-process; the finished manifests."""
    with tempfile.TemporaryFile() as source:
        source.write(data)
        source.seek(0)
        set_writer = writer.VolumeSetWriter(str(directory), name, volume_size, chunk_size=chunk_size, **kwargs)
        return set_writer.write(source.fileno())


@pytest.fixture
def two_sets(tmp_path):
    """Two sets written in-process: 'image' of four 2 MiB volumes in a/ and 'other' in b/;
    (tmp_path, the stream of 'image')."""
    data = os.urandom(7 * MIB)
    write_set(tmp_path / "a", data, 2 * MIB)
    write_set(tmp_path / "b", os.urandom(3 * MIB), 2 * MIB, name="other")
    return tmp_path, data


def restore_set(*sources):
    """What `reassemble SOURCES` writes, run in-process (reader.Restore, the command's engine);
    errors.Error as the command would say it."""
    with tempfile.TemporaryFile() as out:
        reader.Restore([str(source) for source in sources]).run(out.fileno())
        out.seek(0)
        return out.read()


def parity_rows(data, count):
    """The `count` parity rows of a group of data rows by the code's definition (erasure.combine,
    its reference): row p is the sum of coefficient(p, i) * data row i, each zero-padded to the
    longest."""
    length = max(len(row) for row in data)
    return [erasure.combine([(erasure.coefficient(p, i), row) for i, row in enumerate(data)], length)
            for p in range(count)]


def random_data(size, seed=0):
    """Incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def compressible_data(size, seed=0):
    """Compressible but not trivial bytes, the same for the same seed: words from a small
    vocabulary."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def flipped(data, offset, mask=0x10):
    """data with the bits of mask flipped in its byte at offset."""
    damaged = bytearray(data)
    damaged[offset] ^= mask
    return bytes(damaged)


def flip(path, offset, mask=0x04):
    """Flip the bits of mask in the byte at offset of the file at path, in place (the rest of a
    large volume or image is not read)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def processes(test):
    """Pids of the running processes for which test(pid, the words of its command line) holds."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
            if test(int(pid), words):
                found.append(int(pid))
        except OSError:
            continue    # ended meanwhile
    return found


def open_files(pid):
    """{descriptor: what it is open on (a path, 'pipe:[N]', ...)} of a running process."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return found


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
    (root / "random.bin").write_bytes(random_data(3 << 20, seed))
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

    def read_until(self, text, timeout=30, since=0):
        """Read until text shows in the output after its first `since` bytes."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output[since:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; terminal shows {self.output!r}")
            if not self.read_some(remaining):
                raise AssertionError(f"terminal closed before {text!r}; it showed {self.output!r}")
        return self.output

    def read_some(self, timeout):
        """Add what the terminal shows within timeout seconds (one read) to output; False once
        it is closed (the pipeline has ended)."""
        if select.select([self.master], [], [], timeout)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                return False
            self.output += chunk
        return True

    def send(self, line):
        os.write(self.master, line.encode() + b"\n")

    def wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if not self.read_some(0.1):
                break
        status = self.process.wait(timeout=max(1, deadline - time.monotonic()))
        os.close(self.master)
        return status


def _take_terminal(fd):
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


# ---------------------------------------------------------------------------------------------
# A user at the terminal of a disc-by-disc restore (test_terminal, test_disc_restore_pty)

WIDTH = 200
WRITE_DISK_QUESTION = re.compile(r"write-disk: \S+ \([0-9.]+ \w+\) holds .*; everything on it will be "
                                 r"overwritten\. Type 'yes' to continue:")
DISC_QUESTION = re.compile(r"insert disc (\d+)(?: \(of \d+\))? of set 'image' and press Enter "
                           r"\(q to give up\):")
QUESTION_ENDS = (b"Type 'yes' to continue: ", b"q to give up): ")


class Screen:
    """What a terminal WIDTH columns wide shows after `output`: text, carriage return, new line,
    erase to the end of the line (ESC [ K); other escape sequences change nothing here."""

    def __init__(self, output, width=WIDTH):
        self.rows = [[]]
        self.row = 0
        col = 0
        for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|.", output.decode("utf-8", "replace"), re.S):
            if token == "\x1b[K":
                del self.rows[self.row][col:]
            elif token.startswith("\x1b"):
                continue
            elif token == "\r":
                col = 0
            elif token == "\n":
                self._down()
            else:
                if col >= width:
                    self._down()
                    col = 0
                line = self.rows[self.row]
                line.extend(" " * (col + 1 - len(line)))
                line[col] = token
                col += 1
        self.rows = ["".join(row).rstrip() for row in self.rows]

    def _down(self):
        self.row += 1
        if self.row == len(self.rows):
            self.rows.append([])

    @property
    def current(self):
        """The row the cursor is on."""
        return self.rows[self.row]


def widen(term):
    """Give the pseudo-terminal WIDTH columns (a fresh one has none), so that lines do not wrap."""
    fcntl.ioctl(term.master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, WIDTH, 0, 0))
    return term


def read_for(term, seconds):
    """Collect what the terminal shows for `seconds`; False once the pipeline has ended."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if not term.read_some(remaining):
            return False
    return True


def next_question(term, timeout=60):
    """Wait until the terminal shows a question waiting for its answer and return it (the row
    under the cursor), or None when the pipeline ends without one."""
    deadline = time.monotonic() + timeout
    while not term.output.endswith(QUESTION_ENDS):
        assert time.monotonic() < deadline, f"no question; the terminal shows {term.output!r}"
        if not read_for(term, 0.05):
            return None
    return Screen(term.output).current


def reply(term, line):
    """Type line and Enter, and wait for the terminal to echo them."""
    seen = len(term.output)
    term.send(line)
    while b"\r\n" not in term.output[seen:] and read_for(term, 0.05):
        pass
    assert b"\r\n" in term.output[seen:], f"the pipeline ended before echoing {line!r}: {term.output!r}"


def answer_as_a_user(term, drive, discs, hold=1.5):
    """Run a disc-by-disc restore (`reassemble DRIVE | compress -d | write-disk DEVICE`) as a user
    at the terminal: 'yes' to write-disk, the next disc into the drive for reassemble. Each
    question must be shown whole on the cursor's row and stay the only thing there, with no
    progress drawn, for `hold` seconds before it is answered. The questions asked, in order."""
    asked = []
    inserted = 1
    while (question := next_question(term)) is not None:
        seen = len(term.output)
        read_for(term, hold)
        later = term.output[seen:]
        assert Screen(term.output).current == question, \
            f"{question!r} was not left alone for {hold} s: then came {later!r}"
        # A progress line is drawn as CR, status, erase to the end (a message erases first).
        assert not re.search(rb"\r[^\x1b\r\n]+\x1b\[K", later), \
            f"progress drawn while {question!r} was open: {later!r}"
        if WRITE_DISK_QUESTION.fullmatch(question):
            assert not any(WRITE_DISK_QUESTION.fullmatch(q) for q in asked), "asked twice to confirm"
            reply(term, "yes")
        else:
            number = int(DISC_QUESTION.fullmatch(question).group(1))
            assert number == inserted + 1, question
            insert(drive, discs[number - 1])
            inserted = number
            reply(term, "")
        asked.append(question)
    return asked


def make_discs(tmp_path, source, volume_size="512K"):
    """The discs of `read-disk SOURCE | compress | split-span` (one directory each, as burn-iso
    lays them out) and an empty drive directory standing for the mounted disc."""
    sh(f"read-disk -q {source} | compress -q | split-span -q --size {volume_size} --chunk-size 256K "
       f"{tmp_path}/set", check=True)
    discs = []
    for name in sorted(os.listdir(tmp_path / "set")):
        if name.endswith(".manifest"):
            disc = tmp_path / f"disc{len(discs) + 1}"
            disc.mkdir()
            for path in volume_files(tmp_path / "set", name[:-len(manifests.SUFFIX)]):
                shutil.copy(path, disc)
            discs.append(disc)
    drive = tmp_path / "drive"
    drive.mkdir()
    return discs, drive


def insert(drive, *discs):
    """Swap the drive's contents for a disc's (what ejecting and inserting does to a mount point):
    a directory laid out as burn-iso lays out a disc, or the files (volume_files) to put there."""
    for name in os.listdir(drive):
        os.unlink(drive / name)
    for disc in discs:
        for path in sorted(disc.iterdir()) if disc.is_dir() else [disc]:
            shutil.copy(path, drive / path.name)


def volume_files(directory, *names):
    """The files of the named volumes in directory: each volume and its manifest."""
    return [directory / f"{name}{suffix}" for name in names for suffix in ("", manifests.SUFFIX)]


# ---------------------------------------------------------------------------------------------
# A private sshd (test_ssh, test_terminal, test_pipeline_integrity)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# The remote side runs the checkout's commands with this interpreter's packages.
REMOTE_PATH = f"PATH={os.path.dirname(sys.executable)}:$PATH"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    """The ssh command line (a list) that logs into a private sshd as root."""
    need_root()
    if not os.path.exists(SSHD):
        pytest.skip("needs sshd (Debian package openssh-server)")
    need_tools("ssh", "ssh-keygen")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", home / key], check=True)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_key\n"
        f"AuthorizedKeysFile {home}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {home}/sshd.pid\n")
    os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", home / "sshd_config"], stderr=open(home / "log", "wb"))
    client = ["ssh", "-i", str(home / "client_key"), "-p", str(port), "-o", "BatchMode=yes",
              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    try:
        for _ in range(100):
            if subprocess.run(client + ["true"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip(f"sshd did not accept a login: {(home / 'log').read_text()[-500:]}")
        yield client
    finally:
        server.terminate()
        server.wait()


def remote(ssh, command):
    """The ssh invocation running command on the far side, as one shell word list."""
    return " ".join(f"'{word}'" for word in ssh) + f" '{REMOTE_PATH} {command}'"

"""Real kernel read errors for tests: a FUSE file (faultfs.c) mirroring an image whose chosen
sectors fail with EIO, and a loop device over it (a block device with bad sectors).

The FUSE file answers each read at the offset and size the caller asked (direct_io), so every
512-byte sector is readable or not on its own. A loop device over it behaves like a real disk:
buffered reads fail a whole 4 KiB page around a bad sector, O_DIRECT reads fail exactly the bad
512-byte sectors.

Used by the tests (import the fixtures into a test module) and by bench/bench_badsectors.py.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

import pytest

SECTOR = 512
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faultfs.c")
MOUNT_TIMEOUT = 10


def missing_requirement():
    """Why faultfs cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "faultfs needs root (FUSE mounts and loop devices)"
    if not os.path.exists("/dev/fuse"):
        return "faultfs needs /dev/fuse"
    for tool, package in (("gcc", "gcc"), ("pkg-config", "pkg-config"),
                          ("fusermount3", "fuse3")):
        if shutil.which(tool) is None:
            return f"faultfs needs {tool} (Debian package {package})"
    if subprocess.run(["pkg-config", "--exists", "fuse3"]).returncode != 0:
        return "faultfs needs the libfuse3 headers (Debian package libfuse3-dev)"
    return None


def build(directory):
    """Compile faultfs.c into directory (once per source version) and return the program's path."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    program = os.path.join(directory, f"faultfs-{digest}")
    if not os.path.exists(program):
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                               capture_output=True, text=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-Wall", "-o", program + ".tmp", SOURCE, *flags],
                       check=True, capture_output=True)
        os.replace(program + ".tmp", program)
    return program


def write_bad_list(path, bad):
    """bad: iterable of (first_sector, sector_count) or (first_sector, sector_count, failures)."""
    with open(path, "w") as f:
        for entry in bad:
            f.write(" ".join(str(n) for n in entry) + "\n")


class FaultyFile:
    """A mounted faultfs: .path is the failing file, .reads()/.failed_reads() count its read
    requests since the mount."""

    def __init__(self, program, image, mountpoint, bad=(), fail_from=None, error_delay_us=0):
        self.image = image
        self.mountpoint = mountpoint
        self.path = os.path.join(mountpoint, "disk")
        os.makedirs(mountpoint, exist_ok=True)
        bad_list = mountpoint.rstrip("/") + ".bad"
        write_bad_list(bad_list, bad)
        command = [program, "--image", image, "--bad-list", bad_list,
                   "--error-delay-us", str(error_delay_us)]
        if fail_from is not None:
            command += ["--fail-from", str(fail_from)]
        # -f: stay in the foreground as our child, so teardown can always reap it.
        self.process = subprocess.Popen(command + [mountpoint, "-f", "-o", "ro"],
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                error = self.process.stderr.read().decode() if self.process.poll() is not None else ""
                self.unmount()
                raise RuntimeError(f"faultfs did not mount on {mountpoint}: {error.strip()}")
            time.sleep(0.01)

    def stats(self):
        with open(os.path.join(self.mountpoint, "stats")) as f:
            words = f.read().split()
        return dict(zip(words[::2], map(int, words[1::2])))

    def unmount(self):
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)
        try:
            self.process.wait(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()


@contextlib.contextmanager
def loop_device(path):
    """A read-only loop device with 512-byte sectors over path."""
    device = subprocess.run(["losetup", "-f", "--show", "-r", "--sector-size", str(SECTOR), path],
                            check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


class FaultFS:
    """Builds faultfs once and mounts any number of faulty files; close() unmounts them all."""

    def __init__(self, directory):
        self.directory = directory
        self.program = build(directory)
        self.mounted = []

    def mount(self, image, bad=(), fail_from=None, error_delay_us=0):
        """A FaultyFile mirroring the image file, failing reads that touch the bad sector ranges
        or any byte at or after fail_from."""
        mountpoint = tempfile.mkdtemp(prefix="mnt-", dir=self.directory)
        faulty = FaultyFile(self.program, image, mountpoint, bad, fail_from, error_delay_us)
        self.mounted.append(faulty)
        return faulty

    def close(self):
        while self.mounted:
            self.mounted.pop().unmount()


@pytest.fixture(scope="session")
def faultfs_directory(tmp_path_factory):
    """Where faultfs is built and mounted; the session is skipped here when it cannot run."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    return str(tmp_path_factory.mktemp("faultfs"))


@pytest.fixture
def faultfs(faultfs_directory):
    """A FaultFS whose mounts are undone when the test ends, passed or failed."""
    fs = FaultFS(faultfs_directory)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def faulty_loop_device():
    """loop_device(path) for the test, skipped where losetup is missing."""
    if shutil.which("losetup") is None:
        pytest.skip("needs losetup (Debian package mount)")
    with contextlib.ExitStack() as stack:
        yield lambda path: stack.enter_context(loop_device(path))

"""mount-image end to end, over real FUSE (root, /dev/fuse): a compressed ext4 image, a GPT disk
with ext4 and vfat partitions as a compressed set in volumes, as ISO images and as a raw set,
each mounted, its partitions loop-mounted read-only and every file compared with the source, and
1,000 random reads of the disk file compared with the source disk; a set with parity 2 and two
volumes deleted; EIO for a damaged range of a set without parity, named on stderr; refused sets
and streams with reassemble's messages; unmounting three ways leaves no mount and no process;
four threads reading at once."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import BIN, KIB, MIB, assert_one_line_error, command, flip, need_root, need_tools, processes, sh
from filesystems import assert_same_files, attached, build_disk, build_ext4, build_vfat, files_of, make_tree
from mirrorpipe.sets.randomaccess import SetBytes
from mirrorpipe.stream.seekable import CompressedBytes, FileBytes

FRAME = 256 * KIB     # compress --frame-size: many frames, several in each volume
READS = 1000


def need_fuse():
    need_root()
    need_tools("fusermount3", "mount", "losetup", "sfdisk", "mkfs.ext4", "debugfs", "mkfs.vfat",
               "mcopy", "mdir", "zstd")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse (FUSE: the fuse kernel module, or a container given the device)")


# ---------------------------------------------------------------------------------------------
# Mounts

def mounted_at(mountpoint):
    """Whether something is mounted at mountpoint (/proc/self/mountinfo's fifth field)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def live_mount_images(mountpoint):
    """Pids of mount-image processes serving mountpoint that are alive (not zombies: one
    reparented to PID 1 in this sandbox is not ours to reap)."""
    def serving(pid, words):
        if not any(word.endswith(b"mount-image") for word in words) or \
                str(mountpoint).encode() not in words:
            return False
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
        return "\tZ" not in state
    return processes(serving)


def wait_until(condition, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Mount:
    def __init__(self, mountpoint, log):
        self.mountpoint = mountpoint
        self.log = log

    def path(self, name):
        return self.mountpoint / name

    def stderr(self):
        return self.log.read_text()


@pytest.fixture
def mount_image(tmp_path):
    """Factory: `mount-image OPTIONS SOURCES MOUNTPOINT` in the background with stderr to a file,
    which must succeed; a Mount. Every mount is unmounted afterwards, and none may leave a
    mount-image process running."""
    need_fuse()
    made = []

    def mount(*sources, options=(), cwd=None):
        mountpoint = tmp_path / f"mount{len(made)}"
        mountpoint.mkdir()
        log = tmp_path / f"mount{len(made)}.stderr"
        made.append(mountpoint)
        with open(log, "wb") as stderr:
            result = subprocess.run([str(BIN / "mount-image"), *options, *map(str, sources), str(mountpoint)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                    timeout=60, cwd=cwd)
        assert result.returncode == 0, log.read_text()
        assert mounted_at(mountpoint)
        return Mount(mountpoint, log)

    yield mount
    for mountpoint in made:
        unmount_for_good(mountpoint)


def fusermount_u(mountpoint, timeout=10):
    """fusermount3 -u, again while the file system is busy (a detached loop device lets go of
    its file a moment later); lazily, failing the test, when it stays busy."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode:
        if time.monotonic() > deadline:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)])
            raise AssertionError(f"{mountpoint} stayed busy; unmounted lazily")
        time.sleep(0.1)


def unmount_for_good(mountpoint):
    """Unmount if mounted, and check that the daemon is gone."""
    if mounted_at(mountpoint):
        fusermount_u(mountpoint)
    wait_until(lambda: not live_mount_images(mountpoint), what=f"mount-image at {mountpoint} to end")


# ---------------------------------------------------------------------------------------------
# The backups, built once

@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The source tree, its ext4 and vfat images, a GPT disk holding both, and the backups."""
    need_fuse()
    work = tmp_path_factory.mktemp("mount_image")
    tree = make_tree(work / "tree")
    build_ext4(work / "ext4.img", tree)
    build_vfat(work / "vfat.img", tree)
    build_disk(work / "disk.img", "gpt", [("ext4", work / "ext4.img"), ("vfat", work / "vfat.img")])
    compress = f"compress -q --frame-size {FRAME}"
    sh(f"{compress} < {work}/ext4.img > {work}/sda.img.zst", check=True)
    sh(f"{compress} < {work}/disk.img | split-span -q --size 8M --chunk-size 1M {work}/volumes", check=True)
    sh(f"{compress} < {work}/disk.img | split-span -q --size 8M --iso {work}/isos", check=True)
    sh(f"read-disk -q {work}/disk.img | split-span -q --size 16M {work}/raw", check=True)
    sh(f"{compress} < {work}/disk.img | split-span -q --size 4M --parity 2 {work}/parity", check=True)
    return work


def source_disk(sources, kind):
    return sources / ("ext4.img" if kind == "compressed file" else "disk.img")


BACKUPS = {"compressed file": "sda.img.zst", "compressed volumes": "volumes", "ISO images": "isos",
           "raw volumes": "raw"}


def backup_paths(sources, kind):
    if kind == "ISO images":
        return sorted((sources / "isos").glob("*.iso"))
    return [sources / BACKUPS[kind]]


def random_reads(path, source, count=READS, seed=0):
    """count preads of the file at path compared with the same bytes of source: sizes 1 B to
    1 MiB, half of them across a frame boundary (a multiple of FRAME in the disk)."""
    rng = random.Random(seed)
    length = os.path.getsize(source)
    with open(path, "rb") as mounted, open(source, "rb") as original:
        for number in range(count):
            size = rng.choice((1, 512, 4096, 65536, MIB, rng.randint(1, MIB)))
            if number % 2:
                offset = max(0, rng.randrange(FRAME, length, FRAME) - rng.randint(1, size))
            else:
                offset = rng.randrange(length)
            got = os.pread(mounted.fileno(), size, offset)
            assert got == os.pread(original.fileno(), size, offset), (offset, size)


# ---------------------------------------------------------------------------------------------
# Every file identical, 1,000 random reads identical

@pytest.mark.parametrize("kind", list(BACKUPS))
def test_mounted_backup_has_every_file_and_byte_of_the_source(sources, mount_image, kind):
    mount = mount_image(*backup_paths(sources, kind))
    disk = source_disk(sources, kind)
    if kind == "compressed file":
        assert sorted(os.listdir(mount.mountpoint)) == ["sda.img"]
        partitions = [("sda.img", "ext4")]
    else:
        assert sorted(os.listdir(mount.mountpoint)) == ["image", "image.p1", "image.p2"]
        partitions = [("image.p1", "ext4"), ("image.p2", "vfat")]
    name = partitions[0][0].split(".p")[0]
    assert os.path.getsize(mount.path(name)) == os.path.getsize(disk)
    for file, kind_of_file_system in partitions:
        if kind_of_file_system == "vfat":
            # This kernel has no vfat: mtools reads the partition's file directly.
            with files_of(mount.path(file), "vfat") as files:
                assert_same_files(sources / "tree", files, "vfat")
        else:
            with attached(mount.path(file)) as device, files_of(device, "ext4") as files:
                assert_same_files(sources / "tree", files, "ext4")
    random_reads(mount.path(name), disk)
    assert mount.stderr() == ""


@pytest.mark.parametrize("kind", ["compressed volumes", "ISO images", "raw volumes"])
def test_a_set_given_by_relative_paths_reads_from_every_volume(sources, mount_image, kind):
    """`cd backups && mount-image out/ /mnt/backup`, as --help shows: the daemon's working
    directory changes once it is mounted, and the volumes are opened as they are first read."""
    relative = [path.relative_to(sources) for path in backup_paths(sources, kind)]
    mount = mount_image(*relative, cwd=sources)
    with open(mount.path("image"), "rb") as mounted, open(sources / "disk.img", "rb") as original:
        for offset in range(0, os.path.getsize(sources / "disk.img"), 4 * MIB):
            assert os.pread(mounted.fileno(), 4096, offset) == os.pread(original.fileno(), 4096, offset), offset
    assert mount.stderr() == ""


def test_the_partition_files_are_the_partitions(sources, mount_image):
    mount = mount_image(sources / "volumes")
    table = sh(f"sfdisk -J {sources}/disk.img", check=True).stdout
    entries = json.loads(table)["partitiontable"]["partitions"]
    with open(sources / "disk.img", "rb") as disk:
        for number, entry in enumerate(entries, 1):
            start, size = entry["start"] * 512, entry["size"] * 512
            path = mount.path(f"image.p{number}")
            assert os.path.getsize(path) == size
            with open(path, "rb") as partition:
                for offset in (0, size // 3, size - 4096):
                    assert os.pread(partition.fileno(), 4096, offset) == \
                        os.pread(disk.fileno(), 4096, start + offset)
                assert os.pread(partition.fileno(), 4096, size) == b""     # nothing past its end


def test_four_threads_reading_at_once_get_the_right_bytes(sources, mount_image):
    mount = mount_image(sources / "volumes", options=["--cache", "1M"])
    wrong = []

    def reader(seed):
        try:
            random_reads(mount.path("image"), sources / "disk.img", count=150, seed=seed)
        except AssertionError as exc:
            wrong.append(str(exc))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_the_mount_is_read_only(sources, mount_image):
    mount = mount_image(sources / "sda.img.zst")
    with pytest.raises(OSError) as caught:
        open(mount.path("sda.img"), "r+b")
    assert caught.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mount.mountpoint / "new").write_bytes(b"x")


# ---------------------------------------------------------------------------------------------
# Damage

def remove_volume(directory, name):
    for path in directory.glob(f"{name}*"):
        path.unlink()


class Foreground:
    """`mount-image -f SOURCES MOUNTPOINT` running, stderr to a file, until ended."""

    def __init__(self, tmp_path, *sources_given):
        need_fuse()
        self.mountpoint = tmp_path / "mnt"
        self.mountpoint.mkdir()
        self.log = tmp_path / "stderr"
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen(
                [str(BIN / "mount-image"), "-f", *map(str, sources_given), str(self.mountpoint)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)

    def wait_ready(self, name):
        """Until `name` is shown (the partitions are found once the file system is up)."""
        wait_until(lambda: os.path.exists(self.mountpoint / name), timeout=30, what=name)

    def end(self, how):
        """Unmount with fusermount3 -u or a signal; (exit status, the lines it said)."""
        if how == "fusermount3 -u":
            fusermount_u(self.mountpoint)
        else:
            self.process.send_signal(getattr(signal, how))
        status = self.process.wait(timeout=30)
        return status, self.log.read_text().splitlines()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if mounted_at(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)])


def test_two_deleted_volumes_of_a_set_with_parity_2_are_rebuilt_and_said(sources, tmp_path):
    directory = tmp_path / "parity"
    shutil.copytree(sources / "parity", directory)
    remove_volume(directory, "image.002")
    remove_volume(directory, "image.004")
    daemon = Foreground(tmp_path, directory)
    try:
        daemon.wait_ready("image.p2")
        mountpoint = daemon.mountpoint
        with attached(mountpoint / "image.p1") as device, files_of(device, "ext4") as files:
            assert_same_files(sources / "tree", files, "ext4")
        with files_of(mountpoint / "image.p2", "vfat") as files:
            assert_same_files(sources / "tree", files, "vfat")
        random_reads(mountpoint / "image", sources / "disk.img", count=200)
        status, said = daemon.end("fusermount3 -u")
    finally:
        daemon.kill()
    assert status == 0, said
    assert sorted(said) == [
        f"mount-image: volume {index} is missing; rebuilding what is read of it from the parity "
        "of group 1" for index in (2, 4)], said


@pytest.mark.parametrize("how", ["fusermount3 -u", "SIGTERM", "SIGINT"])
def test_a_foreground_mount_ends_cleanly_when_unmounted_or_interrupted(sources, tmp_path, how):
    """-f: unmounting, SIGTERM and Ctrl-C (SIGINT) are the ways to end it; none is a failure."""
    daemon = Foreground(tmp_path, sources / "sda.img.zst")
    try:
        daemon.wait_ready("sda.img")
        status, said = daemon.end(how)
    finally:
        daemon.kill()
    assert (status, said) == (0, [])
    assert not mounted_at(daemon.mountpoint)


def damaged_raw_range(directory, volume, chunk):
    """The raw bytes of the disk that a damaged chunk of a volume of a compressed set takes
    with it: the frames that overlap the chunk's compressed bytes (read from the intact set)."""
    stored = SetBytes([str(directory)])
    first = (volume - 1) * stored.volume_size + chunk * stored.chunk_size
    last = first + stored.chunk_size - 1
    image = CompressedBytes(stored, "set")
    hit = [(raw_at, raw_at + raw_size - 1) for at, size, raw_at, raw_size in map(image.frame, range(image.frame_count))
           if at <= last and at + size - 1 >= first]
    return hit[0][0], hit[-1][1]


def test_a_flipped_bit_without_parity_fails_its_range_with_eio_and_the_rest_reads(sources, tmp_path, mount_image):
    directory = tmp_path / "volumes"
    shutil.copytree(sources / "volumes", directory)
    volume, chunk = 2, 5
    first, last = damaged_raw_range(directory, volume, chunk)
    chunk_size = SetBytes([str(directory)]).chunk_size
    flip(directory / f"image.{volume:03d}", chunk * chunk_size + 1234)
    mount = mount_image(directory)
    disk = mount.path("image")
    with open(disk, "rb") as mounted, open(sources / "disk.img", "rb") as original:
        for offset in (first, (first + last) // 2, last - 10):
            with pytest.raises(OSError) as caught:
                os.pread(mounted.fileno(), 10, offset)
            assert caught.value.errno == errno.EIO
        # Away from it (past the kernel's readahead), the disk reads.
        for offset in (0, max(0, first - 4 * MIB), last + 4 * MIB):
            assert os.pread(mounted.fileno(), 65536, offset) == os.pread(original.fileno(), 65536, offset)
    stderr = mount.stderr()
    assert "image: reads of bytes " in stderr and " fail with EIO: " in stderr, stderr
    assert f"chunk {chunk} of " in stderr and "does not match its manifest (damaged)" in stderr, stderr
    assert len([line for line in stderr.splitlines() if f"chunk {chunk} of " in line]) == 1, stderr


def test_a_damaged_frame_of_a_compressed_file_fails_its_bytes_with_eio_and_the_rest_reads(sources, tmp_path, mount_image):
    damaged = tmp_path / "sda.img.zst"
    shutil.copy(sources / "sda.img.zst", damaged)
    image = CompressedBytes(FileBytes(str(damaged)), "file")
    frames = [frame for frame in map(image.frame, range(image.frame_count)) if frame[3] == FRAME]
    compressed_at, compressed_size, raw_at, raw_size = frames[len(frames) // 2]
    flip(damaged, compressed_at + compressed_size // 2)
    mount = mount_image(damaged)
    with open(mount.path("sda.img"), "rb") as mounted, open(sources / "ext4.img", "rb") as original:
        with pytest.raises(OSError) as caught:
            os.pread(mounted.fileno(), 512, raw_at + raw_size // 2)
        assert caught.value.errno == errno.EIO
        for offset in (0, raw_at + raw_size + 4 * MIB):
            assert os.pread(mounted.fileno(), 65536, offset) == os.pread(original.fileno(), 65536, offset)
    stderr = mount.stderr()
    assert "sda.img: reads of bytes " in stderr and " fail with EIO: frame " in stderr, stderr
    assert f"holding bytes {raw_at}-{raw_at + raw_size - 1}) is damaged" in stderr, stderr


def test_a_volume_gone_after_mounting_gives_eio_and_one_line_not_a_traceback(sources, tmp_path, mount_image):
    """A volume removed (a USB disk unplugged, a file deleted) after the mount: its reads fail
    with EIO like any other unreadable range, said in one line."""
    directory = tmp_path / "raw"
    shutil.copytree(sources / "raw", directory)
    mount = mount_image(directory)
    (directory / "image.003").unlink()
    with open(mount.path("image"), "rb") as mounted, open(sources / "disk.img", "rb") as original:
        with pytest.raises(OSError) as caught:
            os.pread(mounted.fileno(), 4096, 2 * 16 * MIB + 4096)
        assert caught.value.errno == errno.EIO
        assert os.pread(mounted.fileno(), 4096, 4 * 16 * MIB) == os.pread(original.fileno(), 4096, 4 * 16 * MIB)
    stderr = mount.stderr()
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "image.003" in line]
    assert len(lines) == 1 and lines[0].startswith("mount-image: image: reads of bytes "), stderr


# ---------------------------------------------------------------------------------------------
# Refusals: exit 1, reassemble's message, nothing mounted

def refused(sources_given, tmp_path):
    need_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    result = command("mount-image", *sources_given, mountpoint, timeout=60)
    was_mounted = mounted_at(mountpoint)
    unmount_for_good(mountpoint)
    assert not was_mounted, result.stderr
    assert result.returncode == 1, result.stderr
    line = assert_one_line_error(result, "mount-image")
    assert os.listdir(mountpoint) == []
    assert not live_mount_images(mountpoint)
    return line[len("mount-image: error: "):]


def reassemble_says(*sources_given):
    result = command("reassemble", "--verify", *sources_given, stdout=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    return assert_one_line_error(result, "reassemble")[len("reassemble: error: "):]


def test_a_foreign_set_is_refused_with_reassembles_message(sources, tmp_path):
    other = tmp_path / "other"
    sh(f"head -c 20M /dev/urandom | split-span -q --size 8M {other}", check=True)
    mixed = tmp_path / "mixed"
    shutil.copytree(sources / "volumes", mixed)
    remove_volume(mixed, "image.002")
    for path in other.glob("image.002*"):
        shutil.copy(path, mixed)
    message = refused([mixed], tmp_path)
    assert message == reassemble_says(mixed)
    assert "another set" in message, message


def test_an_incomplete_set_is_refused_with_reassembles_message(sources, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(sources / "volumes", incomplete)
    remove_volume(incomplete, "image.002")
    message = refused([incomplete], tmp_path)
    assert message == reassemble_says(incomplete)
    assert "missing volume 2" in message, message


def test_stock_zstd_output_is_refused_saying_how_to_make_a_seekable_copy(sources, tmp_path):
    stock = tmp_path / "stock.img.zst"
    sh(f"zstd -q -T0 < {sources}/ext4.img > {stock}", check=True)
    message = refused([stock], tmp_path)
    assert "without a seek table" in message and f"compress -d < {stock} | compress > " in message


def test_a_killed_compress_output_is_refused(sources, tmp_path):
    cut = tmp_path / "killed.img.zst"
    with open(cut, "wb") as out:
        compress = subprocess.Popen([str(BIN / "compress"), "-q", "--frame-size", "64K"],
                                    stdin=subprocess.PIPE, stdout=out)
    with open(sources / "disk.img", "rb") as disk:
        compress.stdin.write(disk.read(24 * MIB))
    compress.stdin.flush()
    wait_until(lambda: os.path.getsize(cut) > 0, what="compress to write")
    compress.kill()
    compress.wait()
    compress.stdin.close()
    message = refused([cut], tmp_path)
    assert str(cut) in message and "seek table" in message, message


# ---------------------------------------------------------------------------------------------
# Unmounting

def daemon_of(mountpoint):
    pids = live_mount_images(mountpoint)
    assert len(pids) == 1, pids
    return pids[0]


@pytest.mark.parametrize("how", ["mount-image -u", "fusermount3 -u", "SIGTERM"])
def test_unmounting_leaves_no_mount_and_no_process(sources, mount_image, how):
    mount = mount_image(sources / "sda.img.zst")
    pid = daemon_of(mount.mountpoint)
    if how == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
    else:
        result = subprocess.run([*how.split(), str(mount.mountpoint)], capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", result.stderr
    wait_until(lambda: not mounted_at(mount.mountpoint), what="the unmount")
    wait_until(lambda: not live_mount_images(mount.mountpoint), what="mount-image to end")
    assert os.listdir(mount.mountpoint) == []
    assert mount.stderr() == ""      # the daemon's stderr: a clean unmount is no error


def test_mount_image_u_of_something_not_mounted_fails_in_one_line(tmp_path):
    need_fuse()
    result = command("mount-image", "-u", tmp_path)
    assert_one_line_error(result, "mount-image", "cannot unmount", str(tmp_path))
    assert result.returncode == 1


def test_a_mount_whose_daemon_was_killed_is_named_and_undone_by_u(sources, mount_image):
    """After SIGKILL (or the OOM killer) the mount stays with nothing serving it: mounting there
    again says so and what to do, and mount-image -u takes it away (os.path.ismount cannot see it)."""
    source = sources / "sda.img.zst"
    mount = mount_image(source)
    os.kill(daemon_of(mount.mountpoint), signal.SIGKILL)
    wait_until(lambda: not live_mount_images(mount.mountpoint), what="the killed daemon to end")
    with pytest.raises(OSError) as listing:
        os.listdir(mount.mountpoint)
    assert listing.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    again = command("mount-image", source, mount.mountpoint)
    assert_one_line_error(again, "mount-image", str(mount.mountpoint), "nothing serves it",
                          f"mount-image -u {mount.mountpoint}")
    assert again.returncode == 1
    result = command("mount-image", "-u", mount.mountpoint)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert not mounted_at(mount.mountpoint)
    assert command("mount-image", source, mount.mountpoint).returncode == 0
    assert os.listdir(mount.mountpoint) == ["sda.img"]


def test_a_second_backup_is_not_mounted_over_the_first(sources, mount_image):
    mount = mount_image(sources / "sda.img.zst")
    result = command("mount-image", sources / "volumes", mount.mountpoint)
    assert_one_line_error(result, "mount-image", "already has a backup mounted (sda.img)",
                          f"mount-image -u {mount.mountpoint}")
    assert result.returncode == 1
    assert len(live_mount_images(mount.mountpoint)) == 1
    assert os.listdir(mount.mountpoint) == ["sda.img"]


def test_unmounting_while_a_partition_is_mounted_names_that_mount(sources, mount_image):
    mount = mount_image(sources / "volumes")
    with attached(mount.path("image.p1")) as device, files_of(device, "ext4") as directory:
        result = command("mount-image", "-u", mount.mountpoint)
        assert_one_line_error(result, "mount-image", f"cannot unmount {mount.mountpoint}: "
                              f"{mount.path('image.p1')} backs {device}, which is mounted at "
                              f"{directory} (read-only); unmount that first")
        assert result.returncode == 1
        assert mounted_at(mount.mountpoint) and (directory / "lost+found").is_dir()
    result = command("mount-image", "-u", mount.mountpoint)
    assert result.returncode == 0, result.stderr


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def test_a_mount_killed_before_it_was_ready_is_said_with_what_it_left(sources, tmp_path):
    """The command waits for its serving child to say the mount is ready; a child killed before
    that (here as soon as it is seen) is an error saying what was left at the mount point."""
    need_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for _ in range(5):
        parent = subprocess.Popen([str(BIN / "mount-image"), str(sources / "sda.img.zst"), str(mountpoint)],
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while parent.poll() is None and not (children := children_of(parent.pid)):
            time.sleep(0.0005)
        if parent.poll() is None:
            os.kill(children[0], signal.SIGKILL)
        stderr = parent.communicate(timeout=60)[1].decode()
        if parent.returncode == 0:     # the mount was ready before the child was seen: again
            unmount_for_good(mountpoint)
            continue
        error = "\n".join(line for line in stderr.splitlines() if line.strip())
        assert error.startswith(f"mount-image: error: the process that was to serve {mountpoint} "
                                "ended before the mount was ready (killed?); "), stderr
        if mounted_at(mountpoint):
            assert error.endswith(f"it left a mount with nothing serving it: mount-image -u {mountpoint}")
            assert command("mount-image", "-u", mountpoint).returncode == 0
        else:
            assert error.endswith("nothing is mounted there"), stderr
        assert parent.returncode == 1 and not mounted_at(mountpoint)
        return
    pytest.fail("the serving process was never seen before the mount was ready")


def test_a_background_mount_lets_a_caller_reading_its_output_go_on(sources, tmp_path):
    """`out=$(mount-image ...)` returns once the mount is ready: the daemon keeps no pipe open."""
    need_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        result = subprocess.run([str(BIN / "mount-image"), str(sources / "sda.img.zst"), str(mountpoint)],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert os.path.getsize(mountpoint / "sda.img") == os.path.getsize(sources / "ext4.img")
    finally:
        unmount_for_good(mountpoint)


def test_a_raw_image_file_is_mounted_under_its_own_name(sources, mount_image):
    mount = mount_image(sources / "disk.img")
    assert sorted(os.listdir(mount.mountpoint)) == ["disk.img", "disk.img.p1", "disk.img.p2"]
    random_reads(mount.path("disk.img"), sources / "disk.img", count=100)
    with files_of(mount.path("disk.img.p2"), "vfat") as files:
        assert_same_files(sources / "tree", files, "vfat")


def test_a_disc_in_a_drive_is_refused_saying_to_copy_the_discs_first(sources, tmp_path, loop_device):
    drive = loop_device(min((sources / "isos").glob("*.iso")), "-r")
    message = refused([drive], tmp_path)
    assert "no last volume of set 'image' (found 1)" in message, message
    assert "copy the discs (or their ISO images) into one directory" in message, message


def test_a_mount_point_that_is_no_directory_is_refused(sources, tmp_path):
    need_fuse()
    result = command("mount-image", sources / "sda.img.zst", tmp_path / "nowhere")
    assert result.returncode == 1
    assert_one_line_error(result, "mount-image", f"{tmp_path / 'nowhere'} is not a directory")


def test_an_mbr_disk_shows_its_primary_and_logical_partitions(sources, tmp_path, mount_image):
    """sfdisk's numbering: a primary partition, logical ones from 5 (the extended partition that
    holds them is no file system and is not shown)."""
    disk = tmp_path / "mbr.img"
    with open(disk, "wb") as f:
        f.truncate(160 * MIB)
    sh(f"printf 'label: dos\\nstart=2048, size=40960, type=83\\nstart=45056, size=280000, type=5\\n"
       f"start=47104, size=131072, type=83\\nstart=180224, size=20480, type=83\\n' | sfdisk -q {disk}",
       check=True)
    sh(f"dd if={sources}/ext4.img of={disk} bs=512 seek=47104 conv=notrunc,sparse status=none", check=True)
    sh(f"compress -q < {disk} > {disk}.zst", check=True)
    mount = mount_image(f"{disk}.zst")
    assert sorted(os.listdir(mount.mountpoint)) == ["mbr.img", "mbr.img.p1", "mbr.img.p5", "mbr.img.p6"]
    assert [os.path.getsize(mount.path(f"mbr.img.p{n}")) for n in (1, 5, 6)] == \
        [40960 * 512, 131072 * 512, 20480 * 512]
    with attached(mount.path("mbr.img.p5")) as device, files_of(device, "ext4") as files:
        assert_same_files(sources / "tree", files, "ext4")

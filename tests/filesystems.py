"""Real file systems for the read-disk --used-only tests (test_used_blocks, test_filesystems):
a tree of files, each file system built from it with a deleted file's contents (MARKER) left in
its free space, the stock tools that take each back out and check it, and disk images (GPT, MBR)
that hold them as partitions. Root only (loop devices, mounts); built without mounting where the
file system's tools allow."""

import contextlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from conftest import MIB, compressible_data, make_file_tree, random_data

# Unique per run, so that it is found only where this run's deleted file left it.
MARKER = f"MIRRORPIPE-DELETED-MARKER-{uuid.uuid4().hex}".encode()
MARKER_FILE = "deleted.bin"
# mtools refuses image files whose FAT geometry it cannot check against a drive without this.
MTOOLS = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def run(*args, **kwargs):
    """Run a command that must succeed; its stdout as text."""
    result = subprocess.run([str(arg) for arg in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}): "
                             f"{result.stderr.strip()}")
    return result.stdout


def make_tree(root, seed=7):
    """conftest.make_file_tree's real files plus 300 more of varied sizes (empty, one byte,
    around block and extent sizes, some compressible) in nested directories, and a symlink."""
    make_file_tree(root, seed)
    rng = random.Random(seed)
    sizes = (0, 1, 511, 4095, 4096, 4097, 20000, 65536, 131073, 300000)
    for number in range(300):
        directory = root / f"dir{number % 12:02d}" / ("deeper" if number % 5 == 0 else "")
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.choice(sizes)
        maker = random_data if number % 2 else compressible_data
        (directory / f"file{number:03d}.dat").write_bytes(maker(size, seed + number))
    (root / "link-to-file").symlink_to("dir01/file001.dat")
    return root


def write_marker(directory):
    """The file whose deletion leaves MARKER in free space: 64 KiB of it, no other text."""
    path = Path(directory) / MARKER_FILE
    path.write_bytes((MARKER * (64 * 1024 // len(MARKER) + 1))[:64 * 1024])
    return path


def sparse_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@contextlib.contextmanager
def mount_point():
    directory = tempfile.mkdtemp(prefix="mirrorpipe-mnt-")
    try:
        yield Path(directory)
    finally:
        os.rmdir(directory)


@contextlib.contextmanager
def mounted(what, kind, read_only=True, options=()):
    """what (a device or, for loop mounts, an image file) mounted as file system kind."""
    flags = ",".join((["ro"] if read_only else []) + list(options))
    with mount_point() as directory:
        if kind == "ntfs":
            run("ntfs-3g", *(["-o", flags] if flags else []), what, directory)
        else:
            run("mount", "-t", kind, *(["-o", flags] if flags else []), what, directory)
        try:
            yield directory
        finally:
            run("umount", directory)


@contextlib.contextmanager
def attached(image, start=0, size=None, read_only=True):
    """A loop device on [start, start + size) of image (this kernel makes no partition nodes
    for loop devices, so a partition is reached this way)."""
    options = (["-r"] if read_only else []) + ["-o", str(start)]
    if size is not None:
        options += ["--sizelimit", str(size)]
    device = run("losetup", "-f", "--show", *options, image).strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device])


def copy_tree(tree, directory):
    """tree's contents into directory, symlinks as symlinks, no ownership (ntfs-3g has none)."""
    run("cp", "-r", "--no-preserve=all", f"{tree}/.", directory)


# ---------------------------------------------------------------------------------------------
# The file systems, each holding tree's files and MARKER in its free space

def build_ext4(path, tree):
    staging = path.parent / f"{path.name}.files"
    run("cp", "-a", tree, staging)
    write_marker(staging)
    run("mkfs.ext4", "-q", "-F", "-d", staging, path, "64M")
    run("debugfs", "-w", "-R", f"rm /{MARKER_FILE}", path)
    shutil.rmtree(staging)


def build_xfs(path, tree):
    # mkfs.xfs 6.1 refuses anything under 300 MiB; sparse, it takes 64 MiB of disk (its log).
    sparse_file(path, 300 * MIB)
    run("mkfs.xfs", "-q", path)
    _fill_mounted(path, "xfs", tree)


def build_btrfs(path, tree):
    staging = path.parent / f"{path.name}.files"
    run("cp", "-a", tree, staging)
    write_marker(staging)
    sparse_file(path, 128 * MIB)    # mkfs.btrfs's smallest is 109 MiB
    run("mkfs.btrfs", "-q", "--rootdir", staging, path)
    shutil.rmtree(staging)
    # Only a mount deletes a file. nodiscard: the kernel's default discard=async would punch
    # the freed marker out of the loop device's backing file.
    with mounted(path, "btrfs", read_only=False, options=["loop", "nodiscard"]) as directory:
        os.unlink(directory / MARKER_FILE)


def build_vfat(path, tree):
    sparse_file(path, 64 * MIB)
    run("mkfs.vfat", "-F", "32", "-n", "MIRRORPIPE", path)
    run("mcopy", "-s", "-i", path, *sorted(tree.iterdir()), "::/", env=MTOOLS)
    with tempfile.TemporaryDirectory() as staging:
        run("mcopy", "-i", path, write_marker(staging), "::/", env=MTOOLS)
    run("mdel", "-i", path, f"::/{MARKER_FILE}", env=MTOOLS)


def build_ntfs(path, tree):
    sparse_file(path, 64 * MIB)
    run("mkntfs", "-F", "-Q", "-q", path)
    _fill_mounted(path, "ntfs", tree)


def _fill_mounted(path, kind, tree):
    """Fill a file system through a mount (its tools cannot write files), then delete MARKER_FILE."""
    with mounted(path, kind, read_only=False, options=[] if kind == "ntfs" else ["loop"]) as directory:
        copy_tree(tree, directory)
        write_marker(directory)
        os.sync()
        os.unlink(directory / MARKER_FILE)


BUILDERS = {"ext4": build_ext4, "xfs": build_xfs, "btrfs": build_btrfs, "vfat": build_vfat,
            "ntfs": build_ntfs}
# The tools each file system needs here, to be built and checked.
TOOLS = {"ext4": ("mkfs.ext4", "debugfs", "dumpe2fs", "e2fsck"),
         "xfs": ("mkfs.xfs", "xfs_repair"),
         "btrfs": ("mkfs.btrfs", "btrfs"),
         "vfat": ("mkfs.vfat", "mcopy", "mdel", "fsck.vfat"),
         "ntfs": ("mkntfs", "ntfs-3g", "ntfsfix")}


# ---------------------------------------------------------------------------------------------
# Taking the files back out of a file system, and checking it

# Read-only mounts that replay nothing: the image is examined as it is.
READ_ONLY_OPTIONS = {"ext4": ["noload"], "xfs": ["norecovery"], "btrfs": [], "ntfs": []}


@contextlib.contextmanager
def files_of(device, kind):
    """A directory holding the files of the file system on device: a read-only mount where the
    kernel has the file system, else a copy by its own tools (vfat: mcopy; this kernel has no
    vfat)."""
    if kind == "vfat":
        with tempfile.TemporaryDirectory(prefix="mirrorpipe-files-") as directory:
            names = run("mdir", "-b", "-i", device, "::/", env=MTOOLS).split()
            if names:
                run("mcopy", "-s", "-n", "-i", device, *names, directory, env=MTOOLS)
            yield Path(directory)
    else:
        with mounted(device, kind, options=READ_ONLY_OPTIONS[kind]) as directory:
            yield directory


def assert_same_files(tree, directory, kind):
    """Every file of tree identical in directory (files_of's), ext4's lost+found aside; vfat has
    no symlinks (mcopy stored the file each points to), so it is compared dereferenced."""
    result = subprocess.run(["diff", "-r", "-x", "lost+found",
                             *([] if kind == "vfat" else ["--no-dereference"]), tree, directory],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, f"{kind}: files differ: {result.stdout[:2000]}"


def fsck_command(kind, device):
    """The file system's own check, changing nothing: exit 0 when the file system is clean."""
    return {"ext4": ["e2fsck", "-fn", device], "xfs": ["xfs_repair", "-n", device],
            "btrfs": ["btrfs", "check", "--readonly", device], "vfat": ["fsck.vfat", "-n", device],
            "ntfs": ["ntfsfix", "-n", device]}[kind]


def ext4_free_extents(image):
    """[(offset, length)] in bytes of the blocks dumpe2fs lists free in the ext2/3/4 file system
    image (a file or device)."""
    text = run("dumpe2fs", image)
    block = int(re.search(r"^Block size:\s+(\d+)", text, re.M).group(1))
    extents = []
    for line in re.findall(r"^  Free blocks: (.+)$", text, re.M):
        for item in line.split(", "):
            first, _, last = item.partition("-")
            extents.append((int(first) * block, (int(last or first) - int(first) + 1) * block))
    return extents


# ---------------------------------------------------------------------------------------------
# Disks

@dataclass
class Partition:
    number: int
    kind: str          # a key of BUILDERS, "swap" or "unknown"
    start: int         # bytes
    size: int
    image: Path = None  # what was copied in


# sfdisk partition types per label
LINUX_DATA, MICROSOFT_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
TYPES = {"gpt": {"ext4": LINUX_DATA, "xfs": LINUX_DATA, "btrfs": LINUX_DATA, "vfat": MICROSOFT_DATA,
                 "ntfs": MICROSOFT_DATA, "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
                 "unknown": "7D9C3A59-1A57-4A6E-9B6E-4B5E3D2C1A0F"},    # a type GUID of no one's
         "dos": {"ext4": "83", "xfs": "83", "btrfs": "83", "vfat": "c", "ntfs": "7", "swap": "82",
                 "unknown": "da"}}


def swap_image(path, size=16 * MIB, seed=3):
    """A swap area over stale random pages (what a used swap partition holds): mkswap writes
    only its header page."""
    path.write_bytes(random_data(size, seed))
    run("mkswap", path)
    return path


def unknown_image(path, size=8 * MIB, seed=4):
    path.write_bytes(random_data(size, seed))
    return path


def build_disk(path, label, members, gap_seed=5):
    """A disk image with partition table label ('gpt' or 'dos') holding members [(kind, image)]
    in order, 1 MiB aligned, the gap after the first partition holding 1 MiB of random bytes
    (no partition's, so read in full); its [Partition]."""
    assert all(Path(image) != Path(path) for _, image in members), "a disk cannot hold itself"
    partitions = []
    start = MIB
    for number, (kind, image) in enumerate(members, 1):
        size = os.path.getsize(image)
        partitions.append(Partition(number, kind, start, size, image))
        start += size + (2 * MIB if number == 1 else 0)
    sparse_file(path, start + MIB)    # room for GPT's backup table
    script = f"label: {label}\n" + "".join(
        f"start={p.start // 512}, size={p.size // 512}, type={TYPES[label][p.kind]}\n" for p in partitions)
    run("sfdisk", "-q", path, input=script)
    for p in partitions:
        run("dd", f"if={p.image}", f"of={path}", "bs=1M", f"seek={p.start}", "oflag=seek_bytes",
            "conv=notrunc,sparse", "status=none")
    gap = partitions[0].start + partitions[0].size
    with open(path, "r+b") as f:
        f.seek(gap + MIB // 2)
        f.write(random_data(MIB, gap_seed))
    return partitions

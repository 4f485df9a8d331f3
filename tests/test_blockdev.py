"""disk/blockdev.py: what the first bytes of a disk hold, told from real images, and the data of a
file followed through loop devices backed by loop devices to where it is mounted (write-disk's
refusals built on these are test_write_disk.py)."""

import os
import subprocess

from conftest import MIB, make_ext4_image, mount_or_skip, need_tools
from mirrorpipe.disk import blockdev
from mirrorpipe.stream import frames


def first_bytes(path):
    with open(path, "rb") as f:
        return f.read(blockdev.SIGNATURE_BYTES)


def test_the_first_bytes_of_real_images_are_told_apart(tmp_path):
    need_tools("mkfs.ext4", "mkswap", "sfdisk")
    ext4 = make_ext4_image(tmp_path / "ext4.img", size="8M")
    assert blockdev.describe_contents(first_bytes(ext4)) == "an ext2/3/4 file system"
    assert blockdev.partition_table(first_bytes(ext4)) is None
    swap = tmp_path / "swap.img"
    swap.write_bytes(bytes(8 * MIB))
    subprocess.run(["mkswap", "-q", str(swap)], check=True, capture_output=True)
    assert blockdev.describe_contents(first_bytes(swap)) == "a swap area"
    for label, table in (("gpt", "gpt"), ("dos", "mbr")):
        disk = tmp_path / f"{label}.img"
        disk.write_bytes(bytes(8 * MIB))
        subprocess.run(["sfdisk", "-q", str(disk)], input=f"label: {label}\n,4M\n,\n", text=True,
                       check=True, capture_output=True)
        assert blockdev.partition_table(first_bytes(disk)) == table
        assert blockdev.describe_contents(first_bytes(disk)) == \
            ("a GPT partition table" if table == "gpt" else "an MBR partition table")
    assert blockdev.describe_contents(frames.stream_header() + bytes(100)) == "a mirrorpipe compressed stream"
    assert blockdev.describe_contents(bytes(blockdev.SIGNATURE_BYTES)) is None


def test_a_file_is_followed_through_loops_backed_by_loops_to_its_mount(tmp_path, loop_device):
    need_tools("mkfs.ext4")
    image = make_ext4_image(tmp_path / "disk.img", size="16M")
    first = loop_device(image)
    second = loop_device(first)
    rdev = {device: os.stat(device).st_rdev for device in (first, second)}
    with open(second, "rb") as f:
        assert blockdev.device_size(f.fileno()) == 16 * MIB
    views = blockdev.data_views(file_stat=os.stat(image), name=str(image))
    assert views[rdev[first]].chain == [(str(image), f"backs {first}", first)]
    assert views[rdev[second]].chain == [(str(image), f"backs {first}", first), (first, f"backs {second}", second)]
    assert blockdev.uses_of(file_stat=os.stat(image), name=str(image)) == []
    mount = mount_or_skip(second, tmp_path / "mnt")
    assert blockdev.uses_of(file_stat=os.stat(image), name=str(image)) == [
        f"{image} backs {first}, which backs {second}, which is mounted at {mount} (read-write)"]
    assert blockdev.uses_of(rdev[first]) == [f"{first} backs {second}, which is mounted at {mount} (read-write)"]
    assert blockdev.read_write_mounts(rdev[second]) == [(os.path.basename(second), str(mount))]


def test_views_and_uses_know_the_byte_range_they_show(tmp_path, loop_device):
    """Loops at offsets over loops at offsets: each view's range of the file adds the offsets up
    and keeps the narrowest size limit; a mount on one is a use of that range only."""
    need_tools("mkfs.ext4")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * MIB)
    first = loop_device(image, "-o", str(8 * MIB), "--sizelimit", str(40 * MIB))
    subprocess.run(["mkfs.ext4", "-q", "-E", f"offset={4 * MIB}", first, "16M"], check=True)
    second = loop_device(first, "-o", str(4 * MIB), "--sizelimit", str(16 * MIB))
    views = blockdev.data_views(file_stat=os.stat(image), name=str(image))
    rdev = {device: os.stat(device).st_rdev for device in (first, second)}
    assert views[rdev[first]][1:] == (8 * MIB, 48 * MIB)
    assert views[rdev[second]][1:] == (12 * MIB, 28 * MIB)
    mount = mount_or_skip(second, tmp_path / "mnt")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    assert blockdev.uses(file_stat=os.stat(image), name=str(image)) == [blockdev.Use(
        f"{image} backs {first}, which backs {second}, which is mounted at {mount} (read-only)",
        12 * MIB, 28 * MIB, False)]

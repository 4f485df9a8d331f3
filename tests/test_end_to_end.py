"""The core pipeline end to end on real block devices, and the stock-tools restore."""

import os

from conftest import flip, make_ext4_image, need_tools, sh


def test_disk_to_disk_through_compress_and_checksum(tmp_path, loop_device):
    need_tools("e2fsck", "zstd")
    image = make_ext4_image(tmp_path / "disk.img", size="96M")
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(image.stat().st_size)
    source, target = loop_device(image), loop_device(blank)

    backup = sh(f"read-disk {source} | checksum -o {tmp_path}/disk.xxh128 --name disk.img "
                f"| compress > {tmp_path}/disk.img.zst")
    assert backup.returncode == 0, backup.stderr_text
    restore = sh(f"compress -d < {tmp_path}/disk.img.zst | checksum -c {tmp_path}/disk.xxh128 "
                 f"| write-disk {target}")
    assert restore.returncode == 0, restore.stderr_text

    assert sh(f"cmp {source} {target}").returncode == 0
    fsck = sh(f"e2fsck -fn {target}")
    assert fsck.returncode == 0, fsck.stdout.decode()
    # The promise: stock tools alone restore what we wrote, and check it.
    assert sh(f"zstd -d -q < {tmp_path}/disk.img.zst | cmp - {image}").returncode == 0
    assert sh(f"cd {tmp_path} && xxh128sum -c disk.xxh128").returncode == 0


def test_stock_pipeline_restores_our_backup_to_a_device(tmp_path, loop_device):
    need_tools("zstd", "dd")
    image = make_ext4_image(tmp_path / "disk.img")
    sh(f"read-disk {image} | compress > {tmp_path}/disk.img.zst", check=True)
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(image.stat().st_size)
    target = loop_device(blank)
    sh(f"zstd -d -q < {tmp_path}/disk.img.zst | dd of={target} bs=4M status=none", check=True)
    assert sh(f"cmp {target} {image}").returncode == 0


def test_corruption_in_transit_fails_the_restore(tmp_path):
    image = make_ext4_image(tmp_path / "disk.img")
    sh(f"read-disk {image} | compress > {tmp_path}/x.zst", check=True)
    flip(tmp_path / "x.zst", os.path.getsize(tmp_path / "x.zst") // 3, mask=0x10)
    result = sh(f"compress -d < {tmp_path}/x.zst | write-disk {tmp_path}/out.img")
    assert result.returncode == 1
    assert "compress: error: corrupt" in result.stderr_text
    assert os.path.getsize(tmp_path / "out.img") < image.stat().st_size

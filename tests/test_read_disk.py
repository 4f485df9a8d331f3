"""read-disk: disks, partitions and image files as a raw stream, and facts about them."""

import json
import os
import subprocess

import pytest

from conftest import assert_one_line_error, mount_or_skip, need_tools, sh


def test_image_file_byte_identical(ext4_image):
    assert sh(f"read-disk {ext4_image}", check=True).stdout == ext4_image.read_bytes()


def test_holes_are_zeros_without_being_read(tmp_path):
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(4 << 30)
        f.seek(1 << 30)
        f.write(b"data in the middle")
    # 4 GiB of mostly hole streams in well under the time reading it would take.
    result = sh(f"read-disk {sparse} | checksum -o {tmp_path}/sum > /dev/null", check=True)
    assert result.returncode == 0
    expected = sh(f"cat {sparse} | xxh128sum").stdout.split()[0]
    assert (tmp_path / "sum").read_text().split()[0].encode() == expected


def test_offset_and_length(tmp_path):
    img = tmp_path / "img"
    data = os.urandom(3 << 20)
    img.write_bytes(data)
    out = sh(f"read-disk --offset 1M --length 1000 {img}", check=True).stdout
    assert out == data[1 << 20:(1 << 20) + 1000]
    assert sh(f"read-disk --offset 2MB {img}", check=True).stdout == data[2_000_000:]
    assert_one_line_error(sh(f"read-disk --offset 4M {img}"), "read-disk", "beyond the end")
    assert_one_line_error(sh(f"read-disk --length 4M {img}"), "read-disk", "runs past the end")
    assert sh(f"read-disk --length 4X {img}").returncode == 2


def test_missing_unreadable_and_directory_sources(tmp_path):
    assert_one_line_error(sh(f"read-disk {tmp_path}/none > /dev/null"), "read-disk",
                          "cannot open", "No such file")
    assert_one_line_error(sh(f"read-disk {tmp_path} > /dev/null"), "read-disk", "is a directory")
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"x" * 4096)
    secret.chmod(0o600)
    if os.geteuid() == 0 and subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0:
        os.chmod(tmp_path, 0o755)
        result = sh(f"setpriv --reuid=65534 --regid=65534 --clear-groups env PATH=\"$PATH\" "
                    f"read-disk {secret} > /dev/null")
        assert_one_line_error(result, "read-disk", "cannot open", "Permission denied")


def test_info_and_loop_device(ext4_image, loop_device, tmp_path):
    device = loop_device(ext4_image)
    result = sh(f"read-disk --info {tmp_path}/info.json {device}", check=True)
    assert result.stdout == ext4_image.read_bytes()
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["size"] == ext4_image.stat().st_size
    assert info["type"] == "disk"
    assert info["logical_sector_size"] == 512 and info["physical_sector_size"] >= 512
    assert info["contents"] == "an ext2/3/4 file system"
    assert info["partition_table"] is None
    for key in ("model", "serial", "time", "host", "source"):
        assert key in info


def test_info_reports_a_gpt_partition_table_and_partitions(tmp_path, loop_device):
    need_tools("sfdisk")
    img = tmp_path / "gpt.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    sh(f"printf 'label: gpt\\n,20M\\n,\\n' | sfdisk -q {img}", check=True)
    device = loop_device(img, "-P")
    sh(f"read-disk --info {tmp_path}/info.json {device} > /dev/null", check=True)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["partition_table"] == "gpt"
    if not os.path.exists(device + "p1"):
        pytest.skip("this kernel made no partition devices for the loop device (partscan)")
    assert [p["size"] for p in info["partitions"]][0] == 20 << 20


def test_mounted_read_write_source_is_a_warning_not_a_refusal(ext4_image, loop_device, tmp_path):
    device = loop_device(ext4_image)
    mnt = mount_or_skip(device, tmp_path / "mnt")
    result = sh(f"read-disk {device} | wc -c")
    assert result.returncode == 0
    assert f"read-disk: warning: {device} is mounted read-write at {mnt}" in result.stderr_text


def test_dash_is_standard_input(tmp_path):
    data = os.urandom(1 << 20)
    assert sh("read-disk -", input=data, check=True).stdout == data


def test_dash_starts_where_standard_input_stands(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"A" * (1 << 20) + b"B" * (1 << 20))
    result = sh(f"(head -c 1M > /dev/null; read-disk -) < {data}", check=True)
    assert result.stdout == b"B" * (1 << 20)

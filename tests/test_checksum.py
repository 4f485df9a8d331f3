"""checksum: a pass-through digest filter whose sum files the stock xxhsum tools accept, and
which accepts theirs."""

import os

import pytest

from conftest import assert_one_line_error, need_tools, sh


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(3 << 20) + bytes(2 << 20))
    return path


def test_passes_the_stream_through_unchanged_and_stock_tools_accept_its_sum_file(data_file, tmp_path):
    need_tools("xxh128sum")
    result = sh(f"cd {tmp_path} && checksum -o sums --name disk.img < disk.img", check=True)
    assert result.stdout == data_file.read_bytes()
    assert sh(f"cd {tmp_path} && xxh128sum -c sums", check=True).stdout.strip() == b"disk.img: OK"
    stock = sh(f"cd {tmp_path} && xxh128sum disk.img", check=True).stdout
    assert (tmp_path / "sums").read_bytes() == stock


@pytest.mark.parametrize("algorithm,stock", [("xxh128", "xxh128sum"), ("xxh3", "xxhsum -H3"),
                                             ("xxh64", "xxhsum -H1")])
def test_file_arguments_print_what_the_stock_tools_print(data_file, tmp_path, algorithm, stock):
    need_tools("xxhsum", "xxh128sum")
    ours = sh(f"cd {tmp_path} && checksum -a {algorithm} disk.img", check=True).stdout
    assert ours == sh(f"cd {tmp_path} && {stock} disk.img", check=True).stdout
    (tmp_path / "sums").write_bytes(ours)
    assert sh(f"cd {tmp_path} && xxhsum -c sums", check=True).returncode == 0


@pytest.mark.parametrize("stock", ["xxh128sum", "xxhsum -H3", "xxhsum -H1", "xxh128sum --tag"])
def test_checks_a_stream_against_stock_sum_files(data_file, tmp_path, stock):
    need_tools("xxhsum", "xxh128sum")
    sh(f"cd {tmp_path} && {stock} disk.img > sums", check=True)
    result = sh(f"checksum -c {tmp_path}/sums < {data_file}", check=True)
    assert result.stdout == data_file.read_bytes()
    assert "matches" in result.stderr_text


def test_mismatch_exits_1_with_one_line(data_file, tmp_path):
    need_tools("xxh128sum")
    sh(f"cd {tmp_path} && xxh128sum disk.img > sums", check=True)
    result = sh(f"head -c 1M {data_file} | checksum -c {tmp_path}/sums > /dev/null")
    assert result.returncode == 1
    assert_one_line_error(result, "checksum", "checksum mismatch", "disk.img")


def test_sum_file_problems(tmp_path, data_file):
    (tmp_path / "junk").write_text("this is not a sum file\n")
    assert_one_line_error(sh(f"checksum -c {tmp_path}/junk < {data_file} > /dev/null"), "checksum",
                          "not a line of")
    assert_one_line_error(sh(f"checksum -c {tmp_path}/missing < {data_file} > /dev/null"), "checksum",
                          "cannot read the sum file")
    (tmp_path / "two").write_text(f"{'0' * 32}  a\n{'1' * 32}  b\n")
    assert_one_line_error(sh(f"checksum -c {tmp_path}/two < {data_file} > /dev/null"), "checksum",
                          "--name")
    result = sh(f"checksum --name b -c {tmp_path}/two < {data_file} > /dev/null")
    assert_one_line_error(result, "checksum", "mismatch", "'b'")
    assert sh(f"checksum -o x {data_file}").returncode == 2


def test_missing_file_argument_is_reported_and_the_rest_still_digested(tmp_path, data_file):
    result = sh(f"checksum {tmp_path}/nope {data_file}")
    assert result.returncode == 1
    assert "cannot read" in result.stderr_text and str(data_file).encode() in result.stdout


def test_without_a_sum_file_the_digest_goes_to_stderr(data_file):
    need_tools("xxh128sum")
    result = sh(f"cat {data_file} | checksum | wc -c", check=True)
    assert result.stdout.strip() == str(data_file.stat().st_size).encode()
    stock = sh(f"xxh128sum < {data_file}", check=True).stdout.decode().split()[0]
    assert f"checksum: {stock}  stdin" in result.stderr_text

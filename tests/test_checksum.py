"""checksum: a pass-through digest filter whose sum files the stock xxhsum tools accept, and
which accepts theirs."""

import os
import subprocess

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


# Names xxh128sum 0.8.1 reads back from a line as they are (it knows no escapes).
AWKWARD_NAMES = ["back\\slash", "\\leading-backslash", " leading space", "trailing space ", "two  spaces",
                 "tab\tname", "carriage\rreturn", "form\ffeed", "line\u2028separator", "*star", "(p) = x"]


@pytest.mark.parametrize("algorithm, stock_checker", [("xxh128", "xxh128sum"), ("xxh3", "xxhsum")])
def test_names_are_written_so_that_stock_xxh128sum_reads_them_back(data_file, tmp_path, algorithm,
                                                                   stock_checker):
    need_tools("xxh128sum", "xxhsum")
    for number, name in enumerate(AWKWARD_NAMES):
        os.link(data_file, tmp_path / name)
        sums = tmp_path / f"sums{number}"
        sh(f"checksum -a {algorithm} -o {sums} --name '{name}' < {data_file} > /dev/null", check=True)
        stock = subprocess.run([stock_checker, "-c", str(sums)], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        assert stock.returncode == 0, (name, sums.read_bytes(), stock.stdout)
        assert sh(f"checksum -c {sums} --name '{name}' < {data_file} > /dev/null").returncode == 0, name
        assert sh(f"checksum -c {sums} < {data_file} > /dev/null").returncode == 0, name
    listed = sh(f"cd {tmp_path} && checksum -- *space* *slash* > all.sums && xxh128sum -c all.sums", check=True)
    assert listed.stdout.count(b": OK") == 5


def test_a_name_with_a_newline_is_refused_before_the_stream_is_read(data_file, tmp_path):
    """No line of a sum file can hold a newline for xxh128sum 0.8.1: refused (usage error), no sum
    file written; a FILE argument with one is named and skipped, the others digested."""
    result = sh(f"checksum -o {tmp_path}/sums --name $'two\\nlines' < {data_file} > {tmp_path}/out")
    assert result.returncode == 2
    assert_one_line_error(result, "checksum", "--name", "holds a newline")
    assert not (tmp_path / "sums").exists() and (tmp_path / "out").stat().st_size == 0
    os.link(data_file, tmp_path / "two\nlines")
    result = sh(f"cd {tmp_path} && checksum $'two\\nlines' disk.img")
    assert result.returncode == 1 and result.stdout.decode().endswith("  disk.img\n")
    assert_one_line_error(result, "checksum", "not digested: the name 'two\\nlines' holds a newline")


def test_a_directory_argument_is_named(data_file):
    result = sh(f"checksum /tmp {data_file}")
    assert result.returncode == 1 and str(data_file).encode() in result.stdout
    assert_one_line_error(result, "checksum", "cannot read /tmp: Is a directory")


def test_an_unwritable_sum_file_fails_before_the_stream_is_read(tmp_path):
    """checksum -o must not swallow a whole disk before saying it cannot write its sum file: here
    the input never ends, so only an early check lets checksum exit."""
    process = subprocess.Popen(["checksum", "-o", "/nonexistent/a"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        process.stdin.write(b"x" * 65536)
        process.stdin.flush()
        status = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("checksum -o /nonexistent/a read its input instead of failing at once")
    finally:
        process.stdin.close()
    message = process.stderr.read().decode()
    assert status == 1 and message.startswith("checksum: error: cannot write /nonexistent/a"), message

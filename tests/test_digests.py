"""stream/digests.py in-process: a stream's digest passed through, sum-file lines written as the
stock tools write them and read back in both formats (checksum itself, against the stock xxhsum
tools, is test_checksum.py)."""

import pytest
import xxhash

from conftest import random_data
from mirrorpipe.errors import Error
from mirrorpipe.stream import digests


def test_a_stream_is_digested_and_passed_on_unchanged(tmp_path):
    data = random_data(3 * (1 << 20) + 11)
    (tmp_path / "in").write_bytes(data)
    ended = []
    with open(tmp_path / "in", "rb") as src, open(tmp_path / "out", "wb") as out:
        hexdigest = digests.hash_stream(src.fileno(), "xxh128", copy_to=out.fileno(), confirm_end=ended.append)
    assert hexdigest == xxhash.xxh3_128(data).hexdigest()
    assert (tmp_path / "out").read_bytes() == data
    assert ended == [len(data)]


@pytest.mark.parametrize("algorithm", sorted(digests.ALGORITHMS))
def test_each_line_written_reads_back(tmp_path, algorithm):
    names = ["disk.img", "a name with  two spaces", "back\\slash", "tab\there\r", "stdin"]
    entries = [(algorithm, digests.ALGORITHMS[algorithm](name.encode()).hexdigest(), name) for name in names]
    lines = "".join(digests.format_line(algorithm, hexdigest, name) for _, hexdigest, name in entries)
    (tmp_path / "sums").write_text(lines, newline="")
    assert digests.parse_sum_file(str(tmp_path / "sums")) == entries
    if algorithm == "xxh3":
        assert lines.startswith(f"XXH3 (disk.img) = {entries[0][1]}\n")
    else:
        assert lines.startswith(f"{entries[0][1]}  disk.img\n")


def test_sum_files_of_every_stock_form_are_read(tmp_path):
    h128, h64 = "0123456789ABCDEF" * 2, "fedcba9876543210"
    (tmp_path / "sums").write_text(
        f"{h128}  plain.img\n"
        f"{h64} *binary-mode.img\n"
        f"\\{h128}  new\\nline\\\\and backslash\n"       # xxhsum 0.8.2's escaped name
        "\n"
        f"XXH128 (tagged.img) = {h128}\n"
        f"XXH64 (tagged64.img) = {h64}\n"
        f"XXH3 (xxh3.img) = {h64}\n", newline="")
    assert digests.parse_sum_file(str(tmp_path / "sums")) == [
        ("xxh128", h128.lower(), "plain.img"), ("xxh64", h64, "binary-mode.img"),
        ("xxh128", h128.lower(), "new\nline\\and backslash"), ("xxh128", h128.lower(), "tagged.img"),
        ("xxh64", h64, "tagged64.img"), ("xxh3", h64, "xxh3.img")]


@pytest.mark.parametrize("text, message", [
    ("", "holds no checksum lines"),
    ("\n  \n", "holds no checksum lines"),
    ("0123456789abcdef  ok\nmd5 d41d8cd98f00b204e9800998ecf8427e  other\n", ":2: not a line of an xxh128, xxh3 or xxh64 sum file"),
    ("0123456789abc  short\n", ":1: not a line"),
    ("SHA256 (x) = 0123456789abcdef\n", ":1: not a line"),
])
def test_what_is_no_sum_file_is_refused_naming_the_line(tmp_path, text, message):
    (tmp_path / "sums").write_text(text)
    with pytest.raises(Error, match=message):
        digests.parse_sum_file(str(tmp_path / "sums"))


def test_a_missing_sum_file_is_named():
    with pytest.raises(Error, match="cannot read the sum file /nonexistent/sums: No such file or directory"):
        digests.parse_sum_file("/nonexistent/sums")


def test_the_entry_checked_is_the_one_named_else_the_only_one_else_stdin():
    one = [("xxh128", "aa", "disk.img")]
    many = [("xxh128", "aa", "disk.img"), ("xxh128", "bb", "stdin"), ("xxh128", "cc", "other")]
    assert digests.pick_entry(one, "sums") == one[0]
    assert digests.pick_entry(many, "sums") == many[1]
    assert digests.pick_entry(many, "sums", name="other") == many[2]
    with pytest.raises(Error, match="sums has no line for 'absent'"):
        digests.pick_entry(many, "sums", name="absent")
    with pytest.raises(Error, match="sums has 2 lines; say which one to check with --name"):
        digests.pick_entry([many[0], many[2]], "sums")


def test_a_name_with_a_newline_cannot_be_written():
    with pytest.raises(Error, match="holds a newline"):
        digests.format_line("xxh128", "aa", "two\nlines")

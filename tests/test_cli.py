"""The conventions every command shares (cli.py, terminal.py, errors.py): one-line errors, terminals,
SIGPIPE, progress, closed standard streams, exit statuses. Sizes are test_units.py."""

import os
import re

import pytest

from conftest import REPO, assert_one_line_error, sh
from mirrorpipe import errors

COMMANDS = ["read-disk", "compress", "checksum", "write-disk"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_version(command):
    result = sh(f"{command} --help", check=True)
    assert result.stdout.startswith(f"usage: {command}".encode())
    assert b"--quiet" in result.stdout and b"--progress" in result.stdout
    assert sh(f"{command} --version", check=True).stdout.decode().startswith(f"{command} (mirrorpipe) ")


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_errors_are_one_line_with_status_2(command):
    result = sh(f"{command} --no-such-flag /dev/null < /dev/null")
    assert result.returncode == 2
    assert_one_line_error(result, command, "--no-such-flag", f"see {command} --help")


@pytest.mark.parametrize("script,command", [
    ("read-disk {img}", "read-disk"),
    ("compress < {img}", "compress"),
    ("compress < {img} | compress -d", "compress"),
    ("checksum < {img}", None),  # prints the digest line instead: text, not binary
])
def test_binary_output_to_a_terminal_is_refused(terminal, tmp_path, script, command):
    img = tmp_path / "data"
    img.write_bytes(b"\x01" * 4096)
    term = terminal(script.format(img=img) + " > /dev/tty")
    status = term.wait()
    text = term.output.decode(errors="replace")
    if command is None:
        assert status == 0
        assert re.search(r"[0-9a-f]{32}  stdin", text), text
    else:
        assert status == 2
        assert f"{command}: error: refusing to write binary data to a terminal" in text
        assert "\x01" not in text


def test_binary_input_from_a_terminal_is_refused(terminal):
    term = terminal("compress < /dev/tty > /dev/null")
    assert term.wait() == 2
    assert b"refusing to read binary data from a terminal" in term.output


def test_downstream_exit_ends_upstream_quietly(tmp_path):
    img = tmp_path / "data"
    img.write_bytes(bytes(range(256)) * (64 << 12))  # 64 MiB
    result = sh(f"read-disk {img} | compress | compress -d | head -c 1M | wc -c")
    assert result.stdout.strip() == b"1048576"
    assert result.stderr_text == ""
    # Each upstream command died of SIGPIPE (141) like cat, or finished first: never an error.
    statuses = sh(f"read-disk {img} | compress -d 2>&1 >/dev/null | head -c 0; "
                  f"read-disk {img} | head -c 1M > /dev/null; echo ${{PIPESTATUS[0]}}").stdout.split()
    assert statuses[-1] in (b"141", b"0")


def test_progress_lines_of_a_pipeline_share_one_line(terminal, tmp_path):
    img = tmp_path / "data"
    # Random data does not shrink, so with the last reader held back every pipe fills and all
    # three commands stay alive, drawing, until the shared line was seen (timing alone was not
    # enough: compress finished 8 MiB at -19 within one tick once frames were 1 MiB).
    img.write_bytes(os.urandom(16 << 20))
    go = tmp_path / "go"
    term = terminal(f"read-disk -P {img} | compress -P | checksum -P | "
                    f"{{ while [ ! -e {go} ]; do sleep 0.05; done; cat > /dev/null; }}")
    term.read_until(" | ", timeout=60)
    go.touch()
    assert term.wait(timeout=240) == 0
    text = term.output.decode(errors="replace")
    # Every piece between carriage returns and newlines is one whole status or summary line of
    # one of our commands, never two commands' output interleaved.
    pieces = [p.replace("\x1b[K", "").strip() for p in re.split(r"[\r\n]+", text)]
    pieces = [p for p in pieces if p]
    assert pieces, text
    for piece in pieces:
        assert re.match(r"^(read-disk|compress|checksum)[ :]", piece), piece
        for name in ("read-disk", "compress", "checksum"):
            # a name appears again only after the separator of the shared line
            assert piece.count(name + " ") + piece.count(name + ":") <= 1 or " | " in piece, piece
    assert any(" | " in p for p in pieces), "never drew the commands on one shared line: " + text
    assert "compress: 16.0 MiB raw" in text


def test_a_terminal_that_does_not_know_its_width_gets_whole_progress_lines(terminal, tmp_path):
    """A fresh pty or a serial line says it has 0 columns: the line is cut at 80, not to nothing."""
    img = tmp_path / "data"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    go = tmp_path / "go"   # head reads once a progress line was drawn
    term = terminal(f"read-disk -P {img} | "
                    f"{{ while [ ! -e {go} ]; do sleep 0.05; done; head -c 1M > /dev/null; }}")
    term.read_until("\rread-disk ")
    go.touch()
    term.wait()
    drawn = re.findall(rb"\r(read-disk [^\r\x1b]*)\x1b\[K", term.output)
    assert drawn, term.output
    for line in drawn:
        assert "…".encode() not in line and re.search(rb"/1\.0 GiB \d+% ", line), line


def test_input_already_partly_read_is_taken_from_where_it_stands(tmp_path):
    """A command sharing a file on stdin with one before it starts where that one stopped."""
    data = tmp_path / "data"
    data.write_bytes(b"A" * (1 << 20) + b"B" * (1 << 20))
    result = sh(f"(head -c 1M > /dev/null; checksum -P 2>/dev/null) < {data}", check=True)
    assert result.stdout == b"B" * (1 << 20)


@pytest.mark.parametrize("script", ["compress < {img}", "compress -d < {img}.zst", "checksum < {img}",
                                    "read-disk {img}", "compress -d {img}.zst <&-"])
def test_a_closed_standard_output_gets_a_sentence(tmp_path, script):
    img = tmp_path / "data"
    img.write_bytes(os.urandom(100_000))
    sh(f"compress < {img} > {img}.zst", check=True)
    result = sh(script.format(img=img) + " >&-")
    assert result.returncode == 1
    line = assert_one_line_error(result, script.split()[0], "standard output", "closed",
                                 "redirect")
    assert "Bad file descriptor" not in line


def test_a_closed_standard_output_is_not_taken_by_a_named_output(tmp_path):
    """With descriptor 1 closed, the next file opened would get its number: the sum file must not
    receive the stream meant for standard output."""
    img = tmp_path / "data"
    img.write_bytes(os.urandom(100_000))
    result = sh(f"checksum -o {tmp_path}/sums < {img} >&-")
    assert result.returncode == 1
    assert_one_line_error(result, "checksum", "standard output is closed")
    for leftover in tmp_path.iterdir():
        assert leftover.name == "data" or leftover.stat().st_size < 1000, leftover


@pytest.mark.parametrize("command", ["compress", "compress -d", "checksum", "split-span --size 1M out",
                                     "write-disk -f target", "read-disk -"])
def test_a_directory_as_standard_input_gets_one_line(tmp_path, command):
    """Python dies in its start-up on a directory as stdin ("Fatal Python error"): the launcher
    must say it in one line first."""
    result = sh(f"cd {tmp_path} && {command} < /tmp > /dev/null")
    assert result.returncode == 2
    assert "Fatal Python error" not in result.stderr_text
    assert_one_line_error(result, command.split()[0], "standard input is a directory")


@pytest.mark.parametrize("command", ["compress", "compress -d"])
def test_a_directory_as_input_file_is_named(command):
    result = sh(f"{command} /tmp > /dev/null")
    assert result.returncode == 1
    assert_one_line_error(result, "compress", "/tmp", "directory")


@pytest.mark.parametrize("script", ["split-span --size 1M {tmp}/out", "write-disk {tmp}/x.img",
                                    "compress", "checksum"])
def test_a_closed_standard_input_is_named_before_any_work(tmp_path, script):
    result = sh(script.format(tmp=tmp_path) + " <&-")
    line = assert_one_line_error(result, script.split()[0], "standard input is closed", "redirect")
    assert "Bad file descriptor" not in line
    assert not (tmp_path / "x.img").exists() and not (tmp_path / "out").exists()


# The statuses beyond 0, 1 and 2 that each command may exit with, as errors.py names them.
OWN_EXIT_STATUSES = {
    "read-disk": [errors.EXIT_SECTORS_FILLED],
    "compress": [errors.EXIT_SEEK_TABLE_DAMAGED],
    "reassemble": [errors.EXIT_REBUILDABLE],
    "write-disk": [errors.EXIT_INTERRUPTED],
    "checksum": [], "split-span": [], "burn-iso": [],
}


@pytest.mark.parametrize("command", sorted(OWN_EXIT_STATUSES))
def test_every_exit_status_of_a_command_is_documented_in_its_man_page_and_help(command):
    page = (REPO / "man" / f"{command}.1").read_text()
    section = page.split(".Sh EXIT STATUS\n", 1)[1].split("\n.Sh ", 1)[0]
    help_text = re.sub(r"\s+", " ", sh(f"{command} --help", check=True).stdout.decode())
    for status in [errors.EXIT_OK, errors.EXIT_FAILURE, errors.EXIT_USAGE] + OWN_EXIT_STATUSES[command]:
        assert re.search(rf"(?m)^\.It {status}$|(^|[ ,]){status} (when|on|for|with)\b", section), \
            (command, status, section)
        assert re.search(rf"exit status:.*[ ,]{status} ", help_text), (command, status)

"""Named outputs destroy nothing: -o of compress, checksum and reassemble, read-disk --map and
--info. A symbolic link is followed and its target written, the link kept; a device node, a FIFO
or an open descriptor (/dev/stdout, /dev/fd/N) is written in place, never replaced by a regular
file; a regular file is replaced whole or not at all; binary data is refused for a terminal even
when it is named, text goes to it."""

import json
import os
import stat
import subprocess

import pytest

from conftest import MIB, flipped, need_root, sh


# command line (with {out}, {data}, {set}) and whether it writes binary data to {out}
OUTPUTS = {
    "compress -o": ("compress -o {out} < {data}", True),
    "reassemble -o": ("reassemble -o {out} {set}", True),
    "checksum -o": ("checksum -o {out} < {data} > /dev/null", False),
    "read-disk --map": ("read-disk --map {out} {data} > /dev/null", False),
    "read-disk --info": ("read-disk --info {out} {data} > /dev/null", False),
}
TEXT = [name for name, (_, binary) in OUTPUTS.items() if not binary]
BINARY = [name for name, (_, binary) in OUTPUTS.items() if binary]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 3 MiB image (random data and zeros) and a set of it made by split-span."""
    base = tmp_path_factory.mktemp("outputs")
    data = base / "data.img"
    data.write_bytes(os.urandom(MIB) + bytes(MIB) + os.urandom(MIB))
    sh(f"split-span --size 2M --chunk-size 256K {base}/set < {data}", check=True)
    return data, base / "set"


def command(name, inputs, out):
    data, set_dir = inputs
    return OUTPUTS[name][0].format(out=out, data=data, set=set_dir)


def check_content(name, content, inputs):
    """content is what the command named `name` writes for inputs."""
    data = inputs[0].read_bytes()
    if name == "compress -o":
        assert subprocess.run(["zstd", "-dc"], input=content, capture_output=True).stdout == data
    elif name == "reassemble -o":
        assert content == data
    elif name == "checksum -o":
        digest = subprocess.run(["xxh128sum"], input=data, capture_output=True).stdout.split()[0]
        assert content.startswith(digest + b"  ")
    elif name == "read-disk --map":
        assert content.startswith(b"# Mapfile") and content.count(b"# Mapfile") == 1
        assert b"# Finished" in content
    else:
        assert json.loads(content)["size"] == len(data)


def run_ok(script):
    result = sh(script)
    assert result.returncode == 0, result.stderr_text
    return result


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_symlink_is_followed_and_kept(tmp_path, inputs, name):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real"
    real.write_bytes(b"old content\n")
    os.chmod(real, 0o640)
    link = tmp_path / "link"
    link.symlink_to(real)
    run_ok(command(name, inputs, link))
    assert link.is_symlink() and os.readlink(link) == str(real)
    check_content(name, real.read_bytes(), inputs)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(os.listdir(elsewhere)) == ["real"] and sorted(os.listdir(tmp_path)) == ["elsewhere", "link"]


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_dangling_symlink_gets_its_target_made(tmp_path, inputs, name):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "made")
    run_ok(command(name, inputs, link))
    assert link.is_symlink()
    check_content(name, (tmp_path / "made").read_bytes(), inputs)


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_device_node_is_written_in_place(tmp_path, inputs, name):
    need_root()
    node = tmp_path / "nulldev"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    run_ok(command(name, inputs, node))
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert os.listdir(tmp_path) == ["nulldev"]


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_fifo_is_written_in_place(tmp_path, inputs, name):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = tmp_path / "got"
    with open(got, "wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
    try:
        result = sh(command(name, inputs, fifo), timeout=60)
        assert result.returncode == 0, result.stderr_text
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert reader.wait(timeout=30) == 0
    finally:
        reader.kill()
        reader.wait()
    check_content(name, got.read_bytes(), inputs)


@pytest.mark.parametrize("name", OUTPUTS)
@pytest.mark.parametrize("descriptor", ["a file", "a pipe"])
def test_an_open_descriptor_is_written_in_place(tmp_path, inputs, name, descriptor):
    """/dev/fd/3 names what descriptor 3 is open on: written through it, never replaced."""
    got = tmp_path / "got"
    got.write_bytes(b"")
    inode = got.stat().st_ino
    script = command(name, inputs, "/dev/fd/3")
    if descriptor == "a file":
        run_ok(f"{script} 3> {got}")
        assert got.stat().st_ino == inode
    else:
        run_ok(f"{{ 3>&1 {script} >/dev/null ; }} | cat > {got}")
    check_content(name, got.read_bytes(), inputs)


@pytest.mark.parametrize("name", BINARY)
def test_dev_stdout_carries_binary_output_on(tmp_path, inputs, name):
    got = tmp_path / "got"
    run_ok(command(name, inputs, "/dev/stdout") + f" | cat > {got}")
    check_content(name, got.read_bytes(), inputs)


def tty_node(directory):
    """A private node of /dev/tty (5, 0): the controlling terminal of whoever opens it."""
    need_root()
    node = directory / "tty"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(5, 0))
    return node


@pytest.mark.parametrize("name", BINARY)
def test_binary_data_is_refused_for_a_named_terminal(tmp_path, inputs, terminal, name):
    node = tty_node(tmp_path)
    for out in (node, "/dev/tty"):
        term = terminal(command(name, inputs, out))
        assert term.wait() == 2, term.output
        assert b"refusing to write binary data to the terminal" in term.output
        assert stat.S_ISCHR(os.lstat(node).st_mode)
        assert len(term.output) < 1000   # the message, not the data


@pytest.mark.parametrize("name", TEXT)
def test_text_goes_to_a_named_terminal(tmp_path, inputs, terminal, name):
    node = tty_node(tmp_path)
    term = terminal(command(name, inputs, node).replace(" ", " --quiet ", 1))
    assert term.wait() == 0, term.output
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(5, 0)
    check_content(name, term.output.replace(b"\r\n", b"\n"), inputs)


@pytest.mark.parametrize("failing", [
    "compress -d -o {out} < {data}",                      # not a compressed stream
    "compress -d < {data} | checksum -o {out} > /dev/null",   # its input is cut short
    "reassemble -o {out} {damaged}",                      # a flipped bit in the last volume
])
def test_a_failed_run_leaves_a_regular_file_as_it_was(tmp_path, inputs, failing):
    data, set_dir = inputs
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for entry in os.listdir(set_dir):
        content = (set_dir / entry).read_bytes()
        if entry == "image.002":
            content = flipped(content, len(content) // 2, mask=1)
        (damaged / entry).write_bytes(content)
    out = tmp_path / "out"
    out.write_bytes(b"the previous output, kept\n")
    result = sh(failing.format(out=out, data=data, damaged=damaged))
    assert result.returncode != 0
    assert out.read_bytes() == b"the previous output, kept\n"
    assert not (tmp_path / "out.part").exists()


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_directory_is_no_output(tmp_path, inputs, name):
    result = sh(command(name, inputs, tmp_path))
    assert result.returncode == 1
    assert f"cannot write {tmp_path}" in result.stderr_text or f"{tmp_path}: it is a directory" \
        in result.stderr_text, result.stderr_text

"""One terminal for a whole pipeline, as a user sees it on a pseudo-terminal: the questions of its
commands asked one at a time and answered by the command that asked, no progress drawn over an
open question, messages above it, remote messages over SSH on lines of their own, and the line
ended when the pipeline dies of SIGPIPE."""

import os
import re
import subprocess
import tempfile
import time

import pytest

from conftest import (BIN, DISC_QUESTION, WRITE_DISK_QUESTION, Screen, answer_as_a_user, insert, make_discs,
                      need_root, next_question, read_for, remote, sh, widen)

# A shell command that waits until the test creates the file {go}.
WAIT_FOR = "while [ ! -e {go} ]; do sleep 0.05; done"


def device_holding_a_file_system(tmp_path, loop_device, size="16M"):
    image = tmp_path / "target.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), size], check=True)
    return loop_device(image)


# ---------------------------------------------------------------------------------------------
# Questions

@pytest.mark.parametrize("first", ["write-disk", "reassemble"])
def test_questions_of_a_pipeline_are_asked_one_at_a_time_and_answered_by_the_command_that_asked(
        tmp_path, terminal, loop_device, first):
    """The README's restore with a file system on the target: write-disk's 'type yes' and
    reassemble's 'insert disc 2' both want the terminal at once, whichever comes first."""
    need_root()
    stream = os.urandom(1300 << 10)    # three volumes of 512 KiB
    (tmp_path / "source.img").write_bytes(stream)
    discs, drive = make_discs(tmp_path, tmp_path / "source.img")
    assert len(discs) == 3
    device = device_holding_a_file_system(tmp_path, loop_device)
    insert(drive, discs[0])
    # The other one starts once the first question is on the screen: its own question is due
    # while the first is open.
    reassemble, write_disk = f"reassemble {drive}", f"write-disk {device}"
    go = tmp_path / "go"
    if first == "write-disk":
        reassemble = f"({WAIT_FOR.format(go=go)}; exec {reassemble})"
    else:
        write_disk = f"({WAIT_FOR.format(go=go)}; exec {write_disk})"
    term = widen(terminal(f"{reassemble} | compress -d | {write_disk}"))
    next_question(term)
    go.touch()
    asked = answer_as_a_user(term, drive, discs, hold=2)
    assert term.wait() == 0, term.output.decode(errors="replace")
    if first == "write-disk":
        assert WRITE_DISK_QUESTION.fullmatch(asked[0]) and DISC_QUESTION.fullmatch(asked[1]), asked
    else:
        assert DISC_QUESTION.fullmatch(asked[0]), asked
        assert any(WRITE_DISK_QUESTION.fullmatch(q) for q in asked[1:]), asked
    assert len(asked) == 3
    with open(device, "rb") as f:
        assert f.read(len(stream)) == stream


def test_refusing_to_overwrite_ends_the_pipeline_and_its_waiting_question(
        tmp_path, terminal, loop_device):
    """'no' to write-disk while reassemble waits to ask for disc 2: write-disk ends, compress -d
    (blocked writing to it) dies of SIGPIPE, and reassemble's question goes away with it instead
    of waiting for an answer nobody needs."""
    need_root()
    # Disc 1 decompresses to far more than the pipes hold: compress -d waits to write.
    source = tmp_path / "source.img"
    source.write_bytes(bytes(16 << 20) + os.urandom(1200 << 10))
    discs, drive = make_discs(tmp_path, source)
    device = device_holding_a_file_system(tmp_path, loop_device, size="24M")
    insert(drive, discs[0])
    go = tmp_path / "go"
    term = widen(terminal(f"({WAIT_FOR.format(go=go)}; exec reassemble {drive}) | compress -d | "
                          f"write-disk {device}"))
    assert WRITE_DISK_QUESTION.fullmatch(next_question(term))
    go.touch()
    read_for(term, 1.5)     # reassemble reads disc 1 and waits to ask for disc 2
    term.send("no")
    assert term.wait(timeout=20) == 1
    assert "not confirmed; nothing was written" in term.output.decode()
    assert not DISC_QUESTION.fullmatch(Screen(term.output).current), term.output


def test_a_message_while_a_question_is_open_is_written_above_it(tmp_path, terminal, loop_device):
    """compress -d fails while write-disk waits for 'yes': the error gets a line of its own
    and the question is shown again, whole, under it."""
    need_root()
    device = device_holding_a_file_system(tmp_path, loop_device)
    go = tmp_path / "go"
    term = widen(terminal(f"({WAIT_FOR.format(go=go)}; echo not a stream) | compress -d | "
                          f"write-disk {device}"))
    question = next_question(term)
    assert WRITE_DISK_QUESTION.fullmatch(question), question
    go.touch()
    deadline = time.monotonic() + 30
    while b"compress: error: " not in term.output:
        assert time.monotonic() < deadline, term.output
        read_for(term, 0.1)
    read_for(term, 0.5)
    screen = Screen(term.output)
    assert screen.current == question, screen.rows
    assert [row for row in screen.rows if row.startswith("compress: error: ")], screen.rows
    term.send("no")
    term.wait()
    assert "not confirmed; nothing was written" in term.output.decode()


def test_a_pipeline_that_asked_leaves_no_shared_directory(tmp_path, terminal, loop_device):
    need_root()
    device = device_holding_a_file_system(tmp_path, loop_device)
    term = widen(terminal(f"write-disk {device} < /dev/null"))
    assert WRITE_DISK_QUESTION.fullmatch(next_question(term))
    term.send("no")
    assert term.wait() == 1
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    assert not os.path.exists(f"{base}/mirrorpipe-progress-{os.getuid()}-{term.process.pid}")


def test_the_question_of_a_killed_command_whose_pid_lives_on_stops_nothing(tmp_path, terminal):
    """A command killed (SIGKILL) while asking leaves its question behind; once its pid belongs
    to a process outside the pipeline (here: init), the progress line is drawn again."""
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    go = tmp_path / "go"
    term = widen(terminal(f"read-disk -P {big} | {{ {WAIT_FOR.format(go=go)}; cat > /dev/null; }}"))
    term.read_until("\rread-disk ")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    with open(f"{base}/mirrorpipe-progress-{os.getuid()}-{term.process.pid}/question", "w") as f:
        f.write("1\nleft behind: ")
    seen = len(term.output)
    read_for(term, 1.5)
    go.touch()
    assert term.wait() == 0
    assert b"\rread-disk " in term.output[seen:], term.output[seen:]


# ---------------------------------------------------------------------------------------------
# Lines ended

@pytest.mark.parametrize("pipeline", ["read-disk -P {big}", "read-disk -P {big} | checksum -P"])
def test_a_pipeline_killed_by_sigpipe_leaves_the_line_ended(tmp_path, terminal, pipeline):
    """`... | head` on a terminal: quiet, status 141, and the shell's next line starts at column
    0 instead of after the progress line."""
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(4 << 30)   # sparse: read-disk reads no hole
    # head starts reading once the progress line is drawn.
    go = tmp_path / "go"
    term = widen(terminal(pipeline.format(big=big) + f" | {{ {WAIT_FOR.format(go=go)}; "
                          "head -c 1M > /dev/null; }; echo \"statuses ${PIPESTATUS[*]}\" >&2"))
    term.read_until("\rread-disk ")
    go.touch()
    term.wait()
    text = term.output.decode(errors="replace")
    assert re.search(r"read-disk \S+ \S+/4\.0 GiB", text), text   # the progress line was drawn
    rows = [row for row in Screen(term.output).rows if "statuses" in row]
    assert rows and re.fullmatch(r"statuses (141 )+0", rows[0]), rows
    assert "error" not in text and "Broken pipe" not in text, text


def test_programs_started_by_a_command_get_the_default_sigpipe_action(tmp_path):
    """xorriso, sh for --exec: `cmd | head` must end them as it ends any program."""
    status = tmp_path / "status"
    sh(f"head -c 1M /dev/zero | split-span -q --size 1M --exec 'cat /proc/$$/status > {status}' "
       f"{tmp_path}/set", check=True)
    fields = dict(line.split(":\t") for line in status.read_text().splitlines())
    assert not int(fields["SigIgn"], 16) & (1 << (13 - 1)), fields["SigIgn"]   # 13 is SIGPIPE


# ---------------------------------------------------------------------------------------------
# Over SSH

def test_remote_messages_start_a_line_of_their_own(tmp_path, terminal, ssh):
    """`read-disk -P | compress -P | ssh host split-span -P ...`: the remote command cannot see the
    local progress line, yet its error starts at column 0 on an erased line, not after the
    progress text."""
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        # More than the pipes and ssh's window hold while the first volume's --exec waits, so
        # the local commands are still drawing when the test looks for their line.
        f.write(os.urandom(32 << 20))
    remote_dir = tmp_path / "remote"
    # The first volume's --exec fails once the test has seen the local progress line drawn.
    go = tmp_path / "go"
    split = remote(ssh, f"{BIN}/split-span -P --size 1M --chunk-size 256K "
                        f"--exec \"{WAIT_FOR.format(go=go)}; exit 3\" {remote_dir}")
    term = widen(terminal(f"read-disk -P {big} | compress -P -T1 -19 | {split}"))
    deadline = time.monotonic() + 60
    while not re.search(rb"\r(read-disk|compress) [0-9][^\r\n]*\x1b\[K$", term.output):
        assert time.monotonic() < deadline and read_for(term, 0.05), term.output
    go.touch()
    term.wait(timeout=120)
    rows = Screen(term.output).rows
    remote_rows = [row for row in rows if "split-span" in row]
    assert [row for row in remote_rows if row.startswith("split-span: error: ")], rows
    for row in remote_rows:
        assert row.startswith("split-span"), rows

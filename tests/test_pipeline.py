"""stream/pipeline.py's pieces, in-process or in one small process: a pipe's identity, the
first cause carried by IncompleteInput, the cut connection seen on stdout, and the sweeping of
stale hand-off records. Whole pipelines killed at random moments are test_pipeline_integrity.py."""

import os
import subprocess
import sys
import time

from conftest import sh
from mirrorpipe.errors import Error
from mirrorpipe.stream import pipeline


def test_a_pipe_is_known_by_both_its_ends_and_nothing_else_is_a_pipe(tmp_path):
    read_end, write_end = os.pipe()
    try:
        identity = pipeline.pipe_identity(read_end)
        assert identity and identity == pipeline.pipe_identity(write_end)
        assert identity == pipeline.pipe_identity(f"/proc/self/fd/{write_end}")
        other_read, other_write = os.pipe()
        assert pipeline.pipe_identity(other_read) != identity
        os.close(other_read)
        os.close(other_write)
    finally:
        os.close(read_end)
        os.close(write_end)
    (tmp_path / "file").write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert pipeline.pipe_identity(str(tmp_path / "file")) is None
    assert pipeline.pipe_identity(str(fifo)) is not None
    assert pipeline.pipe_identity(str(tmp_path / "absent")) is None


def test_incomplete_input_keeps_the_first_cause_and_adds_what_this_command_left():
    first = pipeline.IncompleteInput("read-disk (pid 12) ended before the end of its stream")
    assert isinstance(first, Error)
    assert str(first) == "its input is incomplete: read-disk (pid 12) ended before the end of its stream"
    later = first.with_consequence("no volume was finished")
    assert later.origin == first.origin
    assert str(later) == ("its input is incomplete: read-disk (pid 12) ended before the end of its "
                          "stream; no volume was finished")


def test_records_a_mirrorpipe_reader_did_not_take_are_swept(tmp_path):
    """`read-disk | dd` leaves read-disk's record behind; once its pipe is closed and a minute
    has passed, the next command removes it."""
    records = pipeline.RECORDS_DIR
    sh("read-disk -q /dev/zero --length 1M | cat > /dev/null", check=True)
    os.makedirs(records, exist_ok=True)
    stale = os.path.join(records, "1-99999999.99999999")
    open(stale, "w").write('{"command": "read-disk", "pid": 99999999, "state": "done"}')
    live_reader = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE)
    live = os.path.join(records, f"{pipeline.pipe_identity(live_reader.stdin.fileno())}.99999998")
    open(live, "w").write('{"command": "read-disk", "pid": 99999998, "state": "done"}')
    old = time.time() - 2 * pipeline.SWEEP_AGE
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    marker = os.path.join(records, pipeline.SWEPT_MARKER)
    try:
        os.utime(marker, (old, old))   # the last sweep was long ago: this command's turn
    except FileNotFoundError:
        pass
    try:
        sh("read-disk -q /dev/zero --length 1M | cat > /dev/null", check=True)
        assert not os.path.exists(stale)
        assert os.path.exists(live), "the record of a pipe still open was removed"
    finally:
        live_reader.kill()
        live_reader.wait()
        os.unlink(live)


def test_end_of_input_with_the_readers_of_stdout_gone_is_a_cut_not_an_end():
    """What sshd does when the connection dies: the readers of the command's stdout go away."""
    probe = [sys.executable, "-c", "from mirrorpipe.stream import pipeline; "
             "print(pipeline.cut_connection('split-span'), file=__import__('sys').stderr)"]
    for reader_alive in (True, False):
        read_end, write_end = os.pipe()
        if not reader_alive:
            os.close(read_end)
        result = subprocess.run(probe, stdout=write_end, stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        if reader_alive:
            os.close(read_end)
            assert result.stderr == "None\n"
        else:
            assert "fed split-span closed before the end of the stream" in result.stderr


def test_commands_take_turns_to_sweep(tmp_path):
    """A sweep scans /proc: within a minute of the last one, a command starts without it."""
    records = pipeline.RECORDS_DIR
    sh("read-disk -q /dev/zero --length 1M | cat > /dev/null", check=True)
    stale = os.path.join(records, "1-99999997.99999997")
    open(stale, "w").write('{"command": "read-disk", "pid": 99999997, "state": "done"}')
    old = time.time() - 2 * pipeline.SWEEP_AGE
    os.utime(stale, (old, old))
    os.utime(os.path.join(records, pipeline.SWEPT_MARKER))   # swept just now
    try:
        sh("read-disk -q /dev/zero --length 1M | cat > /dev/null", check=True)
        assert os.path.exists(stale), "swept again within a minute"
    finally:
        os.unlink(stale)

"""A stream cut short is never a complete backup: members of real pipelines are SIGKILLed at
random moments, locally and behind ssh, and nothing they leave is accepted as complete
(mirrorpipe.stream.pipeline, frames.check_stream_end, compress's incomplete marker). The
pipeline module's own pieces are tested in test_pipeline.py."""

import os
import random
import signal
import subprocess
import time

import pytest

from conftest import BIN, MIB, assert_one_line_error, need_tools, processes, random_data, remote, sh

# Random data: compress cannot shrink it, so the pipeline takes long enough to be cut anywhere.
SOURCE_SIZE = 192 * MIB


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "disk.img"
    path.write_bytes(random_data(SOURCE_SIZE, seed=7))
    return path


def run_and_kill(script, victim, after):
    """Run script (bash, no pipefail) in a session of its own; SIGKILL the member running
    `victim` `after` seconds in. Return (the CompletedProcess-like result, whether it was killed
    before the pipeline ended)."""
    process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + after
    killed = False
    while time.monotonic() < deadline + 5 and process.poll() is None and not killed:
        time.sleep(0.005)
        if time.monotonic() >= deadline:
            for pid in processes(lambda pid, words: os.getsid(pid) == process.pid
                                 and any(os.path.basename(w.decode()) == victim for w in words[:2])):
                os.kill(pid, signal.SIGKILL)
                killed = True
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(script, process.returncode, stdout, stderr)
    # Messages from behind ssh start by erasing the line they land on (a local progress line).
    result.stderr_text = stderr.decode("utf-8", "replace").replace("\r\x1b[K", "")
    return result, killed


def kill_moments(seed, count=3):
    """Moments from the very start (before the victim's Python is up) to late in the stream."""
    rng = random.Random(seed)
    return [0.01] + sorted(rng.uniform(0.1, 0.6) for _ in range(count - 1))


def names_cause(error, victim):
    """The error names the member that ended early, or says that no data arrived: a member killed
    before its Python joined the pipeline (up to half a second on a loaded machine) wrote no byte
    and left nothing to be named by."""
    return victim in error or "no data arrived" in error


def assert_no_acceptable_set(directory):
    """Neither reassemble nor --verify takes what is in directory for a complete set."""
    if not directory.exists() or not os.listdir(directory):
        return
    restore = subprocess.run([BIN / "reassemble", directory], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    assert restore.returncode != 0, "reassemble accepted the set of a killed pipeline"
    verify = subprocess.run([BIN / "reassemble", "--verify", directory], capture_output=True,
                            start_new_session=True)
    assert verify.returncode != 0 and b"all verified" not in verify.stdout


def finished_whole(result, restore, source):
    """A kill that lands after the victim wrote its whole stream (its exit is not yet seen) cuts
    nothing: then the pipeline succeeded and `restore` (a shell command printing the stream it
    restores) gives the source back exactly. True in that case; False when the pipeline failed,
    which the caller then judges."""
    if result.returncode != 0:
        return False
    restored = sh(f"{restore} | cmp - {source}")
    assert restored.returncode == 0, f"a killed pipeline succeeded with a wrong result: {restored.stderr_text}"
    return True


def seed_of(victim):
    return sum(map(ord, victim))   # str hashes change from run to run


@pytest.mark.parametrize("victim", ["read-disk", "checksum", "compress"])
def test_killing_any_member_of_the_backup_pipeline_leaves_no_set(tmp_path, source, victim):
    for number, moment in enumerate(kill_moments(seed_of(victim))):
        out = tmp_path / f"set{number}"
        script = (f"read-disk -q {source} | checksum -q -o {tmp_path}/sum{number} | compress -q "
                  f"| split-span -q --size 32M --chunk-size 1M {out}")
        result, killed = run_and_kill(script, victim, moment)
        if not killed or finished_whole(result, f"reassemble -q {out} | compress -d -q", source):
            continue  # the pipeline was faster than the moment: nothing was cut
        error = assert_one_line_error(result, "split-span", "input is incomplete")
        assert names_cause(error, victim), error
        assert_no_acceptable_set(out)
        if victim == "read-disk":
            assert not (tmp_path / f"sum{number}").exists(), "checksum wrote a digest of a cut stream"


def test_a_killed_read_disk_leaves_a_file_no_decoder_accepts(tmp_path, source):
    need_tools("zstd")
    for number, moment in enumerate(kill_moments(11)):
        packed = tmp_path / f"disk{number}.zst"
        result, killed = run_and_kill(f"read-disk -q {source} | compress -q > {packed}", "read-disk", moment)
        if not killed or finished_whole(result, f"compress -d -q < {packed}", source):
            continue
        assert names_cause(assert_one_line_error(result, "compress", "incomplete"), "read-disk")
        ours = sh(f"compress -d < {packed} > /dev/null")
        assert names_cause(assert_one_line_error(ours, "compress", "incomplete"), "read-disk")
        # The marker that ends it is no zstd frame: stock zstd fails too, after the data it had.
        assert sh(f"zstd -d -q < {packed} > /dev/null").returncode != 0


def test_a_killed_compress_leaves_a_file_compress_d_refuses(tmp_path, source):
    for number, moment in enumerate(kill_moments(12)):
        packed = tmp_path / f"disk{number}.zst"
        _, killed = run_and_kill(f"read-disk -q {source} | compress -q > {packed}", "compress", moment)
        if not killed:
            continue
        decoded = sh(f"compress -d -q < {packed} | cmp - {source}")
        if decoded.returncode != 0:   # not the whole source (killed before its last byte): refused
            assert_one_line_error(decoded, "compress")


def test_a_raw_stream_cut_short_leaves_no_set(tmp_path, source):
    for number, moment in enumerate(kill_moments(13)):
        out = tmp_path / f"set{number}"
        result, killed = run_and_kill(f"read-disk -q {source} | split-span -q --size 32M {out}",
                                      "read-disk", moment)
        if not killed or finished_whole(result, f"reassemble -q {out}", source):
            continue
        error = assert_one_line_error(result, "split-span", "incomplete")
        assert names_cause(error, "read-disk"), error
        assert_no_acceptable_set(out)


def test_a_member_that_is_not_mirrorpipe_in_between_is_seen_through(tmp_path, source):
    out = tmp_path / "set"
    result, killed = run_and_kill(f"read-disk -q {source} | cat | dd status=none bs=64K | compress -q "
                                  f"| split-span -q --size 32M {out}", "read-disk", 0.6)
    assert killed
    error = assert_one_line_error(result, "split-span", "read-disk")
    assert "through" in error and "cat" in error, error
    assert_no_acceptable_set(out)


def test_an_error_upstream_is_named_downstream(tmp_path):
    """A failure, not only a kill: the first cause reaches the end of the pipeline."""
    out = tmp_path / "set"
    result = sh(f"read-disk -q {tmp_path}/no-such.img | compress -q | split-span -q --size 1M {out}")
    error = assert_one_line_error(result, "split-span", "read-disk", "failed", "no-such.img")
    assert "compress" not in error.split("incomplete:")[1].split(";")[0], error
    assert_no_acceptable_set(out)


def test_a_usage_error_upstream_fails_the_stream(tmp_path):
    result = sh(f"read-disk --no-such-option x | compress -q > {tmp_path}/x.zst")
    assert_one_line_error(result, "compress", "read-disk", "usage error")


def test_a_checksum_mismatch_fails_the_commands_after_it(tmp_path, source):
    """checksum -c passes the data on before it knows; its failure still reaches the end."""
    sh(f"read-disk -q {source} --length 4M | compress -q > {tmp_path}/x.zst", check=True)
    (tmp_path / "wrong.xxh128").write_text("0" * 32 + "  stdin\n")
    result = sh(f"compress -d < {tmp_path}/x.zst | checksum -q -c {tmp_path}/wrong.xxh128 "
                f"| compress -q > {tmp_path}/y.zst")
    assert "checksum mismatch" in result.stderr_text
    assert sh(f"compress -d < {tmp_path}/y.zst > /dev/null").returncode != 0


def test_complete_pipelines_still_pass(tmp_path, source):
    sh(f"read-disk -q {source} --length 8M | checksum -q -o {tmp_path}/sum | cat | compress -q "
       f"| split-span -q --size 4M {tmp_path}/set", check=True)
    restored = sh(f"reassemble -q {tmp_path}/set | compress -d -q | cmp - {source} --bytes={8 * MIB}")
    assert restored.returncode == 0, restored.stderr_text


@pytest.mark.parametrize("victim", ["read-disk", "checksum", "compress"])
def test_killing_a_member_before_ssh_leaves_no_remote_set(tmp_path, source, ssh, victim):
    for number, moment in enumerate(kill_moments(seed_of(victim) + 1, count=2)):
        out = tmp_path / f"remote{number}"
        script = (f"read-disk -q {source} | checksum -q | compress -q | "
                  + remote(ssh, f"{BIN}/split-span -q --size 32M {out}"))
        result, killed = run_and_kill(script, victim, moment)
        if not killed or finished_whole(result, f"reassemble -q {out} | compress -d -q", source):
            continue
        error = assert_one_line_error(result, "split-span")
        # Behind ssh only the stream itself can tell: compress's marker names the first cause,
        # a missing seek table names compress.
        assert names_cause(error, victim) or ("compress" in error and "seek table" in error), error
        assert_no_acceptable_set(out)


def test_a_restore_whose_set_is_not_there_names_reassemble_and_changes_nothing(tmp_path):
    victim = tmp_path / "victim.img"
    old = os.urandom(1 << 20)
    victim.write_bytes(old)
    (tmp_path / "empty").mkdir()
    result = sh(f"reassemble {tmp_path}/empty | compress -d | write-disk {victim}")
    error = assert_one_line_error(result, "write-disk", "reassemble", "no finished volume")
    assert "unchanged" in error, error
    assert victim.read_bytes() == old

"""split-span as a command: options, the set it writes, the whole pipeline on loop devices with a
real ext4 file system, stock-tools restore, --exec, and SIGKILL at random moments."""

import os
import random
import re
import signal
import subprocess
import time

import pytest

from conftest import BIN, MIB, assert_one_line_error, command, need_tools, processes, sh, split
from filesystems import ext4_free_extents


# ---------------------------------------------------------------------------------------------
# Options

@pytest.mark.parametrize("args, message", [
    (["out"], "one of the arguments"),
    (["--dvd", "--size", "1M", "out"], "not allowed with argument"),
    (["--cd650", "--bd25", "out"], "not allowed with argument"),
    (["--size", "12Q", "out"], "invalid size"),
    (["--size", "1K", "out"], "volume size 1024 is outside"),
    (["--size", "1M", "--name", "a/b", "out"], "invalid set name"),
    (["--size", "1M", "--chunk-size", "1K", "out"], "chunk size 1024 is outside"),
])
def test_usage_errors(tmp_path, args, message):
    result = command("split-span", *args, input=b"", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "split-span", message)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_presets_give_the_documented_volume_sizes(tmp_path):
    # Only the manifest is looked at: a tiny stream in a --bd128 set is one short last volume; the
    # size is the one disc-fit rule's (media.volume_size_for), tabled in split-span.1.
    split(b"tiny", tmp_path / "out", "--bd128", "--name", "pc1")
    text = (tmp_path / "out" / "pc1.001.manifest").read_text()
    assert '"media": "bd128"' in text and '"volume_size": 123703957504' in text


def test_cat_of_the_volumes_is_the_stream(tmp_path):
    data = os.urandom(10 * MIB + 5)
    result = split(data, tmp_path / "out", "-P", "--size", "3M", "--chunk-size", "1M")
    assert sorted(os.listdir(tmp_path / "out")) == [f"image.00{i}{suffix}" for i in range(1, 5)
                                                     for suffix in ("", ".manifest")]
    cat = subprocess.run("cat out/image.???", shell=True, cwd=tmp_path, capture_output=True, check=True)
    assert cat.stdout == data
    assert re.search(r"10\.0 MiB in 4 volumes of set 'image' \(set id [0-9a-f]{32}\)", result.stderr.decode())


def test_an_existing_set_is_refused(tmp_path):
    split(b"one", tmp_path / "out", "--size", "1M")
    result = command("split-span", "--size", "1M", tmp_path / "out", input=b"two")
    assert result.returncode == 1
    assert_one_line_error(result, "split-span", "already holds a volume set named 'image' (image.001)")
    assert (tmp_path / "out" / "image.001").read_bytes() == b"one"


def test_exec_runs_after_each_volume_and_a_failure_stops_the_run(tmp_path):
    log = tmp_path / "log"
    split(os.urandom(5 * MIB), tmp_path / "out", "--size", "2M",
          "--exec", f'echo "$MIRRORPIPE_VOLUME_INDEX $MIRRORPIPE_LAST $(stat -c %s {{}})" >> {log}')
    assert log.read_text().splitlines() == [f"1 0 {2 * MIB}", f"2 0 {2 * MIB}", f"3 1 {MIB}"]

    result = command("split-span", "--size", "2M", "--exec", 'test "$MIRRORPIPE_VOLUME_INDEX" -lt 2',
                     tmp_path / "out2", input=os.urandom(5 * MIB))
    assert result.returncode == 1
    assert re.search(r"--exec command failed with status 1 for .*out2/image\.002; stopping",
                     result.stderr.decode())
    assert not os.path.exists(tmp_path / "out2" / "image.003")


def test_moving_volumes_away_with_exec_stages_one_volume_at_a_time(tmp_path):
    spool, burned = tmp_path / "spool", tmp_path / "burned"
    burned.mkdir()
    # What a burn-and-delete hook sees: at most the volume it is given in the spool.
    split(os.urandom(7 * MIB), spool, "--size", "2M",
          "--exec", f'test "$(ls {spool} | grep -vc manifest)" = 1 && mv {{}} {{}}.manifest {burned}/')
    assert os.listdir(spool) == []
    cat = subprocess.run("cat image.???", shell=True, cwd=burned, capture_output=True, check=True)
    assert len(cat.stdout) == 7 * MIB


# ---------------------------------------------------------------------------------------------
# The whole pipeline, on real devices

def test_disk_to_volumes_and_back_on_loop_devices(tmp_path, ext4_image, loop_device):
    need_tools("zstd", "e2fsck")
    target_file = tmp_path / "target.img"
    with open(target_file, "wb") as f:
        f.truncate(os.path.getsize(ext4_image))
    source, target = loop_device(ext4_image), loop_device(target_file)
    sh(f"read-disk -q {source} | compress -q | split-span -q --size 2M --chunk-size 256K {tmp_path}/out",
       check=True)
    assert len(os.listdir(tmp_path / "out")) >= 4, "the compressed image should span volumes"

    # Stock tools only.
    sh(f"cat {tmp_path}/out/image.??? | zstd -d -q | cmp - {ext4_image}", check=True)

    sh(f"reassemble -q {tmp_path}/out | compress -d -q | write-disk -q {target}", check=True)
    assert subprocess.run(["cmp", source, target]).returncode == 0
    fsck = subprocess.run(["e2fsck", "-fn", target], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


# ---------------------------------------------------------------------------------------------
# Killed at any moment

@pytest.mark.parametrize("parity", [[], ["--parity", "2", "--group", "2"]], ids=["plain", "parity"])
def test_sigkill_at_random_moments_never_leaves_an_acceptable_set(tmp_path, parity):
    """SIGKILL split-span while it writes, at random points (mid-volume, around the renames of a
    finishing volume); reassemble must refuse what is left, and name any .part leftover. With
    parity, its worker processes end with it."""
    rng = random.Random(20261125)
    data = os.urandom(6 * MIB)
    seen_part = False
    for attempt in range(8):
        outdir = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([BIN / "split-span", "-q", "--size", "1M", "--chunk-size", "64K", *parity, outdir],
                                stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        # Feed a random share of the stream (a volume boundary or not), then kill after a random
        # moment, with the stream still open so split-span never sees its end.
        fed = rng.choice([rng.randrange(1, len(data)), rng.randrange(1, 6) * MIB])
        proc.stdin.write(data[:fed])
        proc.stdin.flush()
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        left = sorted(os.listdir(outdir)) if outdir.exists() else []
        seen_part |= any(name.endswith(".part") for name in left)
        result = command("reassemble", outdir, stdout=subprocess.DEVNULL)
        message = result.stderr.decode()
        assert result.returncode == 1, f"accepted after a kill: {left}"
        assert "no last volume" in message or "no finished volume found" in message, message
        for name in left:
            if name.endswith(".part"):
                assert name in message, message
        # split-span's forked workers share its command line, which names outdir.
        def naming_outdir(pid, words):
            return str(outdir).encode() in b"\0".join(words)
        deadline = time.monotonic() + 5
        while processes(naming_outdir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes(naming_outdir), "a process of the killed split-span lives on"
    assert seen_part, "no kill landed while a volume was being written; the test proves little"


# ---------------------------------------------------------------------------------------------
# Running a failed backup again

def command_to_clear(message):
    """The command a failure message gives for clearing the way to run the backup again: from
    'rm ' up to the parenthesised remark after it, as a user would copy it."""
    match = re.search(r"(rm -f -- .*?)(?: \(|$)", message)
    assert match, f"no command to clear the way in: {message}"
    return match.group(1)


def run_again_after(tmp_path, first_run, outdir, data, *options):
    """FIRST_RUN failed leaving finished volumes in OUTDIR: its message must give a command that
    clears the way, after which the same backup runs and gives the data back."""
    assert first_run.returncode == 1
    message = first_run.stderr.decode()
    assert os.listdir(outdir), "the failed run left nothing: the test proves little"
    refused = command("split-span", *options, outdir, input=b"again")
    assert refused.returncode == 1 and "already holds a volume set" in refused.stderr.decode()
    sh(command_to_clear(message), check=True)
    split(data, outdir, *options)
    restored = command("reassemble", outdir, check_status=0)
    assert restored.stdout == data


@pytest.mark.parametrize("volumes", [2, 12], ids=["few-files", "many-files"])
def test_after_an_exec_failure_the_message_gives_a_command_that_clears_the_way(tmp_path, volumes):
    data = os.urandom((volumes + 1) * 100 * 1024 + 5)
    outdir = tmp_path / "out"
    failed = command("split-span", "--size", "100K", "--exec", f'test "$MIRRORPIPE_VOLUME_INDEX" -lt {volumes}',
                     outdir, input=data)
    run_again_after(tmp_path, failed, outdir, data, "--size", "100K")


def test_after_running_out_of_space_the_message_gives_a_command_that_clears_the_way(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a small tmpfs)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", small], check=True)
    try:
        data = os.urandom(5 * MIB)
        failed = command("split-span", "--size", "1M", small / "out", input=data)
        assert "no space left" in failed.stderr.decode()
        subprocess.run(["mount", "-o", "remount,size=16M", small], check=True)
        run_again_after(tmp_path, failed, small / "out", data, "--size", "1M")
    finally:
        subprocess.run(["umount", small], check=True)


def test_after_its_input_was_cut_the_message_gives_a_command_that_clears_the_way(tmp_path):
    """read-disk killed after split-span finished volumes: the message names read-disk and gives
    the command that clears the way."""
    data = os.urandom(3 * MIB)
    outdir = tmp_path / "out"
    feeder = subprocess.Popen([BIN / "read-disk", "-q", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True)
    splitter = subprocess.Popen([BIN / "split-span", "-q", "--size", "1M", outdir], stdin=feeder.stdout,
                                stderr=subprocess.PIPE, start_new_session=True)
    feeder.stdout.close()
    feeder.stdin.write(data[:2 * MIB + 1000])
    feeder.stdin.flush()
    deadline = time.monotonic() + 30
    while not (outdir / "image.001.manifest").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    feeder.kill()
    feeder.wait()
    feeder.stdin.close()
    first_run = subprocess.CompletedProcess(splitter.args, splitter.wait(timeout=30), b"",
                                            splitter.stderr.read())
    assert "read-disk" in first_run.stderr.decode()
    run_again_after(tmp_path, first_run, outdir, data, "--size", "1M")


def test_after_split_span_was_killed_the_refusal_gives_a_command_that_clears_the_way(tmp_path):
    """split-span itself killed can say nothing; the next run, refused because the directory
    holds the unfinished set, must say so and give the command that clears it."""
    data = os.urandom(3 * MIB)
    outdir = tmp_path / "out"
    proc = subprocess.Popen([BIN / "split-span", "-q", "--size", "1M", outdir], stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    proc.stdin.write(data[:2 * MIB + 1000])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not (outdir / "image.001.manifest").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    proc.stdin.close()
    refused = command("split-span", "--size", "1M", outdir, input=data)
    assert refused.returncode == 1
    message = refused.stderr.decode()
    assert "incomplete" in message, message
    sh(command_to_clear(message), check=True)
    split(data, outdir, "--size", "1M")
    assert command("reassemble", outdir, check_status=0).stdout == data


# ---------------------------------------------------------------------------------------------
# The quick-start demo

def test_the_demo_runs_the_main_job_and_proves_each_restore(tmp_path):
    """tools/demo (README's quick start): a used-blocks backup into volumes, the mirrorpipe
    restore and the stock-tools restore from the volumes, each proved to hold every used block
    with zeros in free space, then an every-byte backup proved byte-identical."""
    need_tools("zstd", "mkfs.ext4", "debugfs", "e2fsck", "cmp", "dumpe2fs")
    work = tmp_path / "work"
    result = subprocess.run([BIN.parent / "tools" / "demo", "--size", "96M", work], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = [line[2:] for line in result.stderr.splitlines() if line.startswith("$ ")]
    bin_dir = f"{BIN}/"
    pipelines = [line.replace(bin_dir, "") for line in shown if "|" in line]
    patterns = [r"read-disk --used-only \S+ \| compress \| split-span --size 16M out/",
                r"reassemble out/ \| compress -d \| write-disk --discard \S+",
                r"cat out/image\.\?\?\? \| zstd -d \| dd of=\S+ bs=4M status=none",
                r"read-disk \S+ \| compress > every-byte\.img\.zst",
                r"compress -d < every-byte\.img\.zst \| write-disk --force \S+"]
    assert len(pipelines) == len(patterns), pipelines
    assert all(re.fullmatch(pattern, line) for pattern, line in zip(patterns, pipelines)), pipelines
    assert sum(line.startswith("(compare every used block") for line in shown) == 2
    assert sum(line.startswith("cmp ") for line in shown) == 1
    volumes = sorted(name for name in os.listdir(work / "out") if not name.endswith(".manifest"))
    assert len(volumes) >= 2, volumes
    assert "result         OK: both restores hold every used block and zeros elsewhere" in result.stdout
    # restored.img holds the used-blocks restore: every used block the sample's, free blocks
    # zeros; stock-restored.img was last written by the every-byte restore: identical.
    sample, restored = (work / "sample.img").read_bytes(), bytearray((work / "restored.img").read_bytes())
    expected = bytearray(sample)
    for offset, length in ext4_free_extents(work / "sample.img"):
        assert restored[offset:offset + length] == bytes(length)
        expected[offset:offset + length] = bytes(length)
    assert restored == expected
    assert subprocess.run(["cmp", work / "stock-restored.img", work / "sample.img"]).returncode == 0


# ---------------------------------------------------------------------------------------------
# The end of a compressed stream

def test_a_compressed_stream_just_past_a_mib_boundary_is_complete(tmp_path):
    """The seek table that ends the stream may straddle split-span's last two reads."""
    probe = command("compress", input=os.urandom(1 << 20)).stdout
    overhead = len(probe) - (1 << 20)
    for past in (1, 9, 16):
        data = os.urandom((1 << 20) + past - overhead)
        packed = command("compress", input=data).stdout
        assert len(packed) % (1 << 20) == past
        outdir = tmp_path / f"set{past}"
        split(packed, outdir, "--size", "1M")
        assert command("reassemble", outdir, check_status=0).stdout == packed


def test_a_seek_table_listing_no_frame_is_refused_in_one_line(tmp_path):
    header = command("compress", input=b"").stdout[:28]
    empty_table = (0x184D2A5E).to_bytes(4, "little") + (9).to_bytes(4, "little") + \
        (0).to_bytes(4, "little") + bytes([0x80]) + (0x8F92EAB1).to_bytes(4, "little")
    result = command("split-span", "--size", "1M", tmp_path / "out", input=header + empty_table)
    assert_one_line_error(result, "split-span", "without the seek table")

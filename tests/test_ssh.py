"""Volume sets over SSH, with a real sshd on 127.0.0.1 (its own host key, authorized key and port):
the round trip of a real ext4 image, and a connection cut mid-stream leaving a set reassemble
refuses."""

import os
import signal
import subprocess
import time

from conftest import BIN, MIB, REMOTE_PATH, need_tools, remote, sh


def finished_manifests(directory):
    return [n for n in os.listdir(directory) if n.endswith(".manifest")] if directory.exists() else []


def test_round_trip_over_ssh(tmp_path, ssh, ext4_image):
    need_tools("e2fsck")
    remote_dir = tmp_path / "remote"
    sh(f"read-disk -q {ext4_image} | compress -q | "
       + remote(ssh, f"{BIN}/split-span -q --size 2M --chunk-size 256K {remote_dir}"), check=True)
    assert len(finished_manifests(remote_dir)) >= 2
    target = tmp_path / "restored.img"
    sh(remote(ssh, f"{BIN}/reassemble -q {remote_dir}") + f" | compress -d -q | write-disk -q {target}",
       check=True)
    assert subprocess.run(["cmp", ext4_image, target]).returncode == 0
    fsck = subprocess.run(["e2fsck", "-fn", target], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_connection_cut_mid_stream_leaves_a_set_reassemble_refuses(tmp_path, ssh):
    remote_dir = tmp_path / "remote"
    errors = tmp_path / "split-span.err"
    # split-span's stderr goes to a file so that its message survives the cut; its stdout still
    # leads to sshd, whose going away tells a cut from the end of the stream.
    client = subprocess.Popen(
        ssh + [f"{REMOTE_PATH} {BIN}/split-span -q --size 2M --chunk-size 256K {remote_dir} 2> {errors}"],
        stdin=subprocess.PIPE, start_new_session=True)
    client.stdin.write(os.urandom(5 * MIB))
    client.stdin.flush()
    deadline = time.monotonic() + 20
    while len(finished_manifests(remote_dir)) < 2:
        assert time.monotonic() < deadline, "split-span did not finish two volumes"
        time.sleep(0.05)
    client.send_signal(signal.SIGKILL)     # the connection drops with the stream half sent
    client.wait()
    client.stdin.close()
    while not errors.exists() or not errors.read_text():
        assert time.monotonic() < deadline, "split-span did not notice the cut"
        time.sleep(0.05)
    assert "closed before the end of the stream" in errors.read_text()
    result = subprocess.run([BIN / "reassemble", remote_dir], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert result.returncode == 1
    assert "no last volume of set 'image' (found 1-2)" in result.stderr.decode()
    assert not [n for n in os.listdir(remote_dir) if n.endswith(".part")]

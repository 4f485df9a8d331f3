"""Volume sets over SSH, with a real sshd on 127.0.0.1 (its own host key, authorized key and port):
the round trip of a real ext4 image, and a connection cut mid-stream leaving a set reassemble
refuses."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import BIN, need_root, need_tools, sh

MIB = 1 << 20
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# The remote side runs the checkout's commands with this interpreter's packages.
REMOTE_PATH = f"PATH={os.path.dirname(sys.executable)}:$PATH"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    """The ssh command line (a list) that logs into a private sshd as root."""
    need_root()
    if not os.path.exists(SSHD):
        pytest.skip("needs sshd (Debian package openssh-server)")
    need_tools("ssh", "ssh-keygen")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", home / key], check=True)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_key\n"
        f"AuthorizedKeysFile {home}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {home}/sshd.pid\n")
    os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", home / "sshd_config"], stderr=open(home / "log", "wb"))
    client = ["ssh", "-i", str(home / "client_key"), "-p", str(port), "-o", "BatchMode=yes",
              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    try:
        for _ in range(100):
            if subprocess.run(client + ["true"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip(f"sshd did not accept a login: {(home / 'log').read_text()[-500:]}")
        yield client
    finally:
        server.terminate()
        server.wait()


def remote(ssh, command):
    """The ssh invocation running command on the far side, as one shell word list."""
    return " ".join(f"'{word}'" for word in ssh) + f" '{REMOTE_PATH} {command}'"


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

"""The README's disc-by-disc restore, as a user runs it at a terminal onto a disk that holds a
file system: `reassemble /media/cdrom | compress -d | write-disk /dev/sdb`, answering write-disk's
confirmation and inserting the discs one after the other."""

import subprocess

from conftest import (DISC_QUESTION, WRITE_DISK_QUESTION, answer_as_a_user, insert, make_discs,
                      make_ext4_image, need_root, need_tools, widen)


def test_disc_by_disc_restore_onto_a_disk_with_a_file_system(tmp_path, terminal, loop_device):
    need_root()
    need_tools("mkfs.ext4", "e2fsck", "cmp")
    source = make_ext4_image(tmp_path / "disk.img", size="24M")
    discs, drive = make_discs(tmp_path, source, volume_size="1M")
    assert len(discs) >= 3, discs
    # The disk to restore onto, as big as the source, with a file system of its own.
    old = tmp_path / "sdb.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(old), "24M"], check=True)
    device = loop_device(old)
    insert(drive, discs[0])
    term = widen(terminal(f"reassemble {drive} | compress -d | write-disk {device}"))
    asked = answer_as_a_user(term, drive, discs, hold=1)
    text = term.output.decode(errors="replace")
    assert term.wait() == 0, text
    assert [q for q in asked if WRITE_DISK_QUESTION.fullmatch(q)], asked
    assert [int(DISC_QUESTION.fullmatch(q).group(1)) for q in asked if DISC_QUESTION.fullmatch(q)] \
        == list(range(2, len(discs) + 1)), asked
    assert f"written to {device}, flushed to stable storage" in text, text
    assert subprocess.run(["cmp", str(source), device]).returncode == 0
    fsck = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

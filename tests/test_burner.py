"""disc/burner.py in-process: burning a set disc by disc onto xorriso's stdio pseudo-drives, asking
for discs through the prompter it is handed (burn-iso's own tests, through a terminal, are
test_burn_iso.py)."""

import os

import pytest

from conftest import MIB, need_tools, write_set
from mirrorpipe.disc import burner, iso
from mirrorpipe.errors import Error
from mirrorpipe.progress import NoProgress


@pytest.fixture
def volume_set(tmp_path):
    """A set 'pc1' of three volumes written in-process: its directory."""
    need_tools("xorriso")
    write_set(tmp_path / "set", os.urandom(2_500_000), MIB, name="pc1")
    assert sorted(os.listdir(tmp_path / "set"))[-2:] == ["pc1.003", "pc1.003.manifest"]
    return tmp_path / "set"


class ScriptedUser:
    """A prompter (terminal.Prompter's interface) whose user puts in the next disc of `discs`
    (by pointing the drive link at it) and presses Enter; the questions are kept."""

    def __init__(self, drive, discs):
        self.drive, self.discs, self.questions = drive, list(discs), []

    def ask(self, question):
        self.questions.append(question)
        self.drive.unlink(missing_ok=True)
        self.drive.symlink_to(self.discs.pop(0))
        return ""


class Quiet:
    """What burner.Burner tells the user through, showing nothing."""

    show_progress = False

    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)

    def progress(self, total=None):
        return NoProgress()


def test_the_burner_asks_through_the_prompter_it_is_handed(volume_set, tmp_path):
    """The engine's burn workflow, in process: a disc too small is named in the next question,
    each disc is read back and checked, and every question goes to the prompter."""
    set_dir = volume_set
    drive = tmp_path / "drive"
    small = tmp_path / "small.img"
    small.write_bytes(os.urandom(1 << 20))      # written, so not blank
    user = ScriptedUser(drive, [tmp_path / "disc1.img", tmp_path / "disc2.img"])
    drive.symlink_to(small)
    messages = Quiet()
    burner.Burner(f"stdio:{drive}", False, messages, user).burn_all(
        [f"{set_dir}/pc1.001", f"{set_dir}/pc1.002.manifest"])
    assert len(user.questions) == 2
    assert user.questions[0].startswith(f"disc 1 of set 'pc1' (pc1.001): the disc in stdio:{drive} "
                                        "is not blank")
    assert user.questions[1] == (f"Insert a blank disc for disc 2 of set 'pc1' (pc1.002) into "
                                 f"stdio:{drive} and press Enter (q to stop): ")
    assert [note.split(":")[0] for note in messages.notes] == ["disc 1 of set 'pc1' (pc1.001)",
                                                              "disc 2 of set 'pc1' (pc1.002)"]
    for index in (1, 2):
        with iso.Disc(str(tmp_path / f"disc{index}.img")) as disc:
            assert disc.manifest_bytes == (set_dir / f"pc1.00{index}.manifest").read_bytes()
    # Without a prompter (no terminal), a disc that needs asking for stops the burn.
    with pytest.raises(Error, match="not blank.*no terminal to ask for another disc; no disc was burned"):
        burner.Burner(f"stdio:{drive}", False, messages).burn_all([f"{set_dir}/pc1.003"])

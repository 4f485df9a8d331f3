"""Burning volumes and ISO images disc by disc on one drive, each disc read back and checked.

The matching reading workflow is sets/discs.py (reassemble disc by disc). Both ask for the next disc through a prompter
the command hands them (terminal.Prompter: ask(question) -> the answer line, or None when there
is no terminal to ask on), so the engine knows nothing of terminals.
"""

import os
import tempfile

from . import iso, optical
from .. import units
from ..sets import manifests
from ..errors import Error, UsageError

STOP_ANSWERS = ("q", "quit", "stop")


def volume_argument(path):
    """A volume path from a volume or manifest argument."""
    return manifests.volume_path(path) if path.endswith(manifests.SUFFIX) else path


def is_volume(path):
    """Whether PATH (a volume or its manifest) is a volume with its manifest beside it."""
    return os.path.exists(manifests.manifest_path(volume_argument(path)))


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise Error(f"cannot read {path}: {exc.strerror}") from None


class Burner:
    """Burns discs one after another on one drive, asking through the prompter for each new disc.

    messages: what the user is told through: note(text), progress(total) (a meter per packaging
    and per burn) and show_progress (whether that meter is drawn: the summary of a disc is the
    meter's last line then, a note otherwise). prompter: as the module says, or None when there
    is no terminal: a disc that needs asking for then fails, naming what was burned.
    """

    def __init__(self, device, overwrite, messages, prompter=None):
        self.device = device
        self.overwrite = overwrite
        self.messages = messages
        self.prompter = prompter
        self.burned = []

    def burn_all(self, files):
        for path in files:  # every argument is checked before the first disc is touched
            if is_volume(path):
                continue
            if not iso.is_image(path):
                raise UsageError(f"{path} is neither a volume with its manifest beside it "
                                 "nor an ISO image")
            with iso.Disc(path) as image:   # an image must hold a volume and its manifest,
                iso.check_file_systems(image)   # readable through every file system
        for number, path in enumerate(files):
            if is_volume(path):
                self._burn_volume(volume_argument(path), ask_first=number > 0)
            else:
                self._burn_image(path, ask_first=number > 0)

    def _burn_volume(self, volume_path, ask_first):
        directory = os.path.dirname(volume_path) or "."
        handle, image_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(volume_path)}.",
                                              suffix=".iso")
        os.close(handle)
        try:
            progress = self.messages.progress(total=file_size(volume_path))
            progress.set_detail(f"packaging {os.path.basename(volume_path)}")
            size = iso.package(volume_path, image_path, progress=progress)
            progress.finish(f"packaged {os.path.basename(volume_path)} ({units.format_size(size)} image)")
            self._burn_image(image_path, ask_first, name=os.path.basename(volume_path))
        finally:
            for leftover in (image_path, image_path + ".part"):
                if os.path.exists(leftover):
                    os.unlink(leftover)

    def _burn_image(self, image_path, ask_first, name=None):
        with iso.Disc(image_path) as image:
            manifest, manifest_bytes = image.manifest, image.manifest_bytes
        size = file_size(image_path)
        label = f"{manifest.key.disc_title()} of set '{manifest.set_name}' ({name or os.path.basename(image_path)})"
        problem = None
        while True:
            if ask_first or problem:
                self._ask(label, problem)
            ask_first = True
            problem = self._prepare_medium(size)
            if problem:
                continue
            try:
                self._burn_and_verify(image_path, manifest_bytes, label, size)
            except Error as exc:
                problem = f"failed: {exc}"
                continue
            self.burned.append(label)
            optical.eject(self.device)
            return

    def _prepare_medium(self, image_size):
        """None when the disc in the drive can take the image (blanked first with --overwrite),
        else what is wrong with it."""
        medium = optical.inspect(self.device)
        if medium.present and not medium.blank and medium.overwritable and self.overwrite:
            self.messages.note(f"blanking the disc in {self.device}")
            optical.blank(self.device)
            medium = optical.inspect(self.device)
        return medium.unsuitable(image_size, self.overwrite)

    def _burn_and_verify(self, image_path, manifest_bytes, label, size):
        progress = self.messages.progress(total=2 * size)
        progress.set_detail(f"burning {label}")
        try:
            optical.burn(self.device, image_path, progress)
            progress.set_detail(f"verifying {label}")
            with iso.Disc(self.device) as disc:
                if disc.manifest_bytes != manifest_bytes:
                    raise Error(f"the disc read back holds {disc.manifest.describe()}, not the image burned")
                iso.verify(disc, progress)
        except Error:
            progress.finish(f"{label}: failed")
            raise
        summary = f"{label}: burned and verified ({units.format_size(size)})"
        if self.messages.show_progress:
            progress.finish(summary)
        else:
            self.messages.note(summary)

    def _ask(self, label, problem):
        """Say what went wrong, if anything, and wait for the user to put a disc for LABEL in the
        drive; Error naming the disc when they stop or cannot be asked."""
        told = f"{label}: {problem}.\n" if problem else ""
        question = f"Insert a blank disc for {label} into {self.device} and press Enter (q to stop): "
        answer = self.prompter.ask(told + question) if self.prompter else None
        if answer is None or answer.strip().lower() in STOP_ANSWERS:
            done = f"; burned: {', '.join(self.burned)}" if self.burned else "; no disc was burned"
            reason = "no terminal to ask for another disc" if answer is None else "stopped"
            raise Error(f"{label}: {problem or 'not burned'}: {reason}{done}")

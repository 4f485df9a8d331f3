"""burn-iso: package volumes as ISO images, or burn images and volumes disc by disc and verify them."""

import os
import tempfile

from .. import cli, terminal, units
from ..disc import iso, media, optical
from ..sets import manifests
from ..errors import Error, UsageError

STOP_ANSWERS = ("q", "quit", "stop")


class BurnIso(cli.Command):
    name = "burn-iso"
    description = (
        "Without --device: write NAME.001.iso for each volume NAME.001 (its manifest beside it),\n"
        "holding the volume, its manifest and a README.TXT that says which set and disc this is and\n"
        "how to restore the set with mirrorpipe and with stock tools. File systems: ISO 9660 level 3\n"
        "(files over 4 GiB as multi-extent files), Rock Ridge, Joliet and UDF, so that Linux,\n"
        "Windows and macOS read the disc. An image is written as NAME.001.iso.part and renamed when\n"
        "complete.\n"
        "\n"
        "With --device: burn each FILE (an ISO image made by burn-iso, or a volume, packaged on the\n"
        "fly into a temporary image beside it) with `xorriso -as cdrecord`, one disc at a time.\n"
        "Before each disc the medium must be blank (or, with --overwrite, overwritable) and large\n"
        "enough, otherwise burn-iso asks on the terminal for another disc. After burning, the disc is\n"
        "read back and checked against the manifest's hashes before the next disc is asked for. A\n"
        "failed burn or check names the disc; answer the prompt to retry it on a new disc.")
    epilog = (
        "drives: /dev/sr0, or xorriso's pseudo-drive stdio:PATH (a file or block device, e.g. a USB\n"
        "stick or loop device). A pseudo-drive is blank when it is missing, empty or zeroed at the\n"
        "start; its capacity is a block device's size, or for a regular file the free space of its\n"
        "file system.\n"
        "\n"
        "examples:\n"
        "  burn-iso out/pc1.???                      # out/pc1.001.iso, out/pc1.002.iso, ...\n"
        "  burn-iso -o /srv/iso out/pc1.001\n"
        "  burn-iso --device /dev/sr0 out/pc1.*.iso\n"
        "  burn-iso --device /dev/sr0 out/pc1.???     # package on the fly, one image at a time\n"
        "  split-span --dvd --exec 'burn-iso --device /dev/sr0 {} && rm {} {}.manifest' spool/\n"
        "\n"
        "exit status: 0 success, 1 failure (the message names the disc), 2 usage error.")

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", metavar="FILE",
                            help="volumes (NAME.001, with NAME.001.manifest beside it) to package; "
                                 "with --device also ISO images to burn")
        parser.add_argument("-o", "--output-dir", metavar="DIR",
                            help="write the images to DIR (default: beside each volume)")
        parser.add_argument("-d", "--device", metavar="DEV",
                            help="burn to drive DEV (/dev/sr0, stdio:PATH) instead of writing images")
        parser.add_argument("--overwrite", action="store_true",
                            help="with --device: also accept a written overwritable disc "
                                 "(DVD+RW, BD-RE, a used stdio: file) and blank it first")

    def run(self, args):
        if args.device:
            if args.output_dir:
                raise UsageError("--output-dir is for writing images; with --device images are burned")
            Burner(self.messages, args.device, args.overwrite).burn_all(args.files)
        else:
            if args.overwrite:
                raise UsageError("--overwrite only applies with --device")
            if args.output_dir and not os.path.isdir(args.output_dir):
                raise UsageError(f"{args.output_dir} is not a directory")
            for path in args.files:
                if not is_volume(path):
                    raise UsageError(f"{path} has no manifest beside it; give volumes made by split-span")
            for path in args.files:
                self.package(volume_argument(path), args.output_dir)

    def package(self, volume_path, output_dir):
        image_path = os.path.join(output_dir or os.path.dirname(volume_path) or ".",
                                  os.path.basename(volume_path) + ".iso")
        progress = self.messages.progress(total=_size(volume_path))
        progress.set_detail(os.path.basename(image_path))
        size = iso.package(volume_path, image_path, progress=progress)
        manifest = manifests.read(manifests.manifest_path(volume_path))
        preset = media.PRESETS.get(manifest.media)
        progress.finish(f"wrote {image_path} ({units.format_size(size)})")
        if preset and not iso.fits(size, preset.sectors):
            self.messages.warn(f"{image_path} needs {iso.burned_sectors(size)} sectors burned, more than "
                               f"the {preset.sectors} of a {preset.media} disc")


def volume_argument(path):
    """A volume path from a volume or manifest argument."""
    return manifests.volume_path(path) if path.endswith(manifests.SUFFIX) else path


def _size(path):
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise Error(f"cannot read {path}: {exc.strerror}") from None


def is_volume(path):
    return os.path.exists(manifests.manifest_path(volume_argument(path)))


class Burner:
    """Burns discs one after another on one drive, asking on the terminal for each new disc."""

    def __init__(self, messages, device, overwrite):
        self.messages = messages
        self.device = device
        self.overwrite = overwrite
        self.prompter = None
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
        if self.prompter:
            self.prompter.close()

    def _burn_volume(self, volume_path, ask_first):
        directory = os.path.dirname(volume_path) or "."
        handle, image_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(volume_path)}.",
                                              suffix=".iso")
        os.close(handle)
        try:
            progress = self.messages.progress(total=_size(volume_path))
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
        size = _size(image_path)
        label = f"{manifest.disc_title} of set '{manifest.set_name}' ({name or os.path.basename(image_path)})"
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
        if self.prompter is None:
            self.prompter = terminal.Prompter.open()
        told = f"{label}: {problem}.\n" if problem else ""
        question = f"Insert a blank disc for {label} into {self.device} and press Enter (q to stop): "
        answer = self.prompter.ask(told + question) if self.prompter else None
        if answer is None or answer.strip().lower() in STOP_ANSWERS:
            done = f"; burned: {', '.join(self.burned)}" if self.burned else "; no disc was burned"
            reason = "no terminal to ask for another disc" if answer is None else "stopped"
            raise Error(f"{label}: {problem or 'not burned'}: {reason}{done}")


main = cli.entry_point(BurnIso)

"""burn-iso: package volumes as ISO images, or burn images and volumes disc by disc and verify them."""

import os

from .. import cli, terminal, units
from ..disc import iso, media
from ..disc.burner import Burner, file_size, is_volume, volume_argument
from ..sets import manifests
from ..errors import UsageError


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
            prompter = terminal.Prompter.open()
            try:
                Burner(args.device, args.overwrite, self.messages, prompter).burn_all(args.files)
            finally:
                if prompter:
                    prompter.close()
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
        progress = self.messages.progress(total=file_size(volume_path))
        progress.set_detail(os.path.basename(image_path))
        size = iso.package(volume_path, image_path, progress=progress)
        manifest = manifests.read(manifests.manifest_path(volume_path))
        preset = media.PRESETS.get(manifest.media)
        progress.finish(f"wrote {image_path} ({units.format_size(size)})")
        if preset and not iso.fits(size, preset.sectors):
            self.messages.warn(f"{image_path} needs {iso.burned_sectors(size)} sectors burned, more than "
                               f"the {preset.sectors} of a {preset.media} disc")


main = cli.entry_point(BurnIso)

"""read-disk: a whole disk, a partition or an image file to standard output, raw."""

import json
import os

from .. import cli
from ..source import Source


class ReadDisk(cli.Command):
    name = "read-disk"
    description = (
        "Write the raw bytes of a disk, a partition or an image file to standard output, exactly,\n"
        "nothing added. Block devices are sized by the kernel; holes in sparse image files are\n"
        "emitted as zeros without being read. The source is opened read-only.")
    epilog = (
        "examples:\n"
        "  read-disk /dev/sda | compress | split-span --bd25 out/\n"
        "  read-disk --info sda.json /dev/sda > sda.img\n"
        "  read-disk --offset 1M --length 512M disk.img | checksum\n"
        "\n"
        "exit status: 0 success, 1 failure, 2 usage error.")

    def add_arguments(self, parser):
        parser.add_argument("source", metavar="SOURCE", help="disk, partition or image file to read")
        parser.add_argument("--offset", type=cli.size_argument, default=0, metavar="SIZE",
                            help="start reading at this byte offset (default 0)")
        parser.add_argument("--length", type=cli.size_argument, default=None, metavar="SIZE",
                            help="read this many bytes (default: to the end)")
        parser.add_argument("--info", metavar="FILE",
                            help="write JSON facts about the source to FILE (size, sector sizes, "
                                 "model, serial, partition table, time, host)")

    def run(self, args):
        out = cli.open_output("-")
        with Source(args.source, args.offset, args.length) as source:
            for device, point in source.read_write_mounts():
                self.messages.warn(f"/dev/{device} is mounted read-write at {point}: files changing "
                                   "while it is read may be inconsistent in the image; unmount it or "
                                   "remount it read-only for a clean image")
            if args.info:
                write_json(args.info, source.info(cli.host_name()))
            progress = self.messages.progress(total=source.length)
            source.copy_to(out, progress)
            progress.finish()


def write_json(path, facts):
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(facts, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


main = cli.entry_point(ReadDisk)

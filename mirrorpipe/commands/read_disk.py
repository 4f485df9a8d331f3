"""read-disk: a whole disk, a partition or an image file to standard output, raw."""

import contextlib
import json
import socket

from .. import cli
from ..disk import badsectors
from ..stream import pipeline
from ..errors import EXIT_SECTORS_FILLED, UsageError
from ..disk.source import Source
from ..disk.usedblocks import UsedBlocks
from ..stream.streams import write_named_output


class ReadDisk(cli.Command):
    name = "read-disk"
    complete_statuses = (EXIT_SECTORS_FILLED,)
    description = (
        "Write the raw bytes of a disk, a partition or an image file to standard output, exactly,\n"
        "nothing added. Block devices are sized by the kernel; holes in sparse image files are\n"
        "emitted as zeros without being read. The source is opened read-only.")
    epilog = (
        "examples:\n"
        "  read-disk /dev/sda | compress | split-span --bd25 out/\n"
        "  read-disk --used-only /dev/sda | compress | split-span --bd25 out/\n"
        "  read-disk --info sda.json /dev/sda > sda.img\n"
        "  read-disk --offset 1M --length 512M disk.img | checksum\n"
        "  read-disk --map sda.map --fill 0xBADBADBAD0 /dev/sda | compress > sda.img.zst\n"
        "  ddrescuelog -l- sda.map       # the unreadable sectors, from the map\n"
        "\n"
        "Unreadable sectors do not stop the read: the failing block is retried, then narrowed down\n"
        "to the sector so every readable sector is saved; unreadable ones are filled. A bad area\n"
        "is crossed in growing steps, then read sector by sector while --max-retry-time lasts.\n"
        "\n"
        "--used-only reads only the blocks the file systems use (dumpe2fs for ext2/3/4, partclone\n"
        "for xfs, btrfs, ntfs, FAT, exFAT, f2fs, HFS+) and writes zeros for their free blocks: the\n"
        "output is still the whole raw disk. Partition tables, gaps, swap headers and whatever\n"
        "cannot be mapped (LUKS, LVM, RAID, unknown) are read in full; deleted files' old\n"
        "contents in free space are not kept.\n"
        "\n"
        f"exit status: 0 success, 1 failure, 2 usage error, {EXIT_SECTORS_FILLED} the image is complete but\n"
        "unreadable sectors in it were filled (listed on stderr and in the --map file).")

    def add_arguments(self, parser):
        parser.add_argument("source", metavar="SOURCE",
                            help="disk, partition or image file to read ('-': standard input)")
        parser.add_argument("--offset", type=cli.size_argument, default=0, metavar="SIZE",
                            help="start reading at this byte offset (default 0)")
        parser.add_argument("--length", type=cli.size_argument, default=None, metavar="SIZE",
                            help="read this many bytes (default: to the end)")
        parser.add_argument("--info", metavar="FILE",
                            help="write JSON facts about the source to FILE (size, sector sizes, "
                                 "model, serial, partition table, time, host; with --used-only, "
                                 "how each partition was read), once the read is done")
        parser.add_argument("--used-only", action="store_true",
                            help="read only the blocks the file systems use and write zeros for "
                                 "their free space (a whole disk, partition or image file; "
                                 "no --offset or --length)")
        rescue = parser.add_argument_group("unreadable sectors")
        rescue.add_argument("--retries", type=int, default=badsectors.DEFAULT_RETRIES, metavar="N",
                            help="read a failing block N more times before narrowing it down to "
                                 f"sectors (default {badsectors.DEFAULT_RETRIES})")
        rescue.add_argument("--fill", metavar="PATTERN",
                            help="what unreadable sectors hold in the image: hex bytes (0xDEADBEEF) "
                                 "or text, repeated from the start of each sector (default: zeros)")
        rescue.add_argument("--map", metavar="FILE",
                            help="keep a GNU ddrescue mapfile of what was read and what was not, "
                                 "updated as the read goes (ddrescuelog reads it)")
        rescue.add_argument("--max-retry-time", type=float, metavar="SECONDS",
                            default=badsectors.DEFAULT_MAX_RETRY_TIME,
                            help="time to spend, over the whole read, going back into bad areas "
                                 "that were crossed in steps, sector by sector; what is left is "
                                 "filled and mapped as non-tried "
                                 f"(default {badsectors.DEFAULT_MAX_RETRY_TIME:g})")

    def run(self, args):
        if args.source == "-":
            cli.refuse_terminal_input(0)
        if args.retries < 0 or args.max_retry_time < 0:
            raise UsageError("--retries and --max-retry-time cannot be negative")
        fill = badsectors.parse_fill_pattern(args.fill) if args.fill is not None else b"\0"
        if args.used_only and (args.source == "-" or args.offset or args.length is not None):
            raise UsageError("--used-only reads a whole disk, partition or image file: "
                             "it takes no --offset, --length or '-'")
        out = cli.open_output("-")
        with Source(args.source, args.offset, args.length) as source, \
                (UsedBlocks(source) if args.used_only else contextlib.nullcontext()) as used:
            if source.size is None and args.map:
                raise UsageError(f"{args.source} is a stream, not a disk or an image file: "
                                 "it has no sectors to map, drop --map")
            for device, point in source.read_write_mounts():
                self.messages.warn(f"/dev/{device} is mounted read-write at {point}: files changing "
                                   "while it is read may be inconsistent in the image; unmount it or "
                                   "remount it read-only for a clean image")
            facts = args.info and source.info(socket.gethostname())
            progress = self.messages.progress(total=source.length)
            reader = source.bad_sector_reader(args.map, progress, retries=args.retries, fill=fill,
                                              max_retry_time=args.max_retry_time)
            with reader or contextlib.nullcontext():
                written = source.copy_to(out, progress, reader, used and used.regions())
            if args.source == "-" and source.size is None:
                pipeline.confirm_input_end(written)   # a stream on stdin has no size to go by
            progress.finish()
            if used:
                for line in used.summary():
                    self.messages.note(line)
            if facts:
                if used:
                    facts["partitions"] = used.info()
                    facts["used_only"] = {"read_bytes": written - used.zero_bytes,
                                          "zero_bytes": used.zero_bytes}
                write_named_output(args.info, (json.dumps(facts, indent=2) + "\n").encode(),
                                   what="the info file")
            summary = reader and reader.summary()
            if summary:
                self.messages.warn(summary + (f"; map in {args.map}" if args.map else ""))
                return EXIT_SECTORS_FILLED
        return None


main = cli.entry_point(ReadDisk)

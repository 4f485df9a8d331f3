"""compress: raw stream to independent zstd frames with a seek table, and back with -d."""

import re

from .. import cli, units
from ..stream import frames, pipeline
from ..errors import EXIT_SEEK_TABLE_DAMAGED, UsageError

_LEVEL_FLAG = re.compile(r"^-(\d{1,2})$")


class Compress(cli.Command):
    name = "compress"
    complete_statuses = (EXIT_SEEK_TABLE_DAMAGED,)
    description = (
        "Compress a raw stream into independent zstd frames (each with its content size and checksum)\n"
        "followed by a seek table, using every core. The output is standard zstd: `zstd -d` reads it.\n"
        "With -d, decompress any zstd stream: ours, stock zstd output, concatenated frames.")
    epilog = (
        "examples:\n"
        "  read-disk /dev/sda | compress > sda.img.zst\n"
        "  compress -d < sda.img.zst | write-disk /dev/sdb\n"
        "  zstd -d < sda.img.zst > sda.img      # stock zstd reads it too\n"
        "\n"
        "exit status: 0 success, 1 failure (corrupt or truncated input: the message names the\n"
        f"compressed offset), 2 usage error, {EXIT_SEEK_TABLE_DAMAGED} (-d) the output is complete and every frame\n"
        "matched its own checksum, but the seek table is damaged (each damaged entry is named):\n"
        "the restored data is good; copy the compressed file again from a good copy, or rewrite it\n"
        "with `compress -d < FILE | compress > NEW`.")

    def add_arguments(self, parser):
        parser.add_argument("input", nargs="?", default="-", metavar="FILE",
                            help="read FILE instead of standard input")
        parser.add_argument("-o", "--output", metavar="FILE", default="-",
                            help="write to FILE instead of standard output")
        parser.add_argument("-d", "--decompress", action="store_true",
                            help="decompress instead of compressing")
        parser.add_argument("-l", "--level", type=int, default=frames.DEFAULT_LEVEL, metavar="N",
                            help=f"compression level 1-{frames.MAX_LEVEL}, also spelled -1 ... -19 "
                                 f"(default {frames.DEFAULT_LEVEL})")
        parser.add_argument("-T", "--threads", type=int, default=0, metavar="N",
                            help="worker threads; 0 means one per core (default 0)")
        parser.add_argument("--frame-size", type=cli.size_argument, default=frames.DEFAULT_FRAME_SIZE,
                            metavar="SIZE",
                            help="raw bytes per independent frame (default 8M)")

    def preprocess_argv(self, argv):
        # zstd users type -1 ... -19; argparse cannot declare numeric flags.
        out = []
        for arg in argv:
            match = _LEVEL_FLAG.match(arg)
            out += ["--level", match.group(1)] if match else [arg]
        return out

    def run(self, args):
        if not 1 <= args.level <= frames.MAX_LEVEL:
            raise UsageError(f"level {args.level} is out of range 1-{frames.MAX_LEVEL}")
        if args.threads < 0:
            raise UsageError("--threads must be 0 (one per core) or more")
        if not frames.MIN_FRAME_SIZE <= args.frame_size <= frames.MAX_FRAME_SIZE:
            raise UsageError(f"--frame-size {args.frame_size} is out of range: give "
                             f"{frames.MIN_FRAME_SIZE >> 10}K to {frames.MAX_FRAME_SIZE >> 30}G")
        src = cli.open_input(args.input)
        dst = cli.open_output(args.output)
        total = cli.input_size(src)
        progress = self.messages.progress(total=None if args.decompress else total)
        confirm_end = pipeline.confirm_input_end if src == 0 else None
        if args.decompress:
            try:
                stats = frames.decompress_stream(src, dst, threads=args.threads or None, progress=progress)
            except frames.TruncatedInput:
                if confirm_end:
                    confirm_end(None)   # a command feeding it that ended early is the first cause
                raise
            if confirm_end:
                confirm_end(stats.compressed_bytes)
        else:
            stats = frames.compress_stream(src, dst, level=args.level, threads=args.threads or None,
                                           frame_size=args.frame_size, progress=progress,
                                           confirm_end=confirm_end)
        raw, packed = stats.raw_bytes, stats.compressed_bytes
        cli.finish_output(dst)
        ratio = f"{100 * packed / raw:.1f}%" if raw else "-"
        progress.finish(f"{units.format_size(raw)} raw, {units.format_size(packed)} compressed ({ratio})")
        if args.decompress and stats.seek_table_damage:
            for problem in stats.seek_table_damage:
                self.messages.warn(problem)
            self.messages.warn("all the data was written, every frame matching its own checksum; only "
                               "the seek table is damaged: copy the compressed stream again from a "
                               "good copy, or rewrite it with compress -d | compress")
            return EXIT_SEEK_TABLE_DAMAGED
        return None


main = cli.entry_point(Compress)

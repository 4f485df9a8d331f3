"""checksum: xxHash digest of a stream passing through, or of files, in xxhsum's formats."""

import os

from .. import cli
from ..stream import digests, pipeline
from ..errors import EXIT_FAILURE, Error, UsageError
from ..stream.streams import write_all


class Checksum(cli.Command):
    name = "checksum"
    description = (
        "Pass standard input to standard output unchanged while computing its xxHash digest\n"
        "(xxh128 by default). Write the digest to a sum file with -o, or check the stream against\n"
        "one with -c. Sum files use the formats `xxh128sum -c` / `xxhsum -c` read. With FILE\n"
        "arguments, print their digests like xxh128sum. When standard output is a terminal, the\n"
        "stream is not passed on and its digest line is printed instead.")
    epilog = (
        "examples:\n"
        "  read-disk /dev/sda | checksum -o sda.xxh128 --name sda.img | compress > sda.img.zst\n"
        "  compress -d < sda.img.zst | checksum -c sda.xxh128 | write-disk /dev/sdb\n"
        "  checksum sda.img            # same line as: xxh128sum sda.img\n"
        "\n"
        "Without -o or -c, the digest line goes to standard error.\n"
        "With -c, the data has passed downstream by the time the digest is known: a mismatch\n"
        "makes checksum exit 1 (use `set -o pipefail` so the pipeline fails too).\n"
        "\n"
        "exit status: 0 success (and the digest matches with -c), 1 failure or mismatch, 2 usage error.")

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="*", metavar="FILE",
                            help="files to digest instead of passing standard input through")
        parser.add_argument("-a", "--algorithm", choices=sorted(digests.ALGORITHMS),
                            default=None, help=f"digest algorithm (default {digests.DEFAULT_ALGORITHM})")
        parser.add_argument("-o", "--output", metavar="SUMFILE",
                            help="write the stream's digest line to SUMFILE")
        parser.add_argument("-c", "--check", metavar="SUMFILE",
                            help="check the stream against the digest in SUMFILE; exit 1 on a mismatch")
        parser.add_argument("--name", metavar="NAME",
                            help="the file name recorded with -o, or the line picked with -c "
                                 f"(default {digests.STDIN_NAME!r}, as xxh128sum names standard input)")

    def run(self, args):
        if args.files:
            if args.output or args.check or args.name:
                raise UsageError("-o, -c and --name apply to a stream on standard input, not to FILE arguments")
            return self.digest_files(args.files, args.algorithm or digests.DEFAULT_ALGORITHM)
        if args.name is not None:
            try:
                digests.check_name(args.name)
            except Error as exc:
                raise UsageError(f"--name: {exc}") from None
        return self.digest_stream(args)

    def digest_files(self, paths, algorithm):
        status = None
        for path in paths:
            try:
                digests.check_name(path)
                fd = os.open(path, os.O_RDONLY)
                try:
                    hexdigest = digests.hash_stream(fd, algorithm)
                finally:
                    os.close(fd)
            except Error as exc:
                self.messages.error(f"not digested: {exc}")
                status = EXIT_FAILURE
                continue
            except OSError as exc:   # a directory opens, then fails to read
                self.messages.error(f"cannot read {path}: {exc.strerror}")
                status = EXIT_FAILURE
                continue
            os.write(1, digests.format_line(algorithm, hexdigest, path).encode("utf-8", "surrogateescape"))
        return status

    def digest_stream(self, args):
        expected = None
        algorithm = args.algorithm or digests.DEFAULT_ALGORITHM
        if args.check:
            entries = digests.parse_sum_file(args.check)
            expected = digests.pick_entry(entries, args.check, args.name)
            if args.algorithm and args.algorithm != expected[0]:
                raise UsageError(f"{args.check} holds an {expected[0]} digest, not {args.algorithm}")
            algorithm = expected[0]
        src = cli.open_input("-")
        # Opened before the stream passes: an unwritable SUMFILE fails before the data is read.
        sum_file = cli.open_output(args.output, binary=False) if args.output else None
        # At a terminal there is nowhere to pass the data: print the digest, as xxh128sum does.
        passthrough = not os.isatty(1)
        name = args.name or digests.STDIN_NAME
        progress = self.messages.progress(total=cli.input_size(src))
        try:
            hexdigest = digests.hash_stream(src, algorithm, copy_to=1 if passthrough else None,
                                            progress=progress, confirm_end=pipeline.confirm_input_end)
        except pipeline.IncompleteInput as exc:
            raise exc.with_consequence("no digest was written or checked") from None
        progress.finish()
        line = digests.format_line(algorithm, hexdigest, name)
        if args.output:
            write_all(sum_file, line.encode("utf-8", "surrogateescape"))
            cli.finish_output(sum_file)
        if not passthrough:
            os.write(1, line.encode("utf-8", "surrogateescape"))
        elif not args.output and not args.check:
            self.messages.note(line.rstrip("\n"))
        if expected and hexdigest != expected[1]:
            raise Error(f"checksum mismatch: the stream's {algorithm} is {hexdigest}, but {args.check} "
                        f"says {expected[1]} for {expected[2]!r}")
        if expected:
            self.messages.note(f"{algorithm} matches {args.check} ({expected[2]})")


main = cli.entry_point(Checksum)

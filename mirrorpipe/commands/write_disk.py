"""write-disk: a raw stream from standard input to a block device or a file."""

from .. import cli, terminal, units
from ..stream import pipeline
from ..errors import EXIT_INTERRUPTED, Error
from ..disk.target import open_target


class WriteDisk(cli.Command):
    name = "write-disk"
    description = (
        "Write a raw stream from standard input to a block device or a file (created if missing).\n"
        "Refuses, before writing a byte, a target that is mounted, has a mounted partition, is used\n"
        "as swap, backs a loop device in use (also through stacked loops), holds the running\n"
        "system, is the stream's own input (standard input, or open in another command of the\n"
        "pipeline) or is a terminal. Asks on the terminal before overwriting a disk that holds a\n"
        "partition table or file system. Nothing on the target changes before the first byte\n"
        "arrives. All-zero blocks become holes in file targets; on a block device the kernel zeroes\n"
        "them (BLKZEROOUT), or --discard makes the whole device read as zeros once, at the first\n"
        "byte, and they are skipped. Reports success only when the command that fed the stream\n"
        "finished it and the data reached stable storage; a copy cut short says what the target\n"
        "holds (a partial image, up to which byte).")
    epilog = (
        "examples:\n"
        "  compress -d < sda.img.zst | write-disk /dev/sdb\n"
        "  reassemble out/ | compress -d | write-disk --verify /dev/sdb\n"
        "  reassemble out/ | compress -d | write-disk --discard /dev/nvme0n1   # a --used-only image\n"
        "  zstd -d < sda.img.zst | write-disk restored.img\n"
        "\n"
        "exit status: 0 the whole stream is written and durable, 1 failure (a refused target, an\n"
        "incomplete stream, a write error: the message says what the target holds), 2 usage error\n"
        f"or a terminal as input or target, {EXIT_INTERRUPTED} interrupted.")

    def add_arguments(self, parser):
        parser.add_argument("target", metavar="TARGET", help="block device or file to write")
        parser.add_argument("-f", "--force", action="store_true",
                            help="overwrite a disk holding a partition table or file system without "
                                 "asking (needed when there is no terminal to ask on)")
        parser.add_argument("--verify", action="store_true",
                            help="after writing, read the target back and compare it with the stream")
        parser.add_argument("--discard", action="store_true",
                            help="when the first byte arrives, make the whole block device read as "
                                 "zeros in one request (fallocate punch-hole: the device unmaps or "
                                 "zeroes itself) and skip the stream's zero runs, so the free space of "
                                 "a read-disk --used-only image costs no writes; the disk past the "
                                 "stream's end reads as zeros too. A device that cannot is named in a "
                                 "warning and has its zero runs zeroed as without --discard. A file "
                                 "target is unaffected: its zero runs are holes anyway")

    def run(self, args):
        src = cli.open_input("-")
        target = open_target(args.target)
        try:
            target.refuse_own_input(src)
            self.confirm_overwrite(target, args.force)
            progress = self.messages.progress(total=cli.input_size(src))
            written = target.write_stream(src, progress, verify=args.verify,
                                          confirm_end=pipeline.confirm_input_end,
                                          discard=args.discard, say=self.messages.warn)
            checked = ", verified" if args.verify else ""
            rest = ("; the rest of the disk was discarded (reads as zeros)"
                    if target.discarded and written < target.capacity else "")
            progress.finish(f"{units.format_size(written)} written to {args.target}, "
                            f"flushed to stable storage{checked}{rest}")
        finally:
            target.close()

    def confirm_overwrite(self, target, force):
        contents = target.existing_contents()
        if not contents or force:
            return
        question = (f"{self.name}: {target.path} ({units.format_size(target.capacity)}) holds {contents}; "
                    "everything on it will be overwritten. Type 'yes' to continue: ")
        answer = terminal.ask(question)
        if answer is None:
            raise Error(f"{target.path} holds {contents}; refusing to overwrite it without "
                        "confirmation: run in a terminal to be asked, or add --force")
        if answer.strip().lower() != "yes":
            raise Error(f"not confirmed; nothing was written to {target.path}")


main = cli.entry_point(WriteDisk)

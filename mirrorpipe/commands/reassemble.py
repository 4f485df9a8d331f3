"""reassemble: join the volumes of a set back into the stream, checking every chunk first."""

import sys

from .. import cli, terminal, units
from ..mount.images import open_image
from ..sets import reader, verifier
from ..stream import seekable
from ..errors import EXIT_REBUILDABLE, UsageError


class Reassemble(cli.Command):
    name = "reassemble"
    complete_statuses = (EXIT_REBUILDABLE,)   # --verify: its table or JSON is complete
    description = (
        "Join the volumes split-span made back into the stream on standard output. Sources are\n"
        "directories, volume files, manifests, ISO images (split-span --iso, burn-iso) or optical\n"
        "drives, in any order and with any names: the manifests give the order.\n"
        "\n"
        "Checked before the first byte, when all volumes are at hand: each manifest's format and\n"
        "fields, that all belong to one set (set id) and agree, that the set is complete (no index\n"
        "missing, a last volume, none beyond it; with parity: no more lost than it can rebuild),\n"
        "that each volume file is there with the length its manifest gives, and, by its first\n"
        "chunk, which volume's data each volume file holds (renamed or swapped files are named and\n"
        "read as the volume they hold). Checked on the way: each chunk against its hash before it\n"
        "is written (no byte of a damaged chunk is written), each volume's hash after its last\n"
        "chunk, the stream's hash after the last byte. A failure on the way stops reassemble with\n"
        "exit status 1, after the bytes checked so far: what reads the stream must fail with it.\n"
        "\n"
        "Copies: give two or more copies of a volume (another directory, its ISO image beside the\n"
        "volume file) and each chunk comes from a copy that holds it intact; stderr names each\n"
        "chunk a copy made up for.\n"
        "\n"
        "Disc by disc: given a directory (a mounted disc) or a drive that holds only part of the\n"
        "set, it reads what is there, then asks on the terminal for the next disc and reads again.\n"
        "For a set with parity, answer l for a disc that is lost or unreadable: the other discs of\n"
        "its group rebuild it, in scratch space (one volume per lost volume) under TMPDIR or /var/tmp.\n"
        "\n"
        "Parity (split-span --parity K): give the parity volumes with the data volumes. Up to K\n"
        "volumes of each group that are missing, truncated or damaged (whole volumes, or damaged\n"
        "chunks in several volumes) are rebuilt, and each rebuild is reported on stderr. With more\n"
        "losses than parity it names what is lost before writing anything.")
    epilog = (
        "examples:\n"
        "  reassemble out/ | compress -d | write-disk /dev/sdb\n"
        "  reassemble /media/cdrom | compress -d | write-disk /dev/sdb     # asks for each disc\n"
        "  reassemble /dev/sr0 | compress -d | write-disk /dev/sdb         # reads the disc unmounted\n"
        "  reassemble out/*.iso | compress -d | write-disk /dev/sdb\n"
        "  reassemble --verify out/\n"
        "  reassemble --verify --rebuild-into new/ out/    # replacements for lost volumes\n"
        "  reassemble --verify --json out/                 # the same check, for scripts\n"
        "  reassemble --range 1M:512 out/ | xxd | head   # bytes of the disk, at random\n"
        "  ssh backup-host 'reassemble /srv/pc1' | compress -d | write-disk /dev/sdb\n"
        "\n"
        "exit status: 0 the whole stream was written and every chunk, volume and stream hash\n"
        "matched (--verify: the set is intact), 1 any problem, before the first byte or on the way\n"
        "(the message names the volume and what is wrong), 2 usage error, "
        f"{EXIT_REBUILDABLE} (--verify) the set\n"
        "restores, but only by making up for damage: lost or damaged volumes the parity rebuilds,\n"
        "damaged chunks of a copy that another copy holds intact, files under another volume's name.")

    def add_arguments(self, parser):
        parser.add_argument("sources", nargs="+", metavar="SOURCE",
                            help="directory, volume file, manifest, ISO image or drive of the set")
        parser.add_argument("-o", "--output", metavar="FILE", default="-",
                            help="write the stream to FILE instead of standard output")
        parser.add_argument("--verify", action="store_true",
                            help="check the whole set, every copy of every volume, without writing "
                                 "the stream; print a table of the volumes on standard output")
        parser.add_argument("--json", action="store_true",
                            help="with --verify, print the result as JSON instead of the table: the "
                                 "verdict, its exit status, a row per volume, each parity group's "
                                 "health, the problems")
        parser.add_argument("--range", type=cli.range_argument, metavar="OFFSET:LENGTH",
                            help="write only these bytes of the disk (of the decompressed stream, "
                                 "for a compressed set), read at random through the seek table and "
                                 "checked the same way; SOURCE may also be one file made by "
                                 "compress, or a raw image file, as for mount-image")
        parser.add_argument("--rebuild-into", metavar="DIR",
                            help="with --verify, for a set with parity: write each lost or damaged "
                                 "volume, data or parity, rebuilt, with its manifest into DIR, to "
                                 "take the lost disc's place")

    def run(self, args):
        if args.rebuild_into and not args.verify:
            raise UsageError("--rebuild-into needs --verify (it writes replacement volumes, not the stream)")
        if args.json and not args.verify:
            raise UsageError("--json needs --verify (it prints the result of the check)")
        # Directories and drives that hold part of the set are read disc by disc, asking on the
        # terminal for the next.
        if args.range and args.verify:
            raise UsageError("--range and --verify do not go together: --verify reads the whole set")
        if args.range:
            image, _ = open_image(args.sources, say=self.messages.warn)
            out_fd = cli.open_output(args.output)
            seekable.copy_range(image, *args.range, out_fd)
            cli.finish_output(out_fd)
            return None
        if args.verify:
            verify = verifier.Verify(args.sources, open_prompter=terminal.Prompter.open,
                                     rebuild_into=args.rebuild_into, say=self.messages.note)
            result = verify.run(self.messages.progress())
            sys.stdout.write(result.to_json() if args.json else result.table())
            sys.stdout.flush()
            if result.error():
                raise result.error()
            return result.exit_status
        restore = reader.Restore(args.sources, open_prompter=terminal.Prompter.open)
        for note in restore.notes:
            self.messages.warn(note)
        out_fd = cli.open_output(args.output)
        progress = self.messages.progress()
        end = restore.run(out_fd, progress, say=self.messages.warn)
        cli.finish_output(out_fd)
        progress.finish(f"{units.format_size(end.total_length)} from {end.volume_count} "
                        f"volume{'s' if end.volume_count > 1 else ''} of set '{end.set_name}', "
                        "every chunk, volume and the stream verified")


main = cli.entry_point(Reassemble)

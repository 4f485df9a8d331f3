"""split-span: cut a stream into disc-sized volumes, each with a manifest beside it."""

from .. import cli, units
from ..disc import iso, media
from ..sets import erasure, manifests
from ..sets.writer import ExecHook, VolumeSetWriter
from ..stream import pipeline
from ..errors import Error, UsageError


class SplitSpan(cli.Command):
    name = "split-span"
    description = (
        "Cut the stream on standard input into volumes OUTDIR/NAME.001, NAME.002, ... of a disc's or\n"
        "any size, each with a manifest NAME.001.manifest beside it (set id, place in the stream,\n"
        "xxh3-128 hashes of the volume and of every chunk), for reassemble to check and join.\n"
        "`cat OUTDIR/NAME.???` gives the stream back. The stream is not looked into: compressed,\n"
        "raw or encrypted, any stream is cut as it is.\n"
        "\n"
        "A volume being written is NAME.NNN.part; it gets its final name, and then its manifest,\n"
        "only when complete. A run killed at any moment leaves no set that reassemble accepts.\n"
        "Sets of more than 899 volumes continue with wider numbers that still sort in order:\n"
        "NAME.90000 ... NAME.98999, then NAME.9900000 ...")
    epilog = (
        media.presets_help() + "\n\n"
        "--exec CMD runs `sh -c CMD` after each finished volume with {} standing for the volume's\n"
        "path (passed as an argument, never as shell code: do not quote {}), stdin from /dev/null,\n"
        "and in the environment MIRRORPIPE_VOLUME, MIRRORPIPE_SET_ID, MIRRORPIPE_SET_NAME,\n"
        "MIRRORPIPE_LAST (1 for the last file of the set, else 0) and, for a data volume,\n"
        "MIRRORPIPE_VOLUME_INDEX or, for a parity volume, MIRRORPIPE_PARITY_GROUP and\n"
        "MIRRORPIPE_PARITY_INDEX.\n"
        "\n"
        "--parity K adds K parity volumes NAME.parity-001-1 ... per group of --group G data volumes\n"
        f"(default {erasure.MAX_DATA}: one group for most sets), written after the group's data volumes;\n"
        "reassemble rebuilds any K volumes of a group that are lost or damaged. They are built while\n"
        "the data streams past, in files beside the volumes (K volumes of disk space until the group\n"
        "is finished), so --exec may burn and delete each data volume at once.\n"
        "\n"
        "examples:\n"
        "  read-disk /dev/sda | compress | split-span --bd25 out/\n"
        "  read-disk /dev/sda | compress | ssh backup-host 'split-span --dvd --name pc1 /srv/pc1'\n"
        "  ... | split-span --dvd --exec 'burn-iso --device /dev/sr0 {} && rm {}' /var/tmp/spool\n"
        "  read-disk /dev/sda | compress | split-span --bd25 --parity 2 out/   # survives 2 lost discs\n"
        "  cat out/image.??? | zstd -d > sda.img     # restore with stock tools\n"
        "\n"
        "exit status: 0 the set is complete, 1 failure (the message says which volumes are\n"
        "complete), 2 usage error.")

    def add_arguments(self, parser):
        parser.add_argument("outdir", metavar="OUTDIR", help="directory for the volumes (created if missing)")
        sizes = parser.add_mutually_exclusive_group(required=True)
        for preset in media.PRESETS.values():
            sizes.add_argument(f"--{preset.name}", dest="preset", action="store_const", const=preset.name,
                               help=f"volumes for {preset.media} discs")
        sizes.add_argument("-s", "--size", type=cli.size_argument, metavar="SIZE",
                           help="volumes of SIZE bytes (e.g. 4G, 700MB)")
        parser.add_argument("-n", "--name", default="image", metavar="NAME",
                            help="set name and file name prefix (default: image)")
        parser.add_argument("--chunk-size", type=cli.size_argument, default=manifests.DEFAULT_CHUNK_SIZE,
                            metavar="SIZE",
                            help="bytes per hashed chunk, what reassemble checks before passing it on "
                                 "(default 16M)")
        parser.add_argument("--iso", action="store_true",
                            help="write each finished volume as an ISO image NAME.001.iso (volume, "
                                 "manifest, README.TXT) in place of the volume: needs the disk space "
                                 "of one volume more, not of the whole set")
        parser.add_argument("--parity", type=parity_count, metavar="K",
                            help=f"add K parity volumes (1-{erasure.MAX_PARITY}) per group, so that any K lost or "
                                 "damaged volumes of the group can be rebuilt")
        parser.add_argument("--group", type=group_size, metavar="G",
                            help=f"data volumes per parity group (1-{erasure.MAX_DATA}, default "
                                 f"{erasure.MAX_DATA}); needs --parity")
        parser.add_argument("--exec", dest="exec_command", metavar="CMD",
                            help="run CMD after each finished volume; {} is the volume's path; "
                                 "a failure stops split-span")

    def run(self, args):
        if args.preset:
            volume_size = media.volume_size_for(media.PRESETS[args.preset], args.chunk_size)
        else:
            volume_size = args.size
        if args.group and not args.parity:
            raise UsageError("--group needs --parity")
        scheme = manifests.ParityScheme(args.parity, args.group or erasure.MAX_DATA) if args.parity else None
        src = cli.open_input("-")
        progress = self.messages.progress()
        try:
            writer = VolumeSetWriter(
                args.outdir, args.name, volume_size, chunk_size=args.chunk_size, media=args.preset,
                on_finished=finished_hook(args),
                progress=progress, parity=scheme)
        except Error as exc:
            raise UsageError(str(exc)) from None
        finished = writer.write(src, confirm_end=pipeline.confirm_input_end)
        last = finished[-1]
        parity_note = f" and {len(writer.finished_parity)} parity volumes" if scheme else ""
        progress.finish(f"{units.format_size(last.total_length)} in {last.volume_count} "
                        f"volume{'s' if last.volume_count > 1 else ''}{parity_note} of set '{args.name}' "
                        f"(set id {last.set_id}) in {args.outdir}")


def parity_count(text):
    return cli.bounded_int(text, 1, erasure.MAX_PARITY, "parity volumes")


def group_size(text):
    return cli.bounded_int(text, 1, erasure.MAX_DATA, "data volumes per group")


def finished_hook(args):
    """What runs after each finished volume: --exec, and with --iso the packaging before it, so
    that --exec is handed the image."""
    exec_hook = ExecHook(args.exec_command) if args.exec_command else None
    return iso.ImageHook(then=exec_hook) if args.iso else exec_hook


main = cli.entry_point(SplitSpan)

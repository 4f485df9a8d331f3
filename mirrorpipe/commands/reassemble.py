"""reassemble: join the volumes of a set back into the stream, checking every chunk first."""

import sys

from .. import cli, terminal, units
from ..sets import replacements, setreader, volumes
from ..errors import Error, UsageError

# --verify: the set is damaged or incomplete, but its parity volumes can rebuild what is lost.
EXIT_REBUILDABLE = 3


class Reassemble(cli.Command):
    name = "reassemble"
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
        parser.add_argument("--rebuild-into", metavar="DIR",
                            help="with --verify, for a set with parity: write each lost or damaged "
                                 "volume, data or parity, rebuilt, with its manifest into DIR, to "
                                 "take the lost disc's place")

    def run(self, args):
        if args.rebuild_into and not args.verify:
            raise UsageError("--rebuild-into needs --verify (it writes replacement volumes, not the stream)")
        found = volumes.scan(args.sources)
        volume_set = volumes.gather(found)
        replace = None
        if args.rebuild_into:
            if not volume_set.has_parity():
                raise Error("--rebuild-into rebuilds from parity volumes, and none of this set's were "
                            "found (or its last volume is missing too)")
            replace = replacements.ReplacementWriter(args.rebuild_into, volume_set, say=self.messages.note)
        # Disc by disc only for directories and drives (they can be read again) and with a terminal
        # to ask on.
        prompter = None
        directories = args.sources if all(volumes.rereadable(s) for s in args.sources) else None
        if not volume_set.restorable() and directories:
            prompter = terminal.Prompter.open()
        disc_by_disc = prompter is not None
        out_fd = None
        if not args.verify:
            problem = setreader.check_before_reading(volume_set, found, disc_by_disc)
            if problem:
                raise Error(problem)
            for note in volume_set.notes:
                self.messages.warn(f"{note}; reading it as the volume it holds")
            out_fd = cli.open_output(args.output)
        progress = self.messages.progress()
        reader = setreader.SetReader(volume_set, found, out_fd=out_fd, progress=progress,
                                   directories=directories, prompter=prompter, verify_only=args.verify,
                                   say=None if args.verify else self.messages.warn,
                                   replace=replace)
        try:
            if args.verify:
                status = self.verify(reader, volume_set, found, disc_by_disc)
                # Replacements written for every lost volume make the set whole again.
                return None if replace and replace.written else status
            reader.run()
        finally:
            reader.close()
        cli.finish_output(out_fd)
        last = volume_set.end
        progress.finish(f"{units.format_size(last.total_length)} from {last.volume_count} "
                        f"volume{'s' if last.volume_count > 1 else ''} of set '{last.set_name}', "
                        "every chunk, volume and the stream verified")

    def verify(self, reader, volume_set, found, disc_by_disc):
        problems = list(volume_set.problems)
        if disc_by_disc:
            reports = reader.run()
        else:
            reports = reader.verify_present()
            missing = volume_set.describe_missing()
            if missing and not reader.health:
                problems.append(missing)
        # Each status names its volume.
        problems += [r.status for r in reports.values() if r.status not in ("ok", "missing") and not r.rebuilt]
        rows = [reports[index] for index in sorted(reports)] + \
            [reader.parity_reports[key] for key in sorted(reader.parity_reports)]
        lines = [f"{'volume':>7}  {'bytes':>15}  {'chunks':>6}  status       file"]
        for r in rows:
            status = "REBUILDABLE" if r.rebuilt else r.status if r.status in ("ok", "missing") else "BAD"
            status = "ok-copy-bad" if status == "ok" and r.damaged_copies else status
            lines.append(f"{r.index:>7}  {r.length if r.length is not None else '-':>15}  "
                         f"{r.chunks if r.chunks is not None else '-':>6}  {status:<11}  {r.path or '-'}")
        lines += [describe_health(group, health, volume_set) for group, health in sorted(reader.health.items())]
        lines += [line for r in rows for line in r.damaged_copies] + volume_set.notes
        rebuildable = [r for r in rows if r.rebuilt or r.status != "ok"] if reader.health else []
        mended = [r for r in rows if r.damaged_copies and not r.rebuilt and r.status == "ok"]
        unrebuildable = [group for group, health in reader.health.items() if health.spare < 0]
        problems += [f"group {group} cannot be rebuilt" for group in unrebuildable]
        reference = volume_set.reference
        count = volume_set.count
        end = volume_set.end
        # Damage the set makes up for (parity, an intact copy, a file found under another name):
        # reassemble restores it, but it is worse off than it was made; exit status 3.
        made_up = []
        if rebuildable:
            made_up.append(f"{len(rebuildable)} volume(s) lost or damaged: reassemble rebuilds them from "
                           "parity, but the set can take less damage now (see the group lines)")
        if mended:
            made_up.append(f"{len(mended)} volume(s) with a damaged copy: reassemble takes each chunk from "
                           "an intact copy; copy the damaged ones again from it (see above)")
        if volume_set.notes:
            made_up.append(f"{len(volume_set.notes)} volume file(s) under another volume's name: reassemble "
                           f"reads each as the volume it holds, cat {reference.set_name}.??? would not; "
                           "rename them (see above)")
        if problems:
            verdict = f", {len(problems)} problem(s)"
        elif made_up:
            verdict = ", " + "; ".join(made_up)
        else:
            verdict = ", all verified"
        lines.append(f"set '{reference.set_name}' (set id {reference.set_id}): "
                     + (f"{count} volumes, {end.total_length} bytes" if count else "last volume not found")
                     + verdict)
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        if problems:
            raise Error("; ".join(problems))
        return EXIT_REBUILDABLE if made_up else None


def describe_health(group, health, volume_set):
    """One line of --verify on a parity group: what it lost and how much more it can lose."""
    indices = volume_set.scheme.data_indices(group, volume_set.count)
    parity_count = health.parity_count
    head = (f"group {group} (volumes {indices[0]}-{indices[-1]}, {parity_count} parity "
            f"volume{'s' if parity_count > 1 else ''}): ")
    if health.spare < 0:
        return head + (f"{health.worst} volumes lost at the same place, more than the parity can "
                       "rebuild: DATA LOST unless another copy of them is found")
    lost = "intact" if not health.worst else \
        f"{len(health.lost_chunks)} volume(s) lost or damaged, all rebuildable"
    return head + f"{lost}; can still lose {health.spare} more volume{'s' if health.spare != 1 else ''}"


main = cli.entry_point(Reassemble)

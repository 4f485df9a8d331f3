"""Verifying a set (reassemble --verify): Verify reads every volume and every copy of it to the
end, without writing the stream, and returns a Verification: a row per volume, the health of
each parity group, the problems, what the set makes up for, and the verdict with its exit
status. What is lost is rebuilt in memory to check the stream hash, so a set that verifies as
repairable restores correctly.
"""

import json

from . import manifests
from ..errors import EXIT_FAILURE, EXIT_OK, EXIT_REBUILDABLE, Error
from .copies import VolumeCopies
from .finder import scan
from .names import VolumeKey
from .reader import discs_in
from .replacements import ReplacementWriter
from .volumeset import gather
from .walk import SetWalk, VolumeReport, damaged_offsets

# The verdicts, each with its exit status.
INTACT = "intact"              # every chunk, volume and the stream verified
REPAIRABLE = "repairable"      # restores, only by making up for damage (parity, a copy, a name)
REPLACED = "replaced"          # --rebuild-into wrote a replacement for everything lost
UNRESTORABLE = "unrestorable"  # the stream cannot be restored from what is at hand
EXIT_STATUS = {INTACT: EXIT_OK, REPAIRABLE: EXIT_REBUILDABLE, REPLACED: EXIT_OK, UNRESTORABLE: EXIT_FAILURE}


class SetVerifier(SetWalk):
    """Reads a whole set, every copy of every volume, writing nothing: the problems become the
    status of their volume's report instead of stopping the walk."""

    check_every_copy = True

    def __init__(self, volume_set, found, replace=None, **kwargs):
        """replace(group, rebuilder, health): called for each group with parity once checked
        (replacements.ReplacementWriter writes replacements for its lost volumes)."""
        super().__init__(volume_set, found, **kwargs)
        self.replace = replace
        self.parity_reports = {}      # VolumeKey of a parity volume -> VolumeReport
        self.health = {}              # group -> parity.GroupHealth

    def _problem(self, report, problem, error):
        if report.status == "ok":
            report.status = problem

    def _group_read(self, group, rebuilder, whole):
        if not whole:
            super()._group_read(group, rebuilder, whole)
            return
        self._check_parity_volumes(rebuilder, group)
        self.health[group] = rebuilder.health()
        if self.replace:
            self.replace(group, rebuilder, self.health[group])

    def verify_present(self):
        """Check every volume found, without asking for the others (a local set)."""
        self.set.place_data()
        if self.set.has_parity():
            return self._read_groups()
        top = self.set.count or max(self.set.by_index, default=0)
        for index in range(1, top + 1):
            volume = self.set.by_index.get(index)
            if volume:
                self._read(volume)
            else:
                self.reports[index] = VolumeReport(index)
        if self.set.last and not self.set.missing():
            self._check_stream()
        return self.reports

    def _check_parity_volumes(self, rebuilder, group):
        """Read every chunk of the group's parity volumes; a report for each."""
        data_rows = rebuilder.code.data_count
        for parity_index in range(1, self.set.scheme.count + 1):
            key = VolumeKey.parity(group, parity_index)
            row = data_rows + parity_index - 1
            member = rebuilder.members[row]
            volume = self.set.parity.get(key)
            report = self.parity_reports[key] = VolumeReport(
                f"p{group}-{parity_index}", volume.path if volume else None,
                member.length if volume else None, rebuilder.chunks if volume else None,
                "ok" if volume else "missing")
            if volume is None:
                continue
            for number in range(manifests.chunk_count(member.length, rebuilder.chunk_size)):
                rebuilder.read_chunk(row, number)
            if isinstance(member.file, VolumeCopies):
                self._tell_copies(member.file, report)
            if member.file is None:
                report.status = self.set.lost.get(key, "unreadable")
            elif member.bad_chunks:
                report.status = f"damaged chunks at offset {damaged_offsets(rebuilder, member)}"


class Verify:
    """A check of the set some sources hold, every copy of every volume, writing nothing; run()
    makes it and gives a Verification. The command and the tests both verify through it."""

    def __init__(self, sources, open_prompter=None, rebuild_into=None, say=None):
        """open_prompter as reader.Restore takes it; with rebuild_into (a directory), a set with
        parity gets a replacement there for each volume lost or damaged, each named through
        say(text)."""
        self.found = scan(sources)
        self.set = gather(self.found)
        self.replace = None
        if rebuild_into:
            if not self.set.has_parity():
                raise Error("--rebuild-into rebuilds from parity volumes, and none of this set's were "
                            "found (or its last volume is missing too)")
            self.replace = ReplacementWriter(rebuild_into, self.set, say=say)
        self.directories = discs_in(sources)
        self.prompter = open_prompter() if open_prompter and self.directories and not self.set.restorable() \
            else None

    def run(self, progress=None):
        """Read the whole set (disc by disc when the sources hold part of it); the Verification."""
        problems = list(self.set.problems)
        verifier = SetVerifier(self.set, self.found, replace=self.replace, directories=self.directories,
                               prompter=self.prompter, progress=progress)
        try:
            if self.prompter is not None:    # disc by disc
                reports = verifier.run()
            else:
                reports = verifier.verify_present()
                missing = self.set.describe_missing()
                if missing and not verifier.health:
                    problems.append(missing)
        finally:
            verifier.close()
        rows = [reports[index] for index in sorted(reports)] + \
            [verifier.parity_reports[key] for key in sorted(verifier.parity_reports)]
        return Verification(self.set, rows, verifier.health, problems,
                            self.replace.written if self.replace else [])


class Verification:
    """What a check of a whole set found, its verdict, and the two ways it is shown: the table
    (text) and JSON."""

    def __init__(self, volume_set, rows, health, problems, replacements):
        self.set = volume_set
        self.rows = rows                  # VolumeReport: data volumes in order, then parity volumes
        self.health = health              # group -> parity.GroupHealth
        self.replacements = replacements  # paths of the replacement volumes written
        # Each status names its volume.
        self.problems = problems + [
            r.status for r in rows
            if isinstance(r.index, int) and r.status not in ("ok", "missing") and not r.rebuilt]
        self.problems += [f"group {group} cannot be rebuilt" for group, h in health.items() if h.spare < 0]
        self.made_up = self._made_up()

    def _made_up(self):
        """Damage the set makes up for (parity, an intact copy, a file found under another name):
        it restores, but it is worse off than it was made."""
        rebuildable = [r for r in self.rows if r.rebuilt or r.status != "ok"] if self.health else []
        mended = [r for r in self.rows if r.damaged_copies and not r.rebuilt and r.status == "ok"]
        made_up = []
        if rebuildable:
            made_up.append(f"{len(rebuildable)} volume(s) lost or damaged: reassemble rebuilds them from "
                           "parity, but the set can take less damage now (see the group lines)")
        if mended:
            made_up.append(f"{len(mended)} volume(s) with a damaged copy: reassemble takes each chunk from "
                           "an intact copy; copy the damaged ones again from it (see above)")
        if self.set.notes:
            made_up.append(f"{len(self.set.notes)} volume file(s) under another volume's name: reassemble "
                           f"reads each as the volume it holds, cat {self.set.reference.set_name}.??? would "
                           "not; rename them (see above)")
        return made_up

    @property
    def verdict(self):
        if self.problems:
            return UNRESTORABLE
        if self.made_up:
            # Replacements written for every lost volume make the set whole again.
            return REPLACED if self.replacements else REPAIRABLE
        return INTACT

    @property
    def exit_status(self):
        return EXIT_STATUS[self.verdict]

    def error(self):
        """The problems as one errors.Error, or None."""
        return Error("; ".join(self.problems)) if self.problems else None

    @staticmethod
    def row_status(report):
        """A row's word in the table: ok, missing, BAD, REBUILDABLE or ok-copy-bad."""
        status = "REBUILDABLE" if report.rebuilt else report.status if report.status in ("ok", "missing") \
            else "BAD"
        return "ok-copy-bad" if status == "ok" and report.damaged_copies else status

    def table(self):
        """The --verify table, its group lines, what copies made up for, and the summary line."""
        lines = [f"{'volume':>7}  {'bytes':>15}  {'chunks':>6}  status       file"]
        for r in self.rows:
            lines.append(f"{r.index:>7}  {r.length if r.length is not None else '-':>15}  "
                         f"{r.chunks if r.chunks is not None else '-':>6}  {self.row_status(r):<11}  "
                         f"{r.path or '-'}")
        lines += [self.describe_health(group) for group in sorted(self.health)]
        lines += [line for r in self.rows for line in r.damaged_copies] + self.set.notes
        if self.problems:
            verdict = f", {len(self.problems)} problem(s)"
        elif self.made_up:
            verdict = ", " + "; ".join(self.made_up)
        else:
            verdict = ", all verified"
        end = self.set.end
        lines.append(f"set '{self.set.reference.set_name}' (set id {self.set.reference.set_id}): "
                     + (f"{self.set.count} volumes, {end.total_length} bytes" if self.set.count
                        else "last volume not found") + verdict)
        return "\n".join(lines) + "\n"

    def describe_health(self, group):
        """One line on a parity group: what it lost and how much more it can lose."""
        health = self.health[group]
        indices = self.set.scheme.data_indices(group, self.set.count)
        parity_count = health.parity_count
        head = (f"group {group} (volumes {indices[0]}-{indices[-1]}, {parity_count} parity "
                f"volume{'s' if parity_count > 1 else ''}): ")
        if health.spare < 0:
            return head + (f"{health.worst} volumes lost at the same place, more than the parity can "
                           "rebuild: DATA LOST unless another copy of them is found")
        lost = "intact" if not health.worst else \
            f"{len(health.lost_chunks)} volume(s) lost or damaged, all rebuildable"
        return head + f"{lost}; can still lose {health.spare} more volume{'s' if health.spare != 1 else ''}"

    def to_json(self):
        """The verification as a JSON document (reassemble --verify --json; man/reassemble.1
        describes its fields)."""
        reference, end = self.set.reference, self.set.end
        document = {
            "set": {"name": reference.set_name, "id": reference.set_id, "volumes": self.set.count,
                    "bytes": end.total_length if self.set.count else None},
            "verdict": self.verdict,
            "exit_status": self.exit_status,
            "volumes": [{
                "volume": str(r.index),
                "parity": not isinstance(r.index, int),
                "bytes": r.length,
                "chunks": r.chunks,
                "status": self.row_status(r),
                "detail": r.status,
                "file": r.path,
                "damaged_copies": r.damaged_copies,
            } for r in self.rows],
            "groups": [self._group_json(group) for group in sorted(self.health)],
            "problems": self.problems,
            "made_up": self.made_up,
            "notes": self.set.notes,
            "replacements": self.replacements,
        }
        return json.dumps(document, indent=2) + "\n"

    def _group_json(self, group):
        health = self.health[group]
        indices = self.set.scheme.data_indices(group, self.set.count)
        return {"group": group, "data_volumes": [indices[0], indices[-1]],
                "parity_volumes": health.parity_count, "lost_volumes": len(health.lost_chunks),
                "most_lost_at_one_place": health.worst, "can_still_lose": max(health.spare, 0),
                "rebuildable": health.spare >= 0}

"""Reading a set disc by disc: asking for the disc that holds a volume, and rebuilding a lost or
damaged disc of a set with parity from the other discs of its group, inserted one at a time and
folded into the rebuilt volume in a scratch file."""

import os
import shutil
import tempfile
from dataclasses import dataclass

from .. import units
from . import chunks
from ..errors import Error
from .finder import Scan, leftovers_note, scan
from .names import VolumeKey
from .volumeset import set_label


@dataclass
class RebuiltVolume:
    """A data volume rebuilt into a scratch file, and the volume hash its parity manifests give."""
    path: str
    length: int
    volume_digest: bytes


class _AlsoLost(Exception):
    """While rebuilding: the disc of this key is lost or damaged too."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


class Discs:
    """The discs of a set, asked for on a prompter (terminal.Prompter) one at a time and read
    from the directories or drives given (re-read after each answer)."""

    def __init__(self, volume_set, found, directories=None, prompter=None, buffer=None, say=None,
                 progress=None):
        """buffer: a chunk-sized bytearray to read into; say(text): a warning line."""
        self.set = volume_set
        self.found = found
        self.directories = directories
        self.prompter = prompter
        self.buffer = buffer
        self.say = say
        self.progress = progress
        self.scratch_dirs = []

    def repairs(self):
        """Whether a lost disc or a damaged chunk is rebuilt from the group's other discs, asked
        for one at a time: disc by disc, a set with parity."""
        return bool(self.set.scheme and self.directories and self.prompter is not None)

    def ask_for(self, key, lost_allowed=True):
        """Ask until a disc holding the volume of `key` (a VolumeKey) is in place; None when the
        user says the disc is lost and the set's parity can stand in for it."""
        name = self.set.reference.set_name
        title = key.disc_title() + (f" (of {self.set.count})" if self.set.count and not key.is_parity else "")
        lost_allowed = lost_allowed and self.repairs()
        question = (f"insert {title} of set '{name}' and press Enter "
                    f"({'l if it is lost or unreadable, ' if lost_allowed else ''}q to give up): ")
        note = ""     # what the last disc was, said before asking again
        while True:
            if not self.directories or self.prompter is None:
                raise Error(self._missing_message(key))
            answer = self.prompter.ask(note + question)
            answer = answer.strip().lower() if answer is not None else "q"
            if answer in ("q", "quit"):
                raise Error(f"gave up waiting for {title} of set '{name}'"
                            + ("" if key.is_parity else self.set.rebuild_hint(key.index)))
            if answer in ("l", "lost") and lost_allowed:
                return None
            try:
                found = scan(self.directories)
            except Error as exc:
                note = f"reassemble: {exc}\n"
                continue
            mine = [v for v in found.volumes + found.parity
                    if v.manifest.set_id == self.set.reference.set_id]
            if key.is_parity:
                for volume in mine:
                    if volume.manifest.key.is_parity:
                        self.set.forget(volume.manifest.key)   # this disc's copy counts
                        self.set.add(volume)
            elif any(v.manifest.key == key for v in mine):
                # What the earlier disc held from here on is gone with it; this disc's volumes count.
                for stale in [i for i in self.set.by_index if i >= key.index]:
                    self.set.forget(VolumeKey(stale))
                for volume in mine:
                    if volume in found.volumes and volume.manifest.index >= key.index:
                        self.set.add(volume)
            if self.set.problems:
                raise Error(self.set.problems[-1])
            if any(v.manifest.key == key for v in mine):
                return self.set.volume(key)
            # Name what is new since the set was gathered (the disc just inserted, not a directory
            # of copies given beside the drive), else all (the same disc inserted again).
            known = {v.path for v in [*self.set.by_index.values(), *self.set.parity.values()]}
            new = [v for v in found.volumes + found.parity if v.path not in known] or \
                found.volumes + found.parity
            if new:
                seen = ", ".join(
                    f"{m.key.disc_title()} of set '{m.set_name}'" if m.set_id == self.set.reference.set_id
                    else f"{m.key.disc_title()} of another set {set_label(m)}"
                    for m in (v.manifest for v in new[:3]))
                note = f"reassemble: this is {seen}, not {title} of set '{name}'\n"
            else:
                note = f"reassemble: no volume found in {', '.join(self.directories)}\n"

    def rebuild(self, index):
        """Rebuild volume `index` (and any other volume of its group found lost on the way) from
        the group's other discs: {index: RebuiltVolume} for each volume rebuilt."""
        from . import parity   # numpy, at the first sum: only for sets with parity
        group = self.set.scheme.group_of(index)
        lost = {VolumeKey(index)}
        while True:
            try:
                return self._fold_group(parity, group, lost)
            except _AlsoLost as exc:
                lost.add(exc.key)
                self.say(f"{exc.key.describe()} of set '{self.set.reference.set_name}' is lost too: "
                         f"starting over to rebuild {len(lost)} volumes of group {group}")

    def _fold_group(self, parity, group, lost):
        """Fold the discs the rebuild of the `lost` keys of a group needs into scratch files,
        asking for each disc; _AlsoLost when another disc turns out lost or damaged."""
        scheme = self.set.scheme
        # Parity discs first: their manifests tell the group's data volumes, and the one asked
        # for last is still in the drive when folding starts.
        wanted = len([key for key in lost if not key.is_parity])
        chosen, entries = [], None
        for parity_index in range(1, scheme.count + 1):
            key = VolumeKey.parity(group, parity_index)
            if len(chosen) == wanted:
                break
            if key not in lost:
                volume = self._at_hand(key)
                entries = {entry.index: entry for entry in volume.manifest.data_volumes}
                chosen.append(key)
        if len(chosen) < wanted:
            raise Error(f"cannot rebuild group {group} of set '{self.set.reference.set_name}': "
                        f"{', '.join(key.describe() for key in sorted(lost, key=_parity_first))} are lost, more "
                        f"than its {scheme.count} parity volume{'s' if scheme.count > 1 else ''} can rebuild")
        indices = sorted(entries)
        row = {VolumeKey(index): r for r, index in enumerate(indices)}
        row.update({VolumeKey.parity(group, p): len(indices) + p - 1 for p in range(1, scheme.count + 1)})
        sources = list(reversed(chosen)) + [VolumeKey(index) for index in indices if VolumeKey(index) not in lost]
        targets = sorted(key for key in lost if not key.is_parity)
        scratch = self._scratch(group, [entries[key.index].length for key in targets])
        accumulator = parity.ParityAccumulator(
            [os.path.join(scratch, key.file_name(self.set.reference.set_name)) for key in targets],
            self.set.reference.chunk_size, parities=[row[key] for key in targets],
            coefficient=parity.rebuild_coefficient(parity.erasure.Code(len(indices), scheme.count),
                                                   [row[key] for key in targets],
                                                   [row[key] for key in sources]))
        try:
            for key in sources:
                self._fold_disc(accumulator, key)
            accumulator.finish()
        except BaseException:
            accumulator.discard()
            raise
        return {key.index: RebuiltVolume(path, entries[key.index].length, entries[key.index].volume_digest)
                for key, path in zip(targets, accumulator.paths)}

    def _at_hand(self, key):
        """The volume of `key` if the sources hold it now (the disc in the drive, a directory of
        copies), else the one the user inserts when asked; _AlsoLost when the user says it is
        lost."""
        try:
            found = scan(self.directories)
        except Error:
            found = Scan()
        for volume in found.volumes + found.parity:
            if volume.manifest.set_id == self.set.reference.set_id and volume.manifest.key == key:
                self.set.add(volume)
                return volume
        volume = self.ask_for(key)
        if volume is None:
            raise _AlsoLost(key)
        return volume

    def _fold_disc(self, accumulator, key):
        """Read the volume of `key` from its disc, checking every chunk, and fold it in."""
        volume = self._at_hand(key)
        manifest = volume.manifest
        self.progress.set_detail(f"rebuilding: reading {key.describe()}")
        view = memoryview(self.buffer)
        try:
            with volume.open_file() as file:
                for number in range(manifest.chunks):
                    chunk = view[:min(manifest.chunk_size, manifest.length - number * manifest.chunk_size)]
                    if chunks.read_chunk(file, number, manifest.chunk_size, chunk) != manifest.chunk_digest(number):
                        raise _AlsoLost(key)
                    accumulator.add(chunk)
        except Error:
            raise _AlsoLost(key) from None
        accumulator.end_data_volume()

    def _scratch(self, group, lengths):
        """A new scratch directory for rebuilt volumes of these lengths, after saying how much
        space they take and where; errors.Error when there is not enough."""
        where = os.environ.get("TMPDIR") or "/var/tmp"
        need = max(lengths) * len(lengths)
        try:
            info = os.statvfs(where)
            free = info.f_bavail * info.f_frsize
            path = tempfile.mkdtemp(prefix="mirrorpipe-rebuild-", dir=where)
        except OSError as exc:
            raise Error(f"cannot use {where} for the scratch space of a rebuild: {exc.strerror}; set "
                        "TMPDIR to a directory with room") from None
        if free < need:
            os.rmdir(path)
            raise Error(f"rebuilding needs {units.format_size(need)} of scratch space, and {where} has only "
                        f"{units.format_size(free)} free; set TMPDIR to a directory with more room and run again")
        self.scratch_dirs.append(path)
        self.say(f"rebuilding {len(lengths)} volume{'s' if len(lengths) > 1 else ''} of group {group} from "
                 f"its other discs, in {units.format_size(need)} of scratch space in {path} ({where} has "
                 f"{units.format_size(free)} free); discs after the lost one are asked for twice")
        return path

    def close(self):
        """Remove the scratch space of rebuilds."""
        for path in self.scratch_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.scratch_dirs = []

    def _missing_message(self, key):
        missing = self.set.describe_missing() or f"missing {key.describe()}"
        note = leftovers_note(self.found)
        return f"{missing}{'; ' + note if note else ''}; give all volumes of the set"


def _parity_first(key):
    """Parity volumes first, as messages naming lost volumes always had them."""
    return not key.is_parity, key

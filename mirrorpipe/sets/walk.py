"""The walk through a set in stream order that a restore (reader.SetReader) and a check
(verifier.SetVerifier) both take, every chunk checked against its manifest:

- without parity, volume after volume, chunk by chunk, each chunk from a copy of the volume that
  holds it intact (copies.VolumeCopies);
- with the parity volumes at hand, group by group through a parity.Rebuilder, which rebuilds
  the chunks of missing or damaged volumes from the group's other volumes;
- disc by disc, asking for the next disc when the sources (a mount point, a drive) hold only
  part of the set (discs.Discs); a lost or damaged disc of a set with parity is rebuilt from the
  other discs of its group.

What a problem does (stop the restore, or become a row of the --verify table), where the bytes
go, and what is done once a group is read, are the subclass's.
"""

import os

from .. import units
from . import manifests
from ..progress import NoProgress
from ..errors import Error
from ..stream.streams import read_full
from .copies import VolumeCopies
from .discs import Discs
from .names import VolumeKey


class DamagedChunk(Error):
    """A chunk of a volume does not match its manifest; volume_offset is where it starts."""

    def __init__(self, message, volume_offset):
        super().__init__(message)
        self.volume_offset = volume_offset


class VolumeReport:
    """How one volume fared: a row of the --verify table."""

    def __init__(self, index, path=None, length=None, chunks=None, status="missing"):
        self.index, self.path, self.length, self.chunks, self.status = index, path, length, chunks, status
        self.rebuilt = False      # lost or damaged, and rebuilt from parity
        self.damaged_copies = []  # what is damaged in a copy and intact in another (VolumeCopies.damage)


class SetWalk:
    """Reads a set in order, checking every chunk; subclasses say what becomes of it."""

    # Read every copy of every chunk, to find damaged copies another copy makes up for.
    check_every_copy = False
    # What a stream hash that does not match means for what was written.
    stream_mismatch_consequence = ""

    def __init__(self, volume_set, found, progress=None, directories=None, prompter=None, say=None):
        """directories: re-read when the next disc is needed, prompter (terminal.Prompter) asks
        for it; say(text): tells the user what was rebuilt or taken from another copy."""
        self.set = volume_set
        self.progress = progress or NoProgress()
        self.say = say or (lambda text: None)
        self.reports = {}
        self.stream_hash = manifests.new_hash()
        self.buffer = bytearray(volume_set.reference.chunk_size)
        self.discs = Discs(volume_set, found, directories, prompter, self.buffer, self.say, self.progress)
        self.rebuilt = {}             # index -> discs.RebuiltVolume, rebuilt and not yet passed on

    # What subclasses decide.

    def _write(self, piece):
        """A checked piece of the stream, in order."""

    def _problem(self, report, problem, error):
        """A volume turned out damaged or unreadable (`problem`, naming it): raise `error` to
        stop, or note it in `report` and go on."""
        raise error

    def _group_read(self, group, rebuilder, whole):
        """A group's data volumes were read (`whole`: from its first); its files close next."""
        for member in rebuilder.members[rebuilder.code.data_count:]:
            if isinstance(member.file, VolumeCopies):
                self._tell_copies(member.file, None)

    # The walk.

    def run(self):
        """Read the set from volume 1 to the last, asking for discs not at hand; the reports."""
        if self.set.has_parity() and self.set.restorable():
            return self._read_groups()
        if self.set.count and not self.set.missing():
            self.progress.set_total(self.set.end.total_length)
        index = 1
        while True:
            if index not in self.set.by_index and self.set.group_rebuildable(index):
                # Disc by disc, with the rest of this volume's group at hand (copied into a
                # directory): rebuild it, read the group's other volumes, go on with discs.
                index = self._read_group(self.set.scheme.group_of(index), index)
                if self.set.count and index > self.set.count:
                    break
                continue
            if index in self.rebuilt:
                self._pass_on_rebuilt(index)
            else:
                volume = self.set.by_index.get(index) or self.discs.ask_for(VolumeKey(index))
                try:
                    if volume is None:      # the user says the disc is lost
                        self._rebuild_from_discs(index, 0)
                    else:
                        self._read(volume)
                except DamagedChunk as exc:
                    if not self.discs.repairs():
                        raise Error(f"{exc}; nothing of it was written. Copy the volume again from a "
                                    "good disc or source" + self.set.rebuild_hint(index)) from None
                    self.say(f"{exc}: rebuilding volume {index} from the other discs of its group")
                    self._rebuild_from_discs(index, exc.volume_offset)
            if index == self.set.count:
                break
            index += 1
        self._check_stream()
        return self.reports

    def close(self):
        """Remove the scratch space of rebuilds."""
        self.discs.close()

    def _pass_on(self, piece):
        """A verified or rebuilt piece of the stream: hashed, out and counted."""
        self.stream_hash.update(piece)
        self._write(piece)
        self.progress.advance(len(piece))

    def _check_stream(self):
        """The whole stream, read or rebuilt, against the stream hash of the manifests. Its bytes
        are out already: failing is what tells the rest of the pipeline."""
        if all(r.status == "ok" or r.rebuilt for r in self.reports.values()) and \
                self.stream_hash.digest() != self.set.end.stream_digest:
            raise Error(f"the reassembled stream ({self.set.end.total_length} bytes) does not match the "
                        f"stream hash in the manifests of set '{self.set.reference.set_name}' although every "
                        "volume matches its own: the manifests were altered" + self.stream_mismatch_consequence)

    def _read(self, volume):
        """Pass on a volume at hand (every copy of it found) chunk by chunk, each chunk checked
        before it goes, and check the volume hash at its end."""
        manifest = volume.manifest
        report = self.reports[manifest.index] = VolumeReport(
            manifest.index, volume.path, manifest.length, manifest.chunks, "ok")
        self.progress.set_detail(f"volume {manifest.index}" + (f"/{self.set.count}" if self.set.count else ""))
        try:
            if manifest.key in self.set.lost:    # its data is not at hand (VolumeSet.place_data)
                raise Error(self.set.lost[manifest.key])
            copies = VolumeCopies(self.set.copies_of(manifest.key) or [volume], self.check_every_copy).open()
        except Error as exc:
            self._problem(report, str(exc), exc)
            return
        # The stream and volume hashes take each chunk once it is found intact, while it is in
        # the CPU cache: they cost no second read.
        hashes = [self.stream_hash, manifests.new_hash()]
        view = memoryview(self.buffer)
        try:
            for number, start in enumerate(range(0, manifest.length, manifest.chunk_size)):
                chunk = view[:min(manifest.chunk_size, manifest.length - start)]
                if not copies.read_chunk(number, chunk, hashes):
                    problem = copies.describe_damaged(number)
                    self._problem(report, problem, DamagedChunk(problem, start))
                    continue
                self._write(chunk)
                self.progress.advance(len(chunk))
        finally:
            self.stream_hash = hashes[0]
            copies.close()
        self._tell_copies(copies, report)
        if report.status == "ok" and hashes[1].digest() != manifest.volume_digest:
            problem = (f"{volume.label} does not match its manifest's volume hash although every chunk "
                       "does: the manifest was altered")
            self._problem(report, problem, Error(f"{problem}; the stream written up to its end cannot be trusted"))

    def _tell_copies(self, copies, report):
        """Say what the other copies of a volume made up for, and note it in its report."""
        for line in copies.damage():
            if report is not None:
                report.damaged_copies.append(line)
            self.say(line)

    # With parity: each group read through a parity.Rebuilder, which checks every chunk and
    # rebuilds what is lost.

    def _read_groups(self):
        if self.set.restorable():
            self.progress.set_total(self.set.end.total_length)
        for group in self.set.groups():
            self._read_group(group)
        self._check_stream()
        return self.reports

    def _read_group(self, group, first=None):
        """Pass on the group's data volumes from `first` on (default: all), rebuilding what is
        lost; the index after the group's last."""
        indices = self.set.group_indices(group)
        rebuilder, expected = group_rebuilder(self.set, group, indices, self.check_every_copy)
        try:
            for row, index in enumerate(indices):
                if first is None or index >= first:
                    self._read_member(rebuilder, row, index, expected.get(index))
            self._group_read(group, rebuilder, first is None)
        finally:
            for member in rebuilder.members:
                if member.file is not None:
                    member.file.close()
        return indices[-1] + 1

    def _read_member(self, rebuilder, row, index, expected_digest):
        """Pass on data volume `index` (row `row` of its group), rebuilding what is lost of it."""
        member = rebuilder.members[row]
        volume = self.set.by_index.get(index)
        report = self.reports[index] = VolumeReport(
            index, volume.path if volume else None, member.length,
            manifests.chunk_count(member.length, self.set.reference.chunk_size), "ok")
        self.progress.set_detail(f"volume {index}" + (f"/{self.set.count}" if self.set.count else ""))
        if member.file is None:
            why = self.set.lost.get(VolumeKey(index), f"volume {index} of set '{self.set.reference.set_name}' is missing")
            self.say(f"{why}; rebuilding it from parity")
        # Every chunk is checked (read, or rebuilt: by the Rebuilder) against the chunk digests of
        # a volume at hand; the volume hash is checked too, as the last check of its manifest. A
        # volume rebuilt whole has only the volume hash its parity manifests give.
        volume_hash = manifests.new_hash()

        def pass_on(piece):
            volume_hash.update(piece)
            self._pass_on(piece)

        try:
            rebuilder.rebuild_volume(row, pass_on)
            if volume_hash.digest() != (volume.manifest.volume_digest if volume else expected_digest):
                raise Error(f"{volume.label} does not match its manifest's volume hash although every chunk "
                            "does: the manifest was altered" if volume else
                            f"volume {index} as rebuilt does not match the volume hash its parity "
                            "volumes give; their manifests were altered")
        except Error as exc:
            self._problem(report, str(exc), exc)
            return
        if isinstance(member.file, VolumeCopies):
            self._tell_copies(member.file, report)
        if member.file is None:
            report.rebuilt, report.status = True, "missing: rebuilt from parity"
            self.say(f"rebuilt volume {index} ({units.format_size(member.length)}) from parity")
        elif member.bad_chunks:
            report.rebuilt = True
            report.status = f"damaged chunks at offset {damaged_offsets(rebuilder, member)}: rebuilt from parity"
            self.say(f"{volume.label}: {len(member.bad_chunks)} damaged chunk"
                     f"{'s' if len(member.bad_chunks) > 1 else ''} (at offset "
                     f"{damaged_offsets(rebuilder, member)}) rebuilt from parity")

    # Disc by disc with parity: a lost or damaged disc is rebuilt from the other discs of its
    # group into a scratch file (discs.Discs), then passed on from there.

    def _rebuild_from_discs(self, index, skip):
        """Rebuild volume `index` (and any other volume of its group found lost on the way) from
        the group's other discs, then pass it on from byte `skip` on (what came before went
        already)."""
        self.rebuilt.update(self.discs.rebuild(index))
        self._pass_on_rebuilt(index, skip)

    def _pass_on_rebuilt(self, index, skip=0):
        """Pass on the rebuilt volume `index` from its scratch file, from byte `skip` on, once its
        whole content matches the volume hash the parity manifests give."""
        rebuilt = self.rebuilt.pop(index)
        report = self.reports[index] = VolumeReport(
            index, rebuilt.path, rebuilt.length,
            manifests.chunk_count(rebuilt.length, self.set.reference.chunk_size), "rebuilt from parity")
        report.rebuilt = True
        fd = os.open(rebuilt.path, os.O_RDONLY)
        view = memoryview(self.buffer)

        def pieces(start):
            os.lseek(fd, start, os.SEEK_SET)
            for offset in range(start, rebuilt.length, len(view)):
                yield view[:read_full(fd, view[:min(len(view), rebuilt.length - offset)])]

        try:
            digest = manifests.new_hash()
            for piece in pieces(0):
                digest.update(piece)
            if digest.digest() != rebuilt.volume_digest:
                raise Error(f"volume {index} as rebuilt does not match the volume hash its parity volumes "
                            "give; their manifests were altered")
            for piece in pieces(skip):
                self._pass_on(piece)
        finally:
            os.close(fd)
        os.unlink(rebuilt.path)
        self.say(f"rebuilt volume {index} ({units.format_size(rebuilt.length)}) from parity")


def group_rebuilder(volume_set, group, indices, check_every_copy=False):
    """The parity.Rebuilder of a group (data volumes `indices`) of a set with parity, its volumes
    opened, and the volume hash of each data volume as its parity manifests record it. A restore
    reads whole groups through it; mount-image reads single chunks."""
    from . import parity   # numpy, at the first sum: only for sets with parity
    entries = {}
    parity_members = []
    for parity_index in range(1, volume_set.scheme.count + 1):
        key = VolumeKey.parity(group, parity_index)
        volume = volume_set.parity.get(key)
        if volume:
            entries.update((entry.index, entry) for entry in volume.manifest.data_volumes)
        parity_members.append(_member(volume_set, parity, volume, key,
                                      volume.manifest.length if volume else None, check_every_copy))
    data_members = []
    for index in indices:
        volume = volume_set.by_index.get(index)
        entry = entries.get(index)
        if volume and entry and entry.volume_digest != volume.manifest.volume_digest:
            raise Error(f"the parity volumes of group {group} were made from other data than "
                        f"{volume.label} (its volume hash differs from theirs); they belong to "
                        "another copy of the set: give the parity volumes of this one")
        length = volume.manifest.length if volume else entry.length if entry else \
            volume_set.end.total_length - (index - 1) * volume_set.reference.volume_size \
            if index == volume_set.count else volume_set.reference.volume_size
        data_members.append(_member(volume_set, parity, volume, VolumeKey(index), length, check_every_copy))
    longest = max(m.length for m in data_members)
    for member in parity_members:
        member.length = longest if member.length is None else member.length
    expected = {index: entry.volume_digest for index, entry in entries.items()}
    name = f"group {group} (volumes {indices[0]}-{indices[-1]}) of set '{volume_set.reference.set_name}'"
    return parity.Rebuilder(data_members, parity_members, volume_set.reference.chunk_size, name), expected


def _member(volume_set, parity, volume, key, length, check_every_copy):
    if volume is None:
        return parity.Member(name=key.describe(), length=length)
    file = None
    if key not in volume_set.lost:
        copies = volume_set.copies_of(key) or [volume]
        try:
            # One copy is read as it is (the Rebuilder checks its chunks); several through
            # VolumeCopies, which takes each chunk from a copy that holds it intact.
            file = VolumeCopies(copies, check_every_copy).open() if len(copies) > 1 \
                else volume.open_file()
        except Error as exc:
            volume_set.lost[key] = str(exc)
    return parity.Member(name=volume.label, length=length, file=file,
                         chunk_digests=volume.manifest.chunk_digests)


def damaged_offsets(rebuilder, member):
    """'0, 16777216': where the first few damaged chunks of a group member start."""
    return ", ".join(str(n * rebuilder.chunk_size) for n in sorted(member.bad_chunks)[:5])

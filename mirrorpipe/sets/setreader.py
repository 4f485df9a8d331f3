"""Reading a volume set back: every chunk checked against its manifest before it is passed on,
what is lost rebuilt from parity volumes, discs asked for one at a time.

check_before_reading() says what must stop reassemble before the first byte (missing, foreign,
truncated volumes; losses beyond what parity can rebuild) and files volume files that hold
another volume's data under that volume. SetReader streams the set, checking every chunk before
it is written, then each volume's hash at the volume's end and the stream hash at the stream's:

- without parity, volume after volume, chunk by chunk, each chunk from a copy of the volume that
  holds it intact (VolumeCopies); with --verify, every volume (and copy) to its end, collecting
  the problems instead of stopping at the first;
- with the parity volumes at hand, group by group through a parity.Rebuilder, which rebuilds
  the chunks of missing or damaged volumes from the group's other volumes;
- disc by disc, asking on /dev/tty for the next disc when the sources (a mount point, a drive)
  hold only part of the set; a lost or damaged disc of a set with parity is rebuilt from the
  other discs of its group, folded one at a time into a scratch file.
"""

import io
import os
import shutil
import tempfile

from .. import units
from . import manifests
from ..progress import NoProgress
from ..errors import Error
from ..stream.streams import read_full, write_all
from .volumes import (IO_BUFFER_SIZE, PARITY_PREFIX, Scan, set_label, leftovers_note, name_of, scan,
                      volume_key, volume_name)


class DamagedChunk(Error):
    """A chunk of a volume does not match its manifest; volume_offset is where it starts."""

    def __init__(self, message, volume_offset):
        super().__init__(message)
        self.volume_offset = volume_offset


class _AlsoLost(Exception):
    """Disc by disc, while rebuilding: the disc of this key is lost or damaged too."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


class VolumeReport:
    """How one volume fared: a row of the --verify table."""

    def __init__(self, index, path=None, length=None, chunks=None, status="missing"):
        self.index, self.path, self.length, self.chunks, self.status = index, path, length, chunks, status
        self.rebuilt = False      # lost or damaged, and rebuilt from parity
        self.damaged_copies = []  # what is damaged in a copy and intact in another (VolumeCopies.damage)


class VolumeCopies(io.RawIOBase):
    """Every copy at hand of one volume (in two directories, an ISO image and the volume file,
    ...), read chunk by chunk: each chunk from the first copy whose chunk matches the manifest.
    As a file (seek, then readinto of one whole chunk) it stands for the volume in a
    parity.Rebuilder; readinto gives nothing for a chunk no copy holds intact."""

    def __init__(self, copies, check_every_copy=False):
        """check_every_copy (--verify): read every copy of every chunk, to find damaged copies
        whose chunks another copy holds intact, not only the damage a restore meets."""
        super().__init__()
        self.copies = copies
        self.manifest = copies[0].manifest
        self.check_every_copy = check_every_copy
        self.files = []
        self.unusable = []          # why copies could not be opened
        self.damaged = {}           # chunk number -> the copies (positions) damaged there
        self.source = {}            # chunk number -> the copy it came from, when another was damaged
        self.read_errors = {}       # (copy, chunk number) -> the read error
        self.opened = []            # whether each copy could be opened
        self.position = 0
        self._spare = None          # check_every_copy: where the other copies' chunks are read

    def open(self):
        """Open every copy; errors.Error when none can be (truncated, missing, unreadable)."""
        for volume in self.copies:
            try:
                self.files.append(volume.open_file())
            except Error as exc:
                self.files.append(None)
                self.unusable.append(str(exc))
        if not any(self.files):
            self.close()
            raise Error("; ".join(self.unusable))
        for file in self.files:
            if isinstance(file, io.FileIO):
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.opened = [file is not None for file in self.files]
        return self

    def read_chunk(self, number, view, hashes=None):
        """Fill view (as long as chunk `number`) from the first copy whose chunk is intact, and
        feed it to `hashes` (a list of hashes, replaced in place by their updated copies); False
        when no copy holds the chunk intact (view then holds damaged bytes, hashes are unchanged)."""
        hashes = [] if hashes is None else hashes
        digest = self.manifest.chunk_digest(number)
        found = None
        for position, file in enumerate(self.files):
            if file is None:
                continue
            if found is not None:
                if not self.check_every_copy:
                    break
                if self._spare is None:
                    self._spare = bytearray(self.manifest.chunk_size)
                if self._load(position, number, memoryview(self._spare)[:len(view)], ()) != digest:
                    self.damaged.setdefault(number, []).append(position)
                continue
            trial = [hash_.copy() for hash_ in hashes]
            if self._load(position, number, view, trial) == digest:
                found = position
                hashes[:] = trial
            else:
                self.damaged.setdefault(number, []).append(position)
        if found is not None and number in self.damaged:
            self.source[number] = found
        return found is not None

    def _load(self, position, number, view, hashes):
        """Read chunk `number` of a copy into view, feeding each piece to `hashes` and to the
        chunk's own hash while the piece is still in the CPU cache; the chunk's digest, or None
        when the copy is short or cannot be read there."""
        file = self.files[position]
        chunk_hash = manifests.new_hash()
        got = 0
        try:
            file.seek(number * self.manifest.chunk_size)
            while got < len(view):
                count = file.readinto(view[got:got + IO_BUFFER_SIZE])
                if not count:
                    return None
                piece = view[got:got + count]
                chunk_hash.update(piece)
                for hash_ in hashes:
                    hash_.update(piece)
                got += count
        except OSError as exc:
            self.read_errors[position, number] = f"cannot read {self.copies[position].path}: {exc.strerror}"
            return None
        except Error as exc:
            self.read_errors[position, number] = str(exc)
            return None
        return chunk_hash.digest()

    def describe_damaged(self, number):
        """Why chunk `number` cannot be read from any copy: one sentence naming the volume, each
        copy and the offset."""
        manifest = self.manifest
        start = number * manifest.chunk_size
        size = min(manifest.chunk_size, manifest.length - start)
        damaged = self.damaged.get(number, [])
        first = damaged[0] if damaged else 0
        what = self.read_errors.get((first, number)) or (
            f"corrupt data in {self.copies[first].label} at offset {start} (stream offset "
            f"{manifest.offset + start}): the {units.format_size(size)} chunk there does not match "
            "its manifest")
        others = [self.copies[p].path for p in damaged[1:]]
        return what + (f"; no other copy holds it intact ({', '.join(others)} damaged there too)"
                       if others else "")

    def damage(self):
        """What the copies make up for, one line each: chunks damaged in a copy (or a copy that
        could not be used) and the copy that holds them intact."""
        read = [volume.path for volume, opened in zip(self.copies, self.opened) if opened]
        lines = [f"{reason}; {', '.join(read)} was read instead" for reason in self.unusable]
        taken = {}      # (damaged copy, intact copy) -> offsets
        for number, source in sorted(self.source.items()):
            for position in self.damaged[number]:
                taken.setdefault((position, source), []).append(number * self.manifest.chunk_size)
        for (position, source), offsets in sorted(taken.items()):
            lines.append(f"{name_of(volume_key(self.manifest))}: the chunk{'s' if len(offsets) > 1 else ''} "
                         f"at offset {', '.join(map(str, offsets[:5]))}{' ...' if len(offsets) > 5 else ''} "
                         f"{'are' if len(offsets) > 1 else 'is'} damaged in {self.copies[position].path} "
                         f"and intact in {self.copies[source].path}, which gave {'them' if len(offsets) > 1 else 'it'}")
        return lines

    # As a file, for parity.Rebuilder.

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        if whence != os.SEEK_SET or offset % self.manifest.chunk_size:
            raise ValueError("VolumeCopies reads whole chunks only")
        self.position = offset
        return offset

    def readinto(self, buffer):
        number = self.position // self.manifest.chunk_size
        if number >= self.manifest.chunks:
            return 0
        size = min(self.manifest.chunk_size, self.manifest.length - self.position)
        if len(buffer) < size or not self.read_chunk(number, memoryview(buffer).cast("B")[:size]):
            return 0
        self.position += size
        return size

    def close(self):
        for file in self.files:
            if file is not None:
                file.close()
        self.files = [None] * len(self.files)
        super().close()


class SetReader:
    """Streams a set in order, checking every chunk before it is written.

    With verify_only, nothing is written, every volume is checked to the end and the problems
    are collected in the reports instead of stopping at the first.
    """

    def __init__(self, volume_set, found, out_fd=None, progress=None, directories=None, prompter=None,
                 verify_only=False, say=None, replace=None):
        """say(text): tells the user what was rebuilt from parity (a warning line). replace(group,
        rebuilder, health): with verify_only, called for each group with parity once checked
        (reassemble --rebuild-into writes replacements for its lost volumes)."""
        self.set = volume_set
        self.found = found
        self.out_fd = out_fd
        self.progress = progress or NoProgress()
        self.directories = directories    # re-read when the next disc is needed
        self.prompter = prompter
        self.verify_only = verify_only
        self.say = say or (lambda text: None)
        self.replace = replace
        self.reports = {}
        self.parity_reports = {}      # (group, parity index) -> VolumeReport
        self.health = {}              # group -> parity.GroupHealth (with parity, --verify)
        self.stream_hash = manifests.new_hash()
        self.buffer = bytearray(volume_set.reference.chunk_size)
        self.rebuilt = {}             # index -> (scratch file, length, volume digest)
        self.scratch_dirs = []

    def run(self):
        """Read the set from volume 1 to the last, asking for discs not at hand; the reports."""
        if self.set.has_parity() and self.set.restorable():
            return self._run_with_parity()
        if self.set.count and not self.set.missing():
            self.progress.set_total(self.set.end.total_length)
        index = 1
        while True:
            if index not in self.set.by_index and self.set.group_rebuildable(index):
                # Disc by disc, with the rest of this volume's group at hand (copied into a
                # directory): rebuild it, read the group's other volumes, go on with discs.
                index = self._emit_group(self.set.scheme.group_of(index), index)
                if self.set.count and index > self.set.count:
                    break
                continue
            if index in self.rebuilt:
                self._emit_rebuilt(index)
            else:
                volume = self.set.by_index.get(index) or self._ask_for(index)
                try:
                    if volume is None:      # the user says the disc is lost
                        self._rebuild_from_discs(index, 0)
                    else:
                        self._read(volume)
                except DamagedChunk as exc:
                    if not self.repairs_from_discs():
                        raise Error(f"{exc}; nothing of it was written. Copy the volume again from a "
                                    "good disc or source" + self.set.rebuild_hint(index)) from None
                    self.say(f"{exc}: rebuilding volume {index} from the other discs of its group")
                    self._rebuild_from_discs(index, exc.volume_offset)
            if index == self.set.count:
                break
            index += 1
        self._check_stream()
        return self.reports

    def repairs_from_discs(self):
        """Disc by disc, a set with parity: a lost disc or a damaged chunk is rebuilt from the
        group's other discs, asked for one at a time."""
        return bool(self.set.scheme and self.directories and self.prompter is not None)

    def verify_present(self):
        """Check every volume found, without asking for the others (--verify of a local set)."""
        self.set.place_data()
        if self.set.has_parity():
            return self._run_with_parity()
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

    def _pass_on(self, piece):
        """A verified or rebuilt piece of the stream: hashed, out and counted."""
        self.stream_hash.update(piece)
        if self.out_fd is not None:
            write_all(self.out_fd, piece)
        self.progress.advance(len(piece))

    def _check_stream(self):
        """The whole stream, read or rebuilt, against the stream hash of the manifests. Its bytes
        are out already: failing is what tells the rest of the pipeline."""
        if all(r.status == "ok" or r.rebuilt for r in self.reports.values()) and \
                self.stream_hash.digest() != self.set.end.stream_digest:
            raise Error(f"the reassembled stream ({self.set.end.total_length} bytes) does not match the "
                        f"stream hash in the manifests of set '{self.set.reference.set_name}' although every "
                        "volume matches its own: the manifests were altered"
                        + ("" if self.verify_only else "; the stream written is not a good image: do not use it"))

    # With parity: each group read through a parity.Rebuilder, which checks every chunk and
    # rebuilds what is lost.

    def _run_with_parity(self):
        if self.set.restorable():
            self.progress.set_total(self.set.end.total_length)
        for group in self.set.groups():
            self._emit_group(group)
        self._check_stream()
        return self.reports

    def _emit_group(self, group, first=None):
        """Write the group's data volumes from `first` on (default: all), rebuilding what is lost;
        the index after the group's last."""
        indices = self.set.group_indices(group)
        rebuilder, expected = self._rebuilder(group, indices)
        try:
            for row, index in enumerate(indices):
                if first is None or index >= first:
                    self._emit_volume(rebuilder, row, index, expected.get(index))
            if self.verify_only and first is None:
                self._check_parity_volumes(rebuilder, group)
                self.health[group] = rebuilder.health()
                if self.replace:
                    self.replace(group, rebuilder, self.health[group])
            else:
                for member in rebuilder.members[len(indices):]:
                    if isinstance(member.file, VolumeCopies):
                        self._tell_copies(member.file, None)
        finally:
            for member in rebuilder.members:
                if member.file is not None:
                    member.file.close()
        return indices[-1] + 1

    def _rebuilder(self, group, indices):
        """The Rebuilder of a group (data volumes `indices`), its volumes opened, and the volume
        hash of each data volume as its parity manifests record it."""
        from . import parity   # imports numpy: only for sets with parity
        entries = {}
        parity_members = []
        for parity_index in range(1, self.set.scheme.count + 1):
            volume = self.set.parity.get((group, parity_index))
            if volume:
                entries.update((entry.index, entry) for entry in volume.manifest.data_volumes)
            parity_members.append(self._member(volume, (group, parity_index),
                                               volume.manifest.length if volume else None))
        data_members = []
        for index in indices:
            volume = self.set.by_index.get(index)
            entry = entries.get(index)
            if volume and entry and entry.volume_digest != volume.manifest.volume_digest:
                raise Error(f"the parity volumes of group {group} were made from other data than "
                            f"{volume.label} (its volume hash differs from theirs); they belong to "
                            "another copy of the set: give the parity volumes of this one")
            length = volume.manifest.length if volume else entry.length if entry else \
                self.set.end.total_length - (index - 1) * self.set.reference.volume_size \
                if index == self.set.count else self.set.reference.volume_size
            data_members.append(self._member(volume, index, length))
        longest = max(m.length for m in data_members)
        for member in parity_members:
            member.length = longest if member.length is None else member.length
        expected = {index: entry.volume_digest for index, entry in entries.items()}
        name = f"group {group} (volumes {indices[0]}-{indices[-1]}) of set '{self.set.reference.set_name}'"
        return parity.Rebuilder(data_members, parity_members, self.set.reference.chunk_size, name), expected

    def _member(self, volume, key, length):
        from . import parity
        if volume is None:
            return parity.Member(name=name_of(key), length=length)
        file = None
        if key not in self.set.lost:
            copies = self.set.copies_of(key) or [volume]
            try:
                # One copy is read as it is (the Rebuilder checks its chunks); several through
                # VolumeCopies, which takes each chunk from a copy that holds it intact.
                file = VolumeCopies(copies, self.verify_only).open() if len(copies) > 1 else volume.open_file()
            except Error as exc:
                self.set.lost[key] = str(exc)
        return parity.Member(name=volume.label, length=length, file=file,
                             chunk_digests=volume.manifest.chunk_digests)

    def _emit_volume(self, rebuilder, row, index, expected_digest):
        """Write data volume `index` (row `row` of its group), rebuilding what is lost of it."""
        member = rebuilder.members[row]
        volume = self.set.by_index.get(index)
        report = self.reports[index] = VolumeReport(
            index, volume.path if volume else None, member.length,
            manifests.chunk_count(member.length, self.set.reference.chunk_size), "ok")
        self.progress.set_detail(f"volume {index}" + (f"/{self.set.count}" if self.set.count else ""))
        if member.file is None:
            why = self.set.lost.get(index, f"volume {index} of set '{self.set.reference.set_name}' is missing")
            self.say(f"{why}; rebuilding it from parity")
        # Every chunk is checked (read, or rebuilt: by the Rebuilder) against the chunk digests of
        # a volume at hand; the volume hash is checked too, as the last check of its manifest. A
        # volume rebuilt whole has only the volume hash its parity manifests give.
        volume_hash = manifests.new_hash()

        def emit(piece):
            volume_hash.update(piece)
            self._pass_on(piece)

        try:
            rebuilder.rebuild_volume(row, emit)
            if volume_hash.digest() != (volume.manifest.volume_digest if volume else expected_digest):
                raise Error(f"{volume.label} does not match its manifest's volume hash although every chunk "
                            "does: the manifest was altered" if volume else
                            f"volume {index} as rebuilt does not match the volume hash its parity "
                            "volumes give; their manifests were altered")
        except Error as exc:
            if not self.verify_only:
                raise
            report.status = str(exc)
            return
        if isinstance(member.file, VolumeCopies):
            self._tell_copies(member.file, report)
        if member.file is None:
            report.rebuilt, report.status = True, "missing: rebuilt from parity"
            self.say(f"rebuilt volume {index} ({units.format_size(member.length)}) from parity")
        elif member.bad_chunks:
            report.rebuilt = True
            report.status = f"damaged chunks at offset {_offsets(rebuilder, member)}: rebuilt from parity"
            self.say(f"{volume.label}: {len(member.bad_chunks)} damaged chunk"
                     f"{'s' if len(member.bad_chunks) > 1 else ''} (at offset {_offsets(rebuilder, member)}) "
                     "rebuilt from parity")

    def _check_parity_volumes(self, rebuilder, group):
        """--verify: read every chunk of the group's parity volumes; a report for each."""
        data_rows = rebuilder.code.data_count
        for parity_index in range(1, self.set.scheme.count + 1):
            row = data_rows + parity_index - 1
            member = rebuilder.members[row]
            volume = self.set.parity.get((group, parity_index))
            report = self.parity_reports[(group, parity_index)] = VolumeReport(
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
                report.status = self.set.lost.get((group, parity_index), "unreadable")
            elif member.bad_chunks:
                report.status = f"damaged chunks at offset {_offsets(rebuilder, member)}"

    def _read(self, volume):
        """Write a volume at hand (every copy of it found) chunk by chunk, each chunk checked
        before it is written, and check the volume hash at its end."""
        manifest = volume.manifest
        report = self.reports[manifest.index] = VolumeReport(
            manifest.index, volume.path, manifest.length, manifest.chunks, "ok")
        self.progress.set_detail(f"volume {manifest.index}" + (f"/{self.set.count}" if self.set.count else ""))
        try:
            if manifest.index in self.set.lost:    # its data is not at hand (VolumeSet.place_data)
                raise Error(self.set.lost[manifest.index])
            copies = VolumeCopies(self.set.copies_of(manifest.index) or [volume], self.verify_only).open()
        except Error as exc:
            if not self.verify_only:
                raise
            report.status = str(exc)
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
                    if not self.verify_only:
                        raise DamagedChunk(problem, start)
                    if report.status == "ok":
                        report.status = problem
                    continue
                if self.out_fd is not None:
                    write_all(self.out_fd, chunk)
                self.progress.advance(len(chunk))
        finally:
            self.stream_hash = hashes[0]
            copies.close()
        self._tell_copies(copies, report)
        if report.status == "ok" and hashes[1].digest() != manifest.volume_digest:
            problem = (f"{volume.label} does not match its manifest's volume hash although every chunk "
                       "does: the manifest was altered")
            if not self.verify_only:
                raise Error(f"{problem}; the stream written up to its end cannot be trusted")
            report.status = problem

    def _tell_copies(self, copies, report):
        """Say what the other copies of a volume made up for; with --verify, note it in its report."""
        for line in copies.damage():
            if report is not None:
                report.damaged_copies.append(line)
            self.say(line)

    def _ask_for(self, key, lost_allowed=True):
        """Disc by disc: ask on the terminal until a disc holding volume `key` (an index, or
        (group, parity index) for a parity disc) is in place; None when the user says the disc is
        lost and the set's parity can stand in for it."""
        name = self.set.reference.set_name
        if isinstance(key, tuple):
            title = f"parity disc {key[1]} of group {key[0]}"
        else:
            title = f"disc {key}" + (f" (of {self.set.count})" if self.set.count else "")
        lost_allowed = lost_allowed and self.repairs_from_discs()
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
                            + ("" if isinstance(key, tuple) else self.set.rebuild_hint(key)))
            if answer in ("l", "lost") and lost_allowed:
                return None
            try:
                found = scan(self.directories)
            except Error as exc:
                note = f"reassemble: {exc}\n"
                continue
            mine = [v for v in found.volumes + found.parity
                    if v.manifest.set_id == self.set.reference.set_id]
            if isinstance(key, tuple):
                for volume in mine:
                    if isinstance(volume.manifest, manifests.ParityManifest):
                        self.set.forget(volume_key(volume.manifest))   # this disc's copy counts
                        self.set.add(volume)
            elif any(volume_key(v.manifest) == key for v in mine):
                # What the earlier disc held from here on is gone with it; this disc's volumes count.
                for stale in [i for i in self.set.by_index if i >= key]:
                    self.set.forget(stale)
                for volume in mine:
                    if volume in found.volumes and volume.manifest.index >= key:
                        self.set.add(volume)
            if self.set.problems:
                raise Error(self.set.problems[-1])
            held = self.set.parity if isinstance(key, tuple) else self.set.by_index
            if any(volume_key(v.manifest) == key for v in mine):
                return held[key]
            # Name what is new since the set was gathered (the disc just inserted, not a directory
            # of copies given beside the drive), else all (the same disc inserted again).
            known = {v.path for v in [*self.set.by_index.values(), *self.set.parity.values()]}
            new = [v for v in found.volumes + found.parity if v.path not in known] or \
                found.volumes + found.parity
            if new:
                seen = ", ".join(
                    f"{m.disc_title} of set '{m.set_name}'" if m.set_id == self.set.reference.set_id
                    else f"{m.disc_title} of another set {set_label(m)}"
                    for m in (v.manifest for v in new[:3]))
                note = f"reassemble: this is {seen}, not {title} of set '{name}'\n"
            else:
                note = f"reassemble: no volume found in {', '.join(self.directories)}\n"

    # Disc by disc with parity: a lost or damaged disc is rebuilt from the other discs of its
    # group, inserted one at a time and folded into the rebuilt volume in a scratch file.

    def _rebuild_from_discs(self, index, skip):
        """Rebuild volume `index` (and any other volume of its group found lost on the way) from
        the group's other discs, then write it from byte `skip` on (what came before was
        written already)."""
        from . import parity   # imports numpy: only for sets with parity
        group = self.set.scheme.group_of(index)
        lost = {index}
        while True:
            try:
                self._fold_group(parity, group, lost)
                break
            except _AlsoLost as exc:
                lost.add(exc.key)
                self.say(f"{name_of(exc.key)} of set '{self.set.reference.set_name}' is lost too: "
                         f"starting over to rebuild {len(lost)} volumes of group {group}")
        self._emit_rebuilt(index, skip)

    def _fold_group(self, parity, group, lost):
        """Fold the discs the rebuild of the `lost` keys of a group needs into scratch files
        (self.rebuilt: index -> (path, length, expected volume digest)), asking for each disc;
        _AlsoLost when another disc turns out lost or damaged."""
        scheme = self.set.scheme
        # Parity discs first: their manifests tell the group's data volumes, and the one asked
        # for last is still in the drive when folding starts.
        wanted = len([key for key in lost if not isinstance(key, tuple)])
        chosen, entries = [], None
        for parity_index in range(1, scheme.count + 1):
            key = (group, parity_index)
            if len(chosen) == wanted:
                break
            if key not in lost:
                volume = self._at_hand(key)
                entries = {entry.index: entry for entry in volume.manifest.data_volumes}
                chosen.append(key)
        if len(chosen) < wanted:
            raise Error(f"cannot rebuild group {group} of set '{self.set.reference.set_name}': "
                        f"{_join_names(lost)} are lost, more than its {scheme.count} parity "
                        f"volume{'s' if scheme.count > 1 else ''} can rebuild")
        indices = sorted(entries)
        row = {index: r for r, index in enumerate(indices)}
        row.update({(group, p): len(indices) + p - 1 for p in range(1, scheme.count + 1)})
        sources = list(reversed(chosen)) + [index for index in indices if index not in lost]
        targets = sorted(key for key in lost if not isinstance(key, tuple))
        scratch = self._scratch(group, [entries[index].length for index in targets])
        accumulator = parity.ParityAccumulator(
            [os.path.join(scratch, volume_name(self.set.reference.set_name, index)) for index in targets],
            self.set.reference.chunk_size, parities=[row[index] for index in targets],
            coefficient=parity.rebuild_coefficient(parity.erasure.Code(len(indices), scheme.count),
                                                   [row[index] for index in targets],
                                                   [row[key] for key in sources]))
        try:
            for key in sources:
                self._fold_disc(accumulator, key)
            accumulator.finish()
        except BaseException:
            accumulator.discard()
            raise
        for index, path in zip(targets, accumulator.paths):
            self.rebuilt[index] = (path, entries[index].length, entries[index].volume_digest)

    def _at_hand(self, key):
        """The volume of `key` if the sources hold it now (the disc in the drive, a directory of
        copies), else the one the user inserts when asked; _AlsoLost when the user says it is
        lost."""
        try:
            found = scan(self.directories)
        except Error:
            found = Scan()
        for volume in found.volumes + found.parity:
            if volume.manifest.set_id == self.set.reference.set_id and volume_key(volume.manifest) == key:
                self.set.add(volume)
                return volume
        volume = self._ask_for(key)
        if volume is None:
            raise _AlsoLost(key)
        return volume

    def _fold_disc(self, accumulator, key):
        """Read the volume of `key` from its disc, checking every chunk, and fold it in."""
        volume = self._at_hand(key)
        manifest = volume.manifest
        self.progress.set_detail(f"rebuilding: reading {name_of(key)}")
        view = memoryview(self.buffer)
        try:
            with volume.open_file() as file:
                for number in range(manifest.chunks):
                    size = min(manifest.chunk_size, manifest.length - number * manifest.chunk_size)
                    got = file.readinto(view[:size])
                    if got != size or manifests.digest_of(view[:size]) != manifest.chunk_digest(number):
                        raise _AlsoLost(key)
                    accumulator.add(view[:size])
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

    def _emit_rebuilt(self, index, skip=0):
        """Write the rebuilt volume `index` from its scratch file, from byte `skip` on, once its
        whole content matches the volume hash the parity manifests give."""
        path, length, expected = self.rebuilt.pop(index)
        report = self.reports[index] = VolumeReport(
            index, path, length, manifests.chunk_count(length, self.set.reference.chunk_size),
            "rebuilt from parity")
        report.rebuilt = True
        fd = os.open(path, os.O_RDONLY)
        view = memoryview(self.buffer)

        def pieces(start):
            os.lseek(fd, start, os.SEEK_SET)
            for offset in range(start, length, len(view)):
                yield view[:read_full(fd, view[:min(len(view), length - offset)])]

        try:
            digest = manifests.new_hash()
            for piece in pieces(0):
                digest.update(piece)
            if digest.digest() != expected:
                raise Error(f"volume {index} as rebuilt does not match the volume hash its parity volumes "
                            "give; their manifests were altered")
            for piece in pieces(skip):
                self._pass_on(piece)
        finally:
            os.close(fd)
        os.unlink(path)
        self.say(f"rebuilt volume {index} ({units.format_size(length)}) from parity")

    def close(self):
        """Remove the scratch space of rebuilds."""
        for path in self.scratch_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.scratch_dirs = []

    def _missing_message(self, key):
        missing = self.set.describe_missing() or f"missing {name_of(key)}"
        note = leftovers_note(self.found)
        return f"{missing}{'; ' + note if note else ''}; give all volumes of the set"


def _join_names(keys):
    return ", ".join(name_of(key) for key in sorted(keys, key=str))


def _offsets(rebuilder, member):
    """'0, 16777216': where the first few damaged chunks of a group member start."""
    return ", ".join(str(n * rebuilder.chunk_size) for n in sorted(member.bad_chunks)[:5])


def check_before_reading(volume_set, found, disc_by_disc):
    """Problems that must stop reassemble before the first byte, as one message, or None.

    Without disc-by-disc reading, a set must be complete, or its losses within what its parity
    volumes can rebuild; either way it must be one set."""
    problems = list(volume_set.problems)
    if not disc_by_disc:
        missing = volume_set.describe_missing()
        if missing and not volume_set.has_parity():
            note = leftovers_note(found)
            if volume_set.scheme and not volume_set.parity:
                note = "; ".join(filter(None, [note, parity_note(volume_set)]))
            problems.append(missing + (f" ({note})" if note else ""))
        else:
            # Check every file up front, so that a truncated last volume or swapped volume files
            # are reported (or set right) in seconds.
            volume_set.place_data()
            volume_set.open_all()
            unrebuildable = volume_set.unrebuildable() if volume_set.has_parity() else []
            if unrebuildable or not volume_set.has_parity():
                problems += [missing] if missing else []
                problems += list(volume_set.lost.values()) + unrebuildable
    return "; ".join(problems) or None


def parity_note(volume_set):
    scheme = volume_set.scheme
    return (f"the set has {scheme.count} parity volume{'s' if scheme.count > 1 else ''} per group of "
            f"{scheme.group_size} ({volume_set.reference.set_name}.{PARITY_PREFIX}001-1 ...), which "
            "can rebuild lost volumes: give them too")

"""Reading a volume set back: every chunk checked against its manifest before it is passed on,
what is lost rebuilt from parity volumes, discs asked for one at a time.

check_before_reading() says what must stop reassemble before the first byte (missing, foreign,
truncated volumes; losses beyond what parity can rebuild). SetReader streams the set:

- without parity, volume after volume, chunk by chunk; with --verify, every volume to its end,
  collecting the problems instead of stopping at the first;
- with the parity volumes at hand, group by group through a parity.Rebuilder, which rebuilds
  the chunks of missing or damaged volumes from the group's other volumes;
- disc by disc, asking on /dev/tty for the next disc when the sources (a mount point, a drive)
  hold only part of the set; a lost or damaged disc of a set with parity is rebuilt from the
  other discs of its group, folded one at a time into a scratch file.
"""

import os
import shutil
import tempfile

from . import cli, manifests
from .errors import Error
from .streams import read_full, write_all
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


class SetReader:
    """Streams a set in order, checking every chunk before it is written.

    With verify_only, nothing is written, every volume is checked to the end and the problems
    are collected in the reports instead of stopping at the first.
    """

    def __init__(self, volume_set, found, out_fd=None, progress=None, directories=None, tty=None,
                 verify_only=False, say=None, replace=None):
        """say(text): tells the user what was rebuilt from parity (a warning line). replace(group,
        rebuilder, health): with verify_only, called for each group with parity once checked
        (reassemble --rebuild-into writes replacements for its lost volumes)."""
        self.set = volume_set
        self.found = found
        self.out_fd = out_fd
        self.progress = progress or cli.NoProgress()
        self.directories = directories    # re-read when the next disc is needed
        self.tty = tty
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
        if self.verify_only:
            self._check_stream()
        return self.reports

    def repairs_from_discs(self):
        """Disc by disc, a set with parity: a lost disc or a damaged chunk is rebuilt from the
        group's other discs, asked for one at a time."""
        return bool(self.set.scheme and self.directories and self.tty is not None)

    def verify_present(self):
        """Check every volume found, without asking for the others (--verify of a local set)."""
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
        """A verified or rebuilt piece of the stream: out, counted, and with --verify hashed."""
        if self.verify_only:
            self.stream_hash.update(piece)
        if self.out_fd is not None:
            write_all(self.out_fd, piece)
        self.progress.advance(len(piece))

    def _check_stream(self):
        """--verify: the whole stream, read or rebuilt, against the stream hash of the manifests."""
        if all(r.status == "ok" or r.rebuilt for r in self.reports.values()) and \
                self.stream_hash.digest() != self.set.end.stream_digest:
            raise Error("the reassembled stream does not match the stream hash of the last manifest; "
                        "the manifests were altered")

    # With parity: each group read through a parity.Rebuilder, which checks every chunk and
    # rebuilds what is lost.

    def _run_with_parity(self):
        if self.set.restorable():
            self.progress.set_total(self.set.end.total_length)
        for group in self.set.groups():
            self._emit_group(group)
        if self.verify_only:
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
            try:
                file = volume.open_file()
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
        # Chunks rebuilt for a volume at hand are checked against its chunk digests (by the
        # Rebuilder); a volume rebuilt whole has only the volume hash its parity manifests give.
        volume_hash = manifests.new_hash() if member.file is None else None

        def emit(piece):
            if volume_hash:
                volume_hash.update(piece)
            self._pass_on(piece)

        try:
            rebuilder.rebuild_volume(row, emit)
            if volume_hash and volume_hash.digest() != expected_digest:
                raise Error(f"volume {index} as rebuilt does not match the volume hash its parity "
                            "volumes give; their manifests were altered")
        except Error as exc:
            if not self.verify_only:
                raise
            report.status = str(exc)
            return
        if member.file is None:
            report.rebuilt, report.status = True, "missing: rebuilt from parity"
            self.say(f"rebuilt volume {index} ({cli.format_size(member.length)}) from parity")
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
            if member.file is None:
                report.status = self.set.lost.get((group, parity_index), "unreadable")
            elif member.bad_chunks:
                report.status = f"damaged chunks at offset {_offsets(rebuilder, member)}"

    def _read(self, volume):
        manifest = volume.manifest
        report = self.reports[manifest.index] = VolumeReport(
            manifest.index, volume.path, manifest.length, manifest.chunks, "ok")
        self.progress.set_detail(f"volume {manifest.index}" + (f"/{self.set.count}" if self.set.count else ""))
        try:
            fd = volume.open_checked()
        except Error as exc:
            if not self.verify_only:
                raise
            report.status = str(exc)
            return
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        # The stream and volume hashes repeat what the chunk hashes prove; only --verify checks them.
        hashes = [self.stream_hash, manifests.new_hash()] if self.verify_only else []
        try:
            for number, start in enumerate(range(0, manifest.length, manifest.chunk_size)):
                want = min(manifest.chunk_size, manifest.length - start)
                got, digest = _load_chunk(fd, self.buffer, want, hashes)
                if got != want or digest != manifest.chunk_digest(number):
                    problem = (f"corrupt data in volume {manifest.index} ({volume.path}) at offset "
                               f"{start} (stream offset {manifest.offset + start}): the "
                               f"{cli.format_size(want)} chunk there does not match its manifest")
                    if not self.verify_only:
                        raise DamagedChunk(problem, start)
                    if report.status == "ok":
                        report.status = problem
                    continue
                if self.out_fd is not None:
                    write_all(self.out_fd, memoryview(self.buffer)[:got])
                self.progress.advance(got)
        finally:
            os.close(fd)
        if self.verify_only and report.status == "ok" and hashes[1].digest() != manifest.volume_digest:
            report.status = (f"volume {manifest.index} ({volume.path}) does not match its manifest's "
                             "volume hash although every chunk does; the manifest was altered")

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
            if not self.directories or self.tty is None:
                raise Error(self._missing_message(key))
            answer = cli.ask(note + question, tty=self.tty)
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
                        self.set.parity.pop(volume_key(volume.manifest), None)   # this disc's copy counts
                        self.set.add(volume)
            elif any(volume_key(v.manifest) == key for v in mine):
                # What the earlier disc held from here on is gone with it; this disc's volumes count.
                for stale in [i for i in self.set.by_index if i >= key]:
                    del self.set.by_index[stale]
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
            raise Error(f"rebuilding needs {cli.format_size(need)} of scratch space, and {where} has only "
                        f"{cli.format_size(free)} free; set TMPDIR to a directory with more room and run again")
        self.scratch_dirs.append(path)
        self.say(f"rebuilding {len(lengths)} volume{'s' if len(lengths) > 1 else ''} of group {group} from "
                 f"its other discs, in {cli.format_size(need)} of scratch space in {path} ({where} has "
                 f"{cli.format_size(free)} free); discs after the lost one are asked for twice")
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
        self.say(f"rebuilt volume {index} ({cli.format_size(length)}) from parity")

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


def _load_chunk(fd, buffer, size, hashes):
    """Read a chunk into buffer, feeding each piece to `hashes` and to the chunk's own hash while
    the piece is still in the CPU cache; (bytes read, chunk digest).

    With --verify, the stream and volume hashes (in `hashes`) take every chunk, good or bad; they
    are compared only when every chunk was good."""
    view = memoryview(buffer)
    chunk_hash = manifests.new_hash()
    got = 0
    while got < size:
        n = read_full(fd, view[got:min(size, got + IO_BUFFER_SIZE)])
        if n == 0:
            break
        piece = view[got:got + n]
        chunk_hash.update(piece)
        for hash_ in hashes:
            hash_.update(piece)
        got += n
    return got, chunk_hash.digest()


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
            # Check every file up front, so a truncated last volume is reported in seconds.
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

"""A set as found and checked: VolumeSet holds the volumes of one set (data volumes by index,
parity volumes, and what is said of any volume, by VolumeKey) and tells what is wrong with them
as a whole (another set's volumes, disagreeing manifests, missing volumes, files that hold another
volume's data) and what parity can rebuild; gather() makes one of what finder.scan() found.
reader.py and verifier.py read a set back.
"""

import os
import stat

from .. import units
from . import manifests
from ..errors import Error
from ..stream.streams import read_full
from .finder import VolumeFile, leftovers_note
from .names import VolumeKey, describe_indices


def set_label(manifest):
    """How messages name a set: 'pc1' (set id 0123...)."""
    return f"'{manifest.set_name}' (set id {manifest.set_id})"


class VolumeSet:
    """The volumes of one set found so far: data volumes by index, parity volumes by VolumeKey,
    and what is wrong with them as a whole."""

    def __init__(self, first):
        self.reference = first
        self.by_index = {}
        self.parity = {}          # VolumeKey of a parity volume -> parity volume
        self.last = None          # the last data volume's manifest
        self.last_group = None    # a parity manifest of the last group (knows the end too)
        self.scheme = first.parity  # manifests.ParityScheme, or None for a set without parity
        self.lost = {}            # VolumeKey -> why a found volume is unusable
        self.problems = []
        self.copies = {}          # VolumeKey -> other copies of its volume (same manifest, another file)
        self.notes = []           # what the user should know but need not stop for (place_data)

    @property
    def end(self):
        """A manifest that says where the stream ends (total_length, volume_count,
        stream_digest): the last data volume's, else a parity manifest of the last group."""
        return self.last or self.last_group

    @property
    def count(self):
        return self.end.volume_count if self.end else None

    def add(self, volume):
        """Take a volume of this set; a problem is recorded for one that does not fit."""
        mine, theirs = self.reference, volume.manifest
        if theirs.set_id != mine.set_id:
            self.problems.append(
                f"{volume.path} is {theirs.key.describe()} of another set {set_label(theirs)}, not of "
                f"the set {set_label(mine)}; remove it")
            return
        scheme = theirs.parity
        if (theirs.volume_size, theirs.chunk_size, theirs.set_name) != \
                (mine.volume_size, mine.chunk_size, mine.set_name) or \
                (scheme and self.scheme and scheme != self.scheme):
            self.problems.append(f"{volume.manifest_path} disagrees with the other manifests of its "
                                 "set (volume or chunk size, set name, parity); it was altered: remove it")
            return
        self.scheme = self.scheme or scheme
        if theirs.key.is_parity:
            self._add_parity(volume)
            return
        known = self.by_index.get(theirs.index)
        if known:
            if _content(known.manifest) != _content(theirs):
                self.problems.append(
                    f"two different volumes {theirs.index} of set '{mine.set_name}': {known.path} and "
                    f"{volume.path} (different content); keep the right one and remove the other")
                return
            self._add_copy(theirs.key, volume)
            return
        self.by_index[theirs.index] = volume
        if theirs.last:
            if self.last and self.last.index != theirs.index:
                self.problems.append(f"two last volumes ({self.last.index} and {theirs.index}) in set "
                                     f"'{mine.set_name}'; the manifests were altered")
            self.last = theirs
            self._check_end()

    def _add_copy(self, key, volume):
        """Another copy of a volume already found (a second directory, its ISO image): reading
        takes each chunk from a copy whose chunk is intact. The same file found twice is no copy."""
        if all(os.path.realpath(volume.path) != os.path.realpath(known.path) for known in self.copies_of(key)):
            self.copies.setdefault(key, []).append(volume)

    def _slot(self, key):
        """The table that files the volume of `key`, and its place there."""
        return (self.parity, key) if key.is_parity else (self.by_index, key.index)

    def volume(self, key):
        """The volume of `key` (its first copy found), or None."""
        table, place = self._slot(key)
        return table.get(place)

    def copies_of(self, key):
        """Every copy found of the volume of `key`, the first found first."""
        known = self.volume(key)
        return ([known] if known else []) + self.copies.get(key, [])

    def forget(self, key):
        """Disc by disc: the volume of `key` and its copies are no longer at hand."""
        table, place = self._slot(key)
        table.pop(place, None)
        self.copies.pop(key, None)

    def _check_end(self):
        """The last data volume and the last group's parity volumes must agree on the end."""
        if self.last and self.last_group and \
                (self.last.total_length, self.last.volume_count, self.last.stream_digest) != \
                (self.last_group.total_length, self.last_group.volume_count, self.last_group.stream_digest):
            self.problems.append(f"the last volume {self.last.index} and the parity volumes of the last "
                                 f"group of set '{self.reference.set_name}' disagree on the stream's "
                                 "length, volume count or hash; the manifests were altered")

    def _add_parity(self, volume):
        manifest = volume.manifest
        key = manifest.key
        known = self.parity.get(key)
        if known:
            if _content(known.manifest) != _content(manifest):
                self.problems.append(
                    f"two different parity volumes {manifest.parity_index} of group {manifest.group}: "
                    f"{known.path} and {volume.path}; keep the right one and remove the other")
                return
            self._add_copy(key, volume)
            return
        self.parity[key] = volume
        if manifest.last_group:
            self.last_group = manifest
        self._check_end()

    def missing(self):
        """Indices absent below the last volume (or below the highest found without it)."""
        top = self.count or max(self.by_index, default=0)
        return [index for index in range(1, top + 1) if index not in self.by_index]

    def describe_missing(self):
        """'missing volumes 3, 5 of 7' / 'no last volume (...)', or '' when complete."""
        parts = []
        missing = self.missing()
        if self.count:
            extra = [index for index in self.by_index if index > self.count]
            if extra:
                parts.append(f"volumes {describe_indices(extra)} lie beyond the last volume "
                             f"{self.count}; the manifests were altered")
        if missing:
            noun = "volume" if len(missing) == 1 else "volumes"
            of = f" of {self.count}" if self.count else ""
            parts.append(f"missing {noun} {describe_indices(missing)}{of} of set '{self.reference.set_name}'")
        if not self.count:
            parts.append(f"no last volume of set '{self.reference.set_name}' (found "
                         f"{describe_indices(self.by_index)}): the rest of the set is missing or "
                         "split-span did not finish")
        return "; ".join(parts)

    # Parity groups

    def has_parity(self):
        return bool(self.parity) and self.count is not None

    def groups(self):
        return range(1, self.scheme.group_of(self.count) + 1) if self.has_parity() else range(0)

    def group_indices(self, group):
        """The data volume indices of a group: from the set's volume count, else from a parity
        manifest of the group; None when neither is known."""
        if self.count:
            return self.scheme.data_indices(group, self.count)
        for key, volume in sorted(self.parity.items()):
            if key.group == group:
                return [entry.index for entry in volume.manifest.data_volumes]
        return None

    def group_rebuildable(self, index):
        """Whether data volume `index`, not at hand, can be rebuilt from the rest of its group at
        hand (disc by disc: the group copied into a directory)."""
        if not self.scheme or not self.parity:
            return False
        group = self.scheme.group_of(index)
        indices = self.group_indices(group)
        if not indices:
            return False
        lost = [i for i in indices if i not in self.by_index or VolumeKey(i) in self.lost]
        return len(lost) <= len(self.usable_parity(group))

    def rebuild_hint(self, index):
        """Disc by disc, volume `index` is lost or damaged: how to rebuild it from parity (which
        discs, how much scratch space, where), or '' for a set without parity."""
        if not self.scheme:
            return ""
        group = self.scheme.group_of(index)
        indices = self.group_indices(group) or self.scheme.data_indices(group)
        where = os.environ.get("TMPDIR") or "/var/tmp"
        try:
            info = os.statvfs(where)
            free = f", which has {units.format_size(info.f_bavail * info.f_frsize)} free"
        except OSError:
            free = ""
        return (f". The set has parity: run reassemble again and answer l when it asks for disc "
                f"{index}; it rebuilds volume {index} from the other discs of group {group} (data discs "
                f"{indices[0]}-{indices[-1]} and a parity disc of group {group}), which it asks for, in "
                f"{units.format_size(self.reference.volume_size)} of scratch space in {where} (TMPDIR)"
                f"{free}. Or copy those discs' volumes into one directory and give it with the drive")

    def usable_data(self, group):
        return [i for i in self.scheme.data_indices(group, self.count)
                if i in self.by_index and VolumeKey(i) not in self.lost]

    def usable_parity(self, group):
        return [p for p in range(1, self.scheme.count + 1)
                if (key := VolumeKey.parity(group, p)) in self.parity and key not in self.lost]

    def unrebuildable(self):
        """'group 1 (volumes 1-7) lost 3 data volumes (...) ...' for each group that lost more
        data volumes than it has parity volumes left; [] when parity can rebuild all losses."""
        problems = []
        for group in self.groups():
            indices = self.scheme.data_indices(group, self.count)
            lost = [i for i in indices if i not in self.usable_data(group)]
            parity = self.usable_parity(group)
            if len(lost) > len(parity):
                problems.append(
                    f"group {group} (volumes {indices[0]}-{indices[-1]}) lost {len(lost)} data "
                    f"volume{'s' if len(lost) > 1 else ''} ({describe_indices(lost)}) and has "
                    f"{len(parity)} of its {self.scheme.count} parity volumes: they cannot be "
                    f"rebuilt; find {len(lost) - len(parity)} more of the group's volumes (data or parity)")
        return problems

    def restorable(self):
        """Whether what is at hand gives the whole stream, rebuilding from parity if need be."""
        if not self.count:
            return False
        if not self.has_parity():
            return not self.missing() and not self.lost
        return not self.unrebuildable()

    def keys(self):
        """The keys of the volumes found: data volumes in order, then parity volumes."""
        return [*(VolumeKey(index) for index in sorted(self.by_index)), *sorted(self.parity)]

    def open_all(self):
        """Check that every volume found can be opened and has its length (one copy of it at
        least); a volume that cannot is set aside in self.lost, with the reason."""
        for key in self.keys():
            reasons = []
            for volume in self.copies_of(key):
                try:
                    os.close(volume.open_checked())
                    break
                except Error as exc:
                    reasons.append(str(exc))
            else:
                self.lost.setdefault(key, "; ".join(reasons))

    def place_data(self):
        """Find volume files that hold another volume's data (files renamed or swapped, a volume
        beside the wrong manifest), name each in self.notes and file it under the volume whose
        data it holds; a volume whose data no file holds is set aside in self.lost.

        A file holds the data of the volume whose manifest gives its length and the digest of
        its first chunk: one chunk read per volume file, before the first byte is written. A first
        chunk that several volumes share (zeros in a raw stream) tells nothing: such a file stays
        where it is, checked chunk by chunk as it is read."""
        first = {}     # (length, digest of the first chunk) -> keys of the manifests that give them
        for key in self.keys():
            manifest = self.copies_of(key)[0].manifest
            if manifest.length:
                first.setdefault((manifest.length, manifest.chunk_digest(0)), []).append(key)
        own, moved, misplaced = {}, {}, {}
        buffer = bytearray(self.reference.chunk_size)
        for key in self.keys():
            for volume in self.copies_of(key):
                held = _held_by(volume, first, buffer)
                if held is None or held == key:
                    own.setdefault(key, []).append(volume)
                    continue
                note = (f"{volume.path} holds the data of {held.describe()} (its manifest says "
                        f"{key.describe()}): the files were renamed or swapped")
                self.notes.append(note)
                misplaced.setdefault(key, note)
                right = self.copies_of(held)[0]
                moved.setdefault(held, []).append(VolumeFile(right.manifest, right.manifest_path, volume.path))
        for key in self.keys():
            holders = own.get(key, []) + moved.get(key, [])
            if not holders:
                self.lost[key] = f"{misplaced[key]}; no file given holds the data of {key.describe()}: give it"
                continue
            table, place = self._slot(key)
            table[place] = holders[0]
            self.copies[key] = holders[1:]


def gather(found):
    """The one set the scanned sources hold, as a VolumeSet (its problems recorded in it)."""
    if not found.volumes and not found.parity:
        note = leftovers_note(found)
        raise Error(f"no finished volume found{f' ({note})' if note else ''}; give the directories or "
                    "files of a set split-span made")
    # The set most volumes belong to is the one wanted; the others are intruders.
    every = found.volumes + found.parity
    counts = {}
    for volume in every:
        counts[volume.manifest.set_id] = counts.get(volume.manifest.set_id, 0) + 1
    main_id = max(counts, key=counts.get)
    ordered = sorted(every, key=lambda v: (v.manifest.set_id != main_id, v.manifest.key))
    volume_set = VolumeSet(ordered[0].manifest)
    for volume in ordered:
        volume_set.add(volume)
    return volume_set


def _content(manifest):
    """What two manifests of the same volume must agree on to be copies of one volume."""
    return manifest.length, manifest.volume_digest, manifest.chunk_digests, getattr(manifest, "last", None)


def _held_by(volume, first, buffer):
    """The key of the volume whose data the file of `volume` holds, by its length and the digest
    of its first chunk (`first`: see VolumeSet.place_data); None when that tells nothing: an ISO
    image or disc (its manifest comes with it), a file that cannot be read, a first chunk that no
    manifest or several give."""
    if not isinstance(volume, VolumeFile):
        return None
    try:
        fd = os.open(volume.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        view = memoryview(buffer)[:min(len(buffer), info.st_size)]
        got = read_full(fd, view)
    except OSError:
        return None
    finally:
        os.close(fd)
    keys = first.get((info.st_size, manifests.digest_of(view[:got])), [])
    own = volume.manifest.key
    return own if own in keys else keys[0] if len(keys) == 1 else None

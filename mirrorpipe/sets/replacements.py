"""Replacement volumes (reassemble --rebuild-into DIR): each lost or damaged volume of a set with
parity, data or parity, rebuilt whole and written into DIR with its manifest, so that a new disc
can take the place of the lost one and the set is whole again.

A volume whose manifest survives gets that manifest again, and its rebuilt content must match
the manifest's volume hash. A data volume lost with its manifest gets one made from what the set
knows: its place and length from the parity manifests (whose volume hash it must match), its
chunk hashes from the rebuilt bytes, the rest from the other manifests. A lost parity volume gets
a copy of a sibling's manifest with its own index, coefficients and hashes, or, when the whole
group's parity is lost, one made from the data manifests.
"""

import dataclasses
import os

from .. import units
from . import erasure, manifests
from ..errors import Error, describe_os_error
from ..stream.streams import write_all
from .names import PART_SUFFIX, VolumeKey
from .writer import publish


class ReplacementWriter:
    """The `replace` hook of a verifier.SetVerifier (reassemble --verify --rebuild-into)."""

    def __init__(self, directory, volume_set, say=None):
        self.directory = directory
        self.set = volume_set
        self.say = say or (lambda text: None)
        self.written = []     # paths of the replacement volumes, in order
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise Error(f"cannot use {directory} for replacement volumes: {exc.strerror}") from None

    def __call__(self, group, rebuilder, health):
        if health.spare < 0:
            return      # beyond repair: --verify names what is lost
        indices = self.set.group_indices(group)
        for row in sorted(health.lost_chunks):
            key = VolumeKey(indices[row]) if row < len(indices) else VolumeKey.parity(group, row - len(indices) + 1)
            self._write(rebuilder, row, key, group, indices)

    def _write(self, rebuilder, row, key, group, indices):
        path = os.path.join(self.directory, key.file_name(self.set.reference.set_name))
        if os.path.lexists(path) or os.path.lexists(manifests.manifest_path(path)):
            raise Error(f"{path} already exists; give --rebuild-into an empty directory")
        chunk_digests = bytearray()
        volume_hash = manifests.new_hash()

        def write(chunk):      # rebuild_volume hands over one whole chunk per call
            volume_hash.update(chunk)
            chunk_digests.extend(manifests.digest_of(chunk))
            write_all(fd, chunk)

        try:
            fd = os.open(path + PART_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                rebuilder.rebuild_volume(row, write)
                os.fsync(fd)
            finally:
                os.close(fd)
            manifest = self._manifest(key, group, indices, rebuilder.members[row].length,
                                      bytes(chunk_digests), volume_hash.digest())
            publish(path, manifest)
        except OSError as exc:
            raise Error(f"cannot write the replacement {path}: {describe_os_error(exc)}") from None
        except BaseException:
            _remove(path + PART_SUFFIX)
            raise
        self.written.append(path)
        self.say(f"wrote {path} ({units.format_size(rebuilder.members[row].length)}), a replacement for "
                 f"{key.describe()}, with its manifest")

    def _manifest(self, key, group, indices, length, chunk_digests, volume_digest):
        """The manifest of a rebuilt volume; errors.Error when its content contradicts the set."""
        found = self.set.volume(key)
        if found:
            # Its chunks were checked against this manifest as they were read or rebuilt.
            manifest, expected = found.manifest, found.manifest.volume_digest
        elif key.is_parity:
            manifest = self._parity_manifest(key, indices, length, chunk_digests, volume_digest)
            expected = volume_digest    # a parity volume made anew: nothing else records it
        else:
            manifest = self._data_manifest(key.index, group, length, chunk_digests, volume_digest)
            expected = self._recorded_digest(key.index, group)
        if volume_digest != expected:
            raise Error(f"{key.describe()} as rebuilt does not match the volume hash the set's "
                        "manifests give for it; they were altered")
        return manifest

    def _recorded_digest(self, index, group):
        """A lost data volume's hash, as its group's parity manifests record it."""
        for volume in self._parity_of(group):
            for entry in volume.manifest.data_volumes:
                if entry.index == index:
                    return entry.volume_digest
        raise Error(f"no manifest of group {group} records volume {index}")

    def _data_manifest(self, index, group, length, chunk_digests, volume_digest):
        reference, last = self.set.reference, index == self.set.count
        return manifests.Manifest(
            set_id=reference.set_id, set_name=reference.set_name, index=index,
            offset=(index - 1) * reference.volume_size, length=length, chunk_size=reference.chunk_size,
            volume_size=reference.volume_size, chunk_digests=chunk_digests, volume_digest=volume_digest,
            media=reference.media, created=reference.created, host=reference.host, last=last,
            parity=self.set.scheme, **self._stream_end(last))

    def _parity_manifest(self, key, indices, length, chunk_digests, volume_digest):
        group, parity_index = key.group, key.index
        coefficients = [erasure.coefficient(parity_index - 1, i) for i in range(len(indices))]
        siblings = self._parity_of(group)
        if siblings:
            return dataclasses.replace(siblings[0].manifest, parity_index=parity_index,
                                       coefficients=coefficients, chunk_digests=chunk_digests,
                                       volume_digest=volume_digest)
        data = [self.set.by_index[index].manifest for index in indices]
        reference, last = self.set.reference, indices[-1] == self.set.count
        return manifests.ParityManifest(
            set_id=reference.set_id, set_name=reference.set_name, group=group,
            group_size=self.set.scheme.group_size, parity_index=parity_index,
            parity_count=self.set.scheme.count, coefficients=coefficients,
            data_volumes=[manifests.DataVolumeEntry(m.index, m.length, m.volume_digest) for m in data],
            length=length, chunk_size=reference.chunk_size, volume_size=reference.volume_size,
            chunk_digests=chunk_digests, volume_digest=volume_digest, media=reference.media,
            created=reference.created, host=reference.host, last_group=last, **self._stream_end(last))

    def _stream_end(self, last):
        """The stream-end fields of the manifest of the last volume or group, else none."""
        end = self.set.end
        return dict(total_length=end.total_length, volume_count=end.volume_count,
                    stream_digest=end.stream_digest) if last else {}

    def _parity_of(self, group):
        return [volume for key, volume in sorted(self.set.parity.items()) if key.group == group]


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass

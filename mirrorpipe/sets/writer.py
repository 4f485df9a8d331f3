"""Writing a set while the stream flows: VolumeSetWriter cuts its input into volumes.

VolumeSetWriter slices its input into NAME.001, NAME.002, ... of volume_size bytes (the last one
shorter; names.py says how they are numbered), hashing as it writes. A volume grows as
`NAME.001.part`; once complete it is fsync'ed, its manifest is written as
`NAME.001.manifest.part` and fsync'ed, then the volume and after it the manifest are renamed to
their final names (publish). Only a volume with its manifest counts as finished, and only a last
volume (known at end of input) completes a set, so a run killed at any moment leaves no set that
reads as complete.

Parity (split-span --parity K --group G): while the data volumes of a group stream past, a
parity.ParallelParityAccumulator folds them into K parity volumes NAME.parity-GGG-P (.part until
finished); after the group's last data volume they get manifests of their own and are handed to
the same hooks (--iso, --exec) as data volumes.
"""

import errno
import os
import secrets
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field

from .. import units
from . import erasure, manifests
from ..disc import iso
from ..stream import frames, pipeline
from ..progress import NoProgress
from ..errors import Error, describe_os_error
from .manifests import Manifest
from .names import IMAGE_SUFFIX, PARITY_PREFIX, PART_SUFFIX, is_parity_suffix, parity_name, suffix_index, volume_name
from ..stream.streams import BLOCK_SIZE, Writeback, fsync_directory, read_full, write_all


class ExecHook:
    """Runs the user's --exec command after each finished volume.

    The command runs as `sh -c CMD sh VOLUME` with every {} in CMD replaced by "$1", so the volume
    path reaches the shell as an argument and never as shell code, whatever characters it holds.
    stdin is /dev/null: split-span's stdin carries the stream.
    """

    def __init__(self, command):
        self.command = command
        self.script = command.replace("{}", '"$1"')

    def __call__(self, manifest, path):
        env = dict(os.environ,
                   MIRRORPIPE_VOLUME=path,
                   MIRRORPIPE_SET_ID=manifest.set_id,
                   MIRRORPIPE_SET_NAME=manifest.set_name,
                   MIRRORPIPE_LAST="1" if is_last_file(manifest) else "0")
        for name in ("MIRRORPIPE_VOLUME_INDEX", "MIRRORPIPE_PARITY_GROUP", "MIRRORPIPE_PARITY_INDEX"):
            env.pop(name, None)
        key = manifest.key
        if key.is_parity:
            env.update(MIRRORPIPE_PARITY_GROUP=str(key.group), MIRRORPIPE_PARITY_INDEX=str(key.index))
        else:
            env["MIRRORPIPE_VOLUME_INDEX"] = str(key.index)
        try:
            status = subprocess.run(["sh", "-c", self.script, "sh", path],
                                    stdin=subprocess.DEVNULL, env=env).returncode
        except OSError as exc:
            raise Error(f"cannot run --exec command: {exc.strerror}") from None
        if status:
            how = f"was killed by signal {-status}" if status < 0 else f"failed with status {status}"
            raise Error(f"--exec command {how} for {path}; stopping (fix the command before "
                        "running the backup again)")


def is_last_file(manifest):
    """Whether split-span writes nothing after this volume: the last data volume of a set without
    parity, else the last parity volume of the last group."""
    if isinstance(manifest, manifests.ParityManifest):
        return manifest.last_group and manifest.parity_index == manifest.parity_count
    return manifest.last and not manifest.parity


@dataclass
class _OpenVolume:
    index: int
    path: str
    fd: int
    offset: int
    length: int = 0
    chunk_digests: bytearray = field(default_factory=bytearray)
    chunk_filled: int = 0

    def __post_init__(self):
        self.volume_hash = manifests.new_hash()
        self.chunk_hash = manifests.new_hash()
        self.writeback = Writeback(self.fd)


class VolumeSetWriter:
    """Writes one volume set into a directory; write() consumes the stream."""

    def __init__(self, directory, set_name, volume_size, chunk_size=manifests.DEFAULT_CHUNK_SIZE,
                 media=None, on_finished=None, progress=None, parity=None, parity_workers=None):
        """parity: a manifests.ParityScheme to write parity volumes, or None; parity_workers: the
        processes that fold the data into them (default: one per CPU)."""
        if not manifests.SET_NAME_RE.fullmatch(set_name):
            raise Error(f"invalid set name {set_name!r}: use up to 100 letters, digits and . _ + -, "
                        "starting with a letter or digit")
        if not manifests.MIN_CHUNK_SIZE <= chunk_size <= manifests.MAX_CHUNK_SIZE:
            raise Error(f"chunk size {chunk_size} is outside {units.format_size(manifests.MIN_CHUNK_SIZE)}"
                        f"-{units.format_size(manifests.MAX_CHUNK_SIZE)}")
        if not manifests.MIN_VOLUME_SIZE <= volume_size <= manifests.MAX_VOLUME_SIZE:
            raise Error(f"volume size {volume_size} is outside {units.format_size(manifests.MIN_VOLUME_SIZE)}"
                        f"-{units.format_size(manifests.MAX_VOLUME_SIZE)}")
        if manifests.chunk_count(volume_size, chunk_size) > manifests.MAX_CHUNKS:
            raise Error(f"{units.format_size(volume_size)} volumes need more than {manifests.MAX_CHUNKS} "
                        f"chunks of {units.format_size(chunk_size)}; choose a larger chunk size")
        self.directory = directory
        self.set_name = set_name
        self.set_id = secrets.token_hex(16)
        self.volume_size = volume_size
        self.chunk_size = chunk_size
        self.media = media
        self.on_finished = on_finished
        self.progress = progress or NoProgress()
        self.stream_hash = manifests.new_hash()
        self.finished = []        # manifests of the finished volumes
        self.finished_parity = []  # manifests of the finished parity volumes
        self.host = socket.gethostname()[:manifests.MAX_HOST_LENGTH]
        self.parity = parity
        self.parity_workers = parity_workers
        self.group_parity = None  # the accumulator of the group being written
        if parity and not (1 <= parity.count <= erasure.MAX_PARITY and 1 <= parity.group_size <= erasure.MAX_DATA):
            raise Error(f"--parity takes 1 to {erasure.MAX_PARITY} parity volumes per group of 1 to "
                        f"{erasure.MAX_DATA} data volumes")

    def prepare_directory(self):
        """Create the directory; refuse one that already holds a set of this name; remove the
        unfinished volumes an interrupted run of this set name left."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            names = self._set_files()
        except OSError as exc:
            raise Error(f"cannot use the output directory {self.directory}: {exc.strerror}") from None
        finished = [name for name in names if not name.endswith(PART_SUFFIX)]
        if finished and self._holds_last_volume(finished):
            raise Error(f"{self.directory} already holds a volume set named '{self.set_name}' "
                        f"({finished[0]}); choose another --name or an empty directory")
        if finished:
            raise Error(f"{self.directory} already holds a volume set named '{self.set_name}' "
                        f"({finished[0]} ...), an incomplete one (no last volume: a run that failed "
                        f"or was killed left it); remove its {len(names)} files first (or choose "
                        "another --name or an empty directory): "
                        + removal_command(self.directory, self.set_name, names))
        for name in names:
            os.unlink(os.path.join(self.directory, name))

    def _holds_last_volume(self, names):
        """Whether one of these finished files holds the manifest of a set's last data volume: a
        manifest file, or an ISO image (split-span --iso). One that cannot be read counts: it may."""
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                if name.endswith(IMAGE_SUFFIX):
                    with iso.Disc(path) as disc:
                        manifest = disc.manifest
                elif name.endswith(manifests.SUFFIX):
                    manifest = manifests.read(path)
                else:
                    continue
            except (Error, OSError):
                return True
            if not isinstance(manifest, manifests.ParityManifest) and manifest.last:
                return True
        return False

    def _set_files(self):
        """Names of the files in the directory that belong to a set of this name: volumes, parity
        volumes, their manifests and ISO images, finished or .part."""
        prefix = self.set_name + "."
        found = []
        for name in sorted(os.listdir(self.directory)):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            base = rest.removesuffix(PART_SUFFIX).removesuffix(manifests.SUFFIX).removesuffix(IMAGE_SUFFIX)
            if suffix_index(base) is not None or is_parity_suffix(base):
                found.append(name)
        return found

    def write(self, src_fd, confirm_end=None):
        """Cut everything readable from src_fd into volumes; return the finished manifests.

        At end of input, before the last volume is finished: confirm_end(bytes read) raises errors.Error
        when the end was not the stream's end (the command or connection feeding it died), and a
        compressed stream must end with its seek table (frames.check_stream_end)."""
        self.prepare_directory()
        # Two buffers read in turn: the previous one still holds the stream's last MiB at the end,
        # for the seek table check, without copying every byte.
        buffers = [bytearray(BLOCK_SIZE), bytearray(BLOCK_SIZE)]
        filled = [0, 0]
        turn = 0
        head = b""
        volume = None
        try:
            while True:
                turn ^= 1
                view = memoryview(buffers[turn])
                got = read_full(src_fd, view)
                if got == 0:
                    break   # buffers[turn] still holds the read before the last one
                filled[turn] = got
                if not head:
                    head = bytes(view[:64])
                data = view[:got]
                while data:
                    # A full volume is finished only now that more data has come: at end of input
                    # it is the last volume, and no empty last volume is ever written.
                    if volume is None or volume.length == self.volume_size:
                        if volume is not None:
                            self._finish(volume, last=False)
                        volume = self._start(len(self.finished) + 1)
                    taken = self._append(volume, data)
                    data = data[taken:]
                self.progress.advance(got)
            if confirm_end:
                confirm_end(self.stream_length(volume))
            tail = bytes(buffers[turn][:filled[turn]]) + bytes(buffers[turn ^ 1][:filled[turn ^ 1]])
            frames.check_stream_end(head, tail, self.stream_length(volume))
            if volume is None:
                volume = self._start(1)   # an empty stream still makes a set: one empty volume
            self._finish(volume, last=True)
        except BaseException as exc:
            if volume is not None and (not self.finished or self.finished[-1].index != volume.index):
                self._discard(volume)
            if self.group_parity:
                self.group_parity.discard()
            if isinstance(exc, OSError):
                raise Error(self._describe_failure(exc, volume)) from None
            if isinstance(exc, pipeline.IncompleteInput):
                raise exc.with_consequence(self._describe_incomplete()) from None
            if isinstance(exc, Error):
                raise Error(f"{exc}; {self._describe_incomplete()}") from None
            raise
        return self.finished

    def stream_length(self, volume):
        return volume.offset + volume.length if volume else 0

    def _start(self, index):
        path = os.path.join(self.directory, volume_name(self.set_name, index))
        fd = os.open(path + PART_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.progress.set_detail(f"volume {index}")
        if self.parity and self.group_parity is None:
            from . import parity   # multiprocessing and all (~35 ms): only when parity is asked for
            group = self.parity.group_of(index)
            self.group_parity = parity.ParallelParityAccumulator(
                [self._parity_path(group, p) + PART_SUFFIX for p in range(1, self.parity.count + 1)],
                self.chunk_size, workers=self.parity_workers)
        return _OpenVolume(index=index, path=path, fd=fd, offset=(index - 1) * self.volume_size)

    def _append(self, volume, data):
        """Write as much of data as fits the volume; hash it per chunk, volume and stream."""
        piece = data[:self.volume_size - volume.length]
        write_all(volume.fd, piece)
        if self.group_parity:
            self.group_parity.add(piece)
        volume.volume_hash.update(piece)
        self.stream_hash.update(piece)
        rest = piece
        while rest:
            take = min(len(rest), self.chunk_size - volume.chunk_filled)
            volume.chunk_hash.update(rest[:take])
            volume.chunk_filled += take
            rest = rest[take:]
            if volume.chunk_filled == self.chunk_size:
                self._close_chunk(volume)
        volume.length += len(piece)
        volume.writeback.wrote_up_to(volume.length)
        return len(piece)

    @staticmethod
    def _close_chunk(volume):
        volume.chunk_digests += volume.chunk_hash.digest()
        volume.chunk_hash.reset()
        volume.chunk_filled = 0

    def _finish(self, volume, last):
        if volume.chunk_filled:
            self._close_chunk(volume)
        manifest = Manifest(
            set_id=self.set_id, set_name=self.set_name, index=volume.index, offset=volume.offset,
            length=volume.length, chunk_size=self.chunk_size, volume_size=self.volume_size,
            chunk_digests=bytes(volume.chunk_digests), volume_digest=volume.volume_hash.digest(),
            media=self.media, created=_now(), host=self.host, last=last, parity=self.parity)
        if last:
            manifest.total_length = volume.offset + volume.length
            manifest.volume_count = volume.index
            manifest.stream_digest = self.stream_hash.digest()
        if self.group_parity:
            self.group_parity.end_data_volume()
        os.fsync(volume.fd)
        os.close(volume.fd)
        volume.fd = -1
        publish(volume.path, manifest)
        self.finished.append(manifest)
        if self.on_finished:
            self.on_finished(manifest, _argument_path(volume.path))
        if self.group_parity and (last or volume.index % self.parity.group_size == 0):
            self._finish_group(last)

    def _parity_path(self, group, parity_index):
        return os.path.join(self.directory, parity_name(self.set_name, group, parity_index))

    def _finish_group(self, last):
        """The group's data volumes are all finished: finish its parity volumes, give them
        manifests and hand them to on_finished."""
        group = self.parity.group_of(self.finished[-1].index)
        self.progress.set_detail(f"parity of group {group}")
        members = [m for m in self.finished if self.parity.group_of(m.index) == group]
        built = self.group_parity.finish()
        self.group_parity = None
        finished = []
        for volume in built:
            manifest = manifests.ParityManifest(
                set_id=self.set_id, set_name=self.set_name, group=group,
                group_size=self.parity.group_size, parity_index=volume.parity + 1,
                parity_count=self.parity.count, coefficients=volume.coefficients,
                data_volumes=[manifests.DataVolumeEntry(m.index, m.length, m.volume_digest) for m in members],
                length=volume.length, chunk_size=self.chunk_size, volume_size=self.volume_size,
                chunk_digests=volume.chunk_digests, volume_digest=volume.volume_digest,
                media=self.media, created=_now(), host=self.host, last_group=last)
            if last:
                manifest.total_length = self.finished[-1].total_length
                manifest.volume_count = self.finished[-1].volume_count
                manifest.stream_digest = self.finished[-1].stream_digest
            path = self._parity_path(group, manifest.parity_index)
            publish(path, manifest)
            finished.append((manifest, path))
        for manifest, path in finished:
            self.finished_parity.append(manifest)
            if self.on_finished:
                self.on_finished(manifest, _argument_path(path))

    def _discard(self, volume):
        """Remove an unfinished volume's files (they would only take space; .part never counts)."""
        if volume.fd >= 0:
            os.close(volume.fd)
            volume.fd = -1
        for path in (volume.path + PART_SUFFIX, manifests.manifest_path(volume.path) + PART_SUFFIX,
                     volume.path):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _describe_failure(self, exc, volume):
        where = f"volume {volume.index} ({volume.path})" if volume else f"{self.directory}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"no space left in {self.directory} while writing {where}; "
                    + self._describe_incomplete("free space, or move finished volumes away with --exec"))
        return f"cannot write {where}: {describe_os_error(exc)}; " + self._describe_incomplete()

    def _describe_incomplete(self, first=None):
        """What a failed run leaves and the command that clears the way to run it again."""
        if self.finished and self.finished[-1].last:
            return "the data volumes of the set are complete (reassemble accepts them)"
        if self.finished:
            last = self.finished[-1]
            kept = (f"volumes 1-{last.index} were finished" if last.index > 1 else "volume 1 was finished")
            kept += " but not the last one"
        else:
            kept = "no volume was finished"
        text = f"the set is incomplete ({kept}; reassemble refuses it)"
        if first:
            text += f"; {first}"
        try:
            leftovers = [name for name in self._set_files() if not name.endswith(PART_SUFFIX)]
        except OSError:
            leftovers = []
        if leftovers:
            text += (f"; before running the backup again (or give another --name or OUTDIR), remove "
                     f"the {len(leftovers)} files this run left: "
                     + removal_command(self.directory, self.set_name, leftovers))
        return text


def removal_command(directory, set_name, names):
    """A shell command that removes these files of a set: listed when few, else by patterns that
    only a set's own names match (volume numbers have three digits or more)."""
    if len(names) <= 8:
        return "rm -f -- " + " ".join(shlex.quote(os.path.join(directory, name)) for name in names)
    patterns = [shlex.quote(os.path.join(directory, set_name + ".")) + "[0-9][0-9][0-9]*"]
    if any(name.startswith(f"{set_name}.{PARITY_PREFIX}") for name in names):
        patterns.append(shlex.quote(os.path.join(directory, f"{set_name}.{PARITY_PREFIX}")) + "*")
    return "rm -f -- " + " ".join(patterns)


def publish(path, manifest):
    """Give the volume at path.part (written and fsync'ed) its manifest and its final name."""
    manifest_file = manifests.manifest_path(path)
    fd = os.open(manifest_file + PART_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_all(fd, manifest.to_json())
        os.fsync(fd)
    finally:
        os.close(fd)
    # Volume first, manifest last: the manifest's arrival is what makes the volume finished.
    os.rename(path + PART_SUFFIX, path)
    os.rename(manifest_file + PART_SUFFIX, manifest_file)
    fsync_directory(os.path.dirname(path) or ".")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _argument_path(path):
    """A path that no command takes for an option."""
    return "./" + path if path.startswith("-") else path

"""Volume sets: cutting a stream into volumes while it streams, and finding and checking a set.

Writing: VolumeSetWriter slices its input into NAME.001, NAME.002, ... of volume_size bytes
(the last one shorter), hashing as it writes. A volume grows as `NAME.001.part`; once complete it
is fsync'ed, its manifest is written as `NAME.001.manifest.part` and fsync'ed, then the volume and
after it the manifest are renamed to their final names. Only a volume with its manifest counts as
finished, and only a last volume (known at end of input) completes a set, so a run killed at any
moment leaves no set that reads as complete.

Parity (split-span --parity K --group G): while the data volumes of a group stream past, a
parity.ParallelParityAccumulator folds them into K parity volumes NAME.parity-GGG-P (.part until
finished); after the group's last data volume they get manifests of their own and are handed to
the same hooks (--iso, --exec) as data volumes. They never match `NAME.???`, so the stock restore
`cat NAME.??? | zstd -d` ignores them.

Numbering: 3 digits, 001 to 899; larger sets widen the number like GNU split's suffixes, so
names still sort in stream order: 900 is 90000 ... 9899 is 98999, then 9900000 ... (each tier
adds a leading 9 and one more digit).

Finding: scan() finds manifests and volumes (data and parity) in directories, files, ISO images
and drives given in any order; gather() and VolumeSet order and check them by manifest and tell
what parity can rebuild. setreader.py reads a set back.
"""

import errno
import os
import re
import secrets
import shlex
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field

from .. import units
from . import erasure, manifests
from ..stream import frames, pipeline
from ..progress import NoProgress
from ..errors import Error, describe_os_error
from .manifests import Manifest
from ..stream.streams import Writeback, fsync_directory, read_full, write_all

PART_SUFFIX = ".part"
IMAGE_SUFFIX = ".iso"
IO_BUFFER_SIZE = 1 << 20
_TIER0_VOLUMES = 900


# ---------------------------------------------------------------------------------------------
# Names

def volume_suffix(index):
    """1 -> '001', 899 -> '899', 900 -> '90000', 9899 -> '98999', 9900 -> '9900000', ..."""
    if index < 1:
        raise ValueError(f"volume index {index} is not 1 or more")
    number, nines, tier_size = index, 0, _TIER0_VOLUMES
    while number >= tier_size:
        number -= tier_size
        nines += 1
        tier_size *= 10
    return "9" * nines + f"{number:0{3 + nines}d}"


_SUFFIX_RE = re.compile(r"(9*)([0-8]\d*)")


def suffix_index(suffix):
    """The index a volume suffix stands for (inverse of volume_suffix), None if it is not one."""
    match = _SUFFIX_RE.fullmatch(suffix)
    if not match or len(match.group(2)) != 3 + len(match.group(1)) or suffix == "000":
        return None
    nines = len(match.group(1))
    return sum(_TIER0_VOLUMES * 10 ** tier for tier in range(nines)) + int(match.group(2))


def volume_name(set_name, index):
    return f"{set_name}.{volume_suffix(index)}"


PARITY_PREFIX = "parity-"
_PARITY_SUFFIX_RE = re.compile(r"parity-(9*[0-8]\d*)-(\d{1,2})")


def parity_name(set_name, group, parity_index):
    """'image.parity-001-2': parity volume 2 of group 1."""
    return f"{set_name}.{PARITY_PREFIX}{volume_suffix(group)}-{parity_index}"


def is_parity_suffix(suffix):
    """Whether a file name's part after the set name ('parity-001-2') names a parity volume."""
    match = _PARITY_SUFFIX_RE.fullmatch(suffix)
    return bool(match and suffix_index(match.group(1)) and match.group(2) != "0")


def looks_like_volume(file_name):
    """True for names split-span gives volumes (NAME.NNN, NAME.parity-GGG-P), whatever the set
    name."""
    stem, dot, suffix = file_name.rpartition(".")
    return bool(dot and stem and (suffix_index(suffix) or is_parity_suffix(suffix)))


def describe_indices(indices):
    """[1, 2, 3, 5] -> '1-3, 5'."""
    ranges = []
    for index in sorted(indices):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


# ---------------------------------------------------------------------------------------------
# Writing a set

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
        if isinstance(manifest, manifests.ParityManifest):
            env.update(MIRRORPIPE_PARITY_GROUP=str(manifest.group),
                       MIRRORPIPE_PARITY_INDEX=str(manifest.parity_index))
        else:
            env["MIRRORPIPE_VOLUME_INDEX"] = str(manifest.index)
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
        from ..disc import iso   # iso builds on this module
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
        buffers = [bytearray(IO_BUFFER_SIZE), bytearray(IO_BUFFER_SIZE)]
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
            from . import parity   # imports numpy: only when parity is asked for
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


# ---------------------------------------------------------------------------------------------
# Finding a set

def volume_key(manifest):
    """How a set knows a volume: its index, or (group, parity index) for a parity volume."""
    if isinstance(manifest, manifests.ParityManifest):
        return manifest.group, manifest.parity_index
    return manifest.index


def name_of(key):
    """'volume 3' or 'parity volume 1 of group 2', from a volume_key()."""
    return f"parity volume {key[1]} of group {key[0]}" if isinstance(key, tuple) else f"volume {key}"


def describe_volume(manifest, path):
    """'volume 3 (out/image.003)' or 'parity volume 1 of group 2 (out/image.parity-002-1)'."""
    return f"{name_of(volume_key(manifest))} ({path})"


@dataclass
class VolumeFile:
    """A manifest and the volume file beside it, or data_path: the file found to hold this
    manifest's volume under another volume's name (VolumeSet.place_data)."""
    manifest: Manifest
    manifest_path: str
    data_path: str = None

    @property
    def path(self):
        return self.data_path or manifests.volume_path(self.manifest_path)

    @property
    def label(self):
        return describe_volume(self.manifest, self.path)

    def open_file(self):
        """The volume as a file object (seek, readinto), checked as open_checked() does."""
        return open(self.open_checked(), "rb", buffering=0)

    def open_checked(self):
        """A descriptor of the volume file after checking it is there, regular and of the length
        its manifest says; errors.Error naming the problem otherwise."""
        name = self.label
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise Error(f"{name} is missing: its manifest {self.manifest_path} is there but not the "
                        "volume file beside it; copy it there (a renamed volume keeps its "
                        "manifest's name without '.manifest')") from None
        except OSError as exc:
            raise Error(f"cannot read {name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Error(f"{name} is not a regular file")
            if info.st_size != self.manifest.length:
                what = "truncated" if info.st_size < self.manifest.length else "longer than its manifest says"
                raise Error(f"{name} is {what}: {info.st_size} bytes, its manifest says "
                            f"{self.manifest.length}; copy it again from the original")
        except BaseException:
            os.close(fd)
            raise
        return fd


@dataclass
class Scan:
    """What some directories and files hold."""
    volumes: list = field(default_factory=list)
    parity: list = field(default_factory=list)        # parity volumes (VolumeFile, DiscVolume)
    unfinished: list = field(default_factory=list)    # .part files of an interrupted split-span
    orphans: list = field(default_factory=list)       # volume-like files without a manifest


def scan(sources):
    """Find manifests (with their volumes), .part leftovers and volumes without manifest in the
    directories and files given. Directories are read one level deep."""
    found = Scan()
    seen = set()

    def take(volume):
        is_parity = isinstance(volume.manifest, manifests.ParityManifest)
        (found.parity if is_parity else found.volumes).append(volume)

    def take_manifest(path):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            take(VolumeFile(manifests.read(path), path))

    def take_disc(path):
        """An ISO image or a disc in a drive: its volume is read straight out of the image."""
        from ..disc import iso   # iso builds on this module
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            take(iso.disc_volume(path))

    for source in sources:
        if os.path.isdir(source):
            try:
                names = sorted(os.listdir(source))
            except OSError as exc:
                raise Error(f"cannot read directory {source}: {exc.strerror}") from None
            present = set(names)
            for name in names:
                path = os.path.join(source, name)
                if name.endswith(PART_SUFFIX):
                    found.unfinished.append(path)
                elif name.endswith(manifests.SUFFIX):
                    take_manifest(path)
                elif name.endswith(IMAGE_SUFFIX):
                    take_disc(path)
                elif looks_like_volume(name) and name + manifests.SUFFIX not in present:
                    found.orphans.append(path)
        elif os.path.exists(source):
            if _is_disc(source):
                take_disc(source)
            elif source.endswith(PART_SUFFIX):
                found.unfinished.append(source)
            elif source.endswith(manifests.SUFFIX):
                take_manifest(source)
            elif os.path.exists(manifests.manifest_path(source)):
                take_manifest(manifests.manifest_path(source))
            else:
                found.orphans.append(source)
        else:
            raise Error(f"{source} does not exist; give directories, volume files or manifests")
    return found


def _is_disc(path):
    """A block device (an optical drive, a USB stick holding an image) or a file that is an ISO
    image, whatever its name (a burned disc copied off with dd has none)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISBLK(mode):
        return True
    from ..disc import iso
    return stat.S_ISREG(mode) and not path.endswith(manifests.SUFFIX) and iso.is_image(path)


def rereadable(source):
    """A source that can hold another disc when asked again: a directory (a mount point) or a
    drive."""
    return os.path.isdir(source) or (os.path.exists(source) and stat.S_ISBLK(os.stat(source).st_mode))


def set_label(manifest):
    """How messages name a set: 'pc1' (set id 0123...)."""
    return f"'{manifest.set_name}' (set id {manifest.set_id})"


class VolumeSet:
    """The volumes of one set found so far, by index, its parity volumes by (group, parity
    index), and what is wrong with them as a whole."""

    def __init__(self, first):
        self.reference = first
        self.by_index = {}
        self.parity = {}          # (group, parity index) -> parity volume
        self.last = None          # the last data volume's manifest
        self.last_group = None    # a parity manifest of the last group (knows the end too)
        self.scheme = first.parity  # manifests.ParityScheme, or None for a set without parity
        self.lost = {}            # index or (group, parity index) -> why a found volume is unusable
        self.problems = []
        self.copies = {}          # key -> other copies of its volume (same manifest, another file)
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
                f"{volume.path} is {name_of(volume_key(theirs))} of another set {set_label(theirs)}, not of "
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
        if isinstance(theirs, manifests.ParityManifest):
            self._add_parity(volume)
            return
        known = self.by_index.get(theirs.index)
        if known:
            if _content(known.manifest) != _content(theirs):
                self.problems.append(
                    f"two different volumes {theirs.index} of set '{mine.set_name}': {known.path} and "
                    f"{volume.path} (different content); keep the right one and remove the other")
                return
            self._add_copy(theirs.index, volume)
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

    def copies_of(self, key):
        """Every copy found of the volume of `key`, the first found first."""
        known = self.parity.get(key) if isinstance(key, tuple) else self.by_index.get(key)
        return ([known] if known else []) + self.copies.get(key, [])

    def forget(self, key):
        """Disc by disc: the volume of `key` and its copies are no longer at hand."""
        (self.parity if isinstance(key, tuple) else self.by_index).pop(key, None)
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
        key = (manifest.group, manifest.parity_index)
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
        for (parity_group, _), volume in sorted(self.parity.items()):
            if parity_group == group:
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
        lost = [i for i in indices if i not in self.by_index or i in self.lost]
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
                if i in self.by_index and i not in self.lost]

    def usable_parity(self, group):
        return [p for p in range(1, self.scheme.count + 1)
                if (group, p) in self.parity and (group, p) not in self.lost]

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
        return [*sorted(self.by_index), *sorted(self.parity)]

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
                note = (f"{volume.path} holds the data of {name_of(held)} (its manifest says "
                        f"{name_of(key)}): the files were renamed or swapped")
                self.notes.append(note)
                misplaced.setdefault(key, note)
                right = self.copies_of(held)[0]
                moved.setdefault(held, []).append(VolumeFile(right.manifest, right.manifest_path, volume.path))
        for key in self.keys():
            holders = own.get(key, []) + moved.get(key, [])
            if not holders:
                self.lost[key] = f"{misplaced[key]}; no file given holds the data of {name_of(key)}: give it"
                continue
            (self.parity if isinstance(key, tuple) else self.by_index)[key] = holders[0]
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
    ordered = sorted(every, key=lambda v: (v.manifest.set_id != main_id,
                                           isinstance(v.manifest, manifests.ParityManifest),
                                           getattr(v.manifest, "index", 0)))
    volume_set = VolumeSet(ordered[0].manifest)
    for volume in ordered:
        volume_set.add(volume)
    return volume_set


def leftovers_note(found):
    """What else the sources hold that explains a missing volume, or ''."""
    notes = []
    if found.unfinished:
        notes.append(f"{', '.join(found.unfinished)} unfinished (left by an interrupted split-span)")
    if found.orphans:
        notes.append(f"{', '.join(found.orphans)} without manifest")
    return "; ".join(notes)


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
    own = volume_key(volume.manifest)
    return own if own in keys else keys[0] if len(keys) == 1 else None

"""Volume sets: cutting a stream into volumes while it streams, and finding, checking and reading
a set back.

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

Reading: scan() finds manifests and volumes in directories and files given in any order,
VolumeSet orders and checks them by manifest, read_set() streams a set chunk by chunk, checking
each chunk's digest before the chunk is passed on, and asks for the next disc on /dev/tty when
a directory holds only part of the set.
"""

import errno
import os
import re
import secrets
import select
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from . import cli, erasure, manifests
from .errors import Error
from .manifests import Manifest
from .streams import Writeback, fsync_directory, read_full, write_all

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
            raise Error(f"--exec command {how} for {path}; stopping. The volumes up to this one are "
                        "complete; fix the command and run the pipeline again")


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
            raise Error(f"chunk size {chunk_size} is outside {cli.format_size(manifests.MIN_CHUNK_SIZE)}"
                        f"-{cli.format_size(manifests.MAX_CHUNK_SIZE)}")
        if not manifests.MIN_VOLUME_SIZE <= volume_size <= manifests.MAX_VOLUME_SIZE:
            raise Error(f"volume size {volume_size} is outside {cli.format_size(manifests.MIN_VOLUME_SIZE)}"
                        f"-{cli.format_size(manifests.MAX_VOLUME_SIZE)}")
        if manifests.chunk_count(volume_size, chunk_size) > manifests.MAX_CHUNKS:
            raise Error(f"{cli.format_size(volume_size)} volumes need more than {manifests.MAX_CHUNKS} "
                        f"chunks of {cli.format_size(chunk_size)}; choose a larger chunk size")
        self.directory = directory
        self.set_name = set_name
        self.set_id = secrets.token_hex(16)
        self.volume_size = volume_size
        self.chunk_size = chunk_size
        self.media = media
        self.on_finished = on_finished
        self.progress = progress or cli.NoProgress()
        self.stream_hash = manifests.new_hash()
        self.finished = []        # manifests of the finished volumes
        self.finished_parity = []  # manifests of the finished parity volumes
        self.host = cli.host_name()[:manifests.MAX_HOST_LENGTH]
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
            names = os.listdir(self.directory)
        except OSError as exc:
            raise Error(f"cannot use the output directory {self.directory}: {exc.strerror}") from None
        prefix = self.set_name + "."
        for name in sorted(names):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            base = rest.removesuffix(PART_SUFFIX).removesuffix(manifests.SUFFIX).removesuffix(IMAGE_SUFFIX)
            if suffix_index(base) is None and not is_parity_suffix(base):
                continue
            if rest.endswith(PART_SUFFIX):
                os.unlink(os.path.join(self.directory, name))
            else:
                raise Error(f"{self.directory} already holds a volume set named '{self.set_name}' "
                            f"({name}); choose another --name or an empty directory")

    def write(self, src_fd, confirm_end=None):
        """Cut everything readable from src_fd into volumes; return the finished manifests.

        confirm_end() is called at end of input before the last volume is finished; it raises
        errors.Error when the end was not the stream's end (the feeding connection died)."""
        self.prepare_directory()
        buf = bytearray(IO_BUFFER_SIZE)
        view = memoryview(buf)
        volume = None
        try:
            while True:
                got = read_full(src_fd, view)
                if got == 0:
                    break
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
                confirm_end()
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
            raise
        return self.finished

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
        if self.finished:
            first, last = self.finished[0], self.finished[-1]
            kept = (f"volumes 1-{last.index} ({volume_name(self.set_name, first.index)} to "
                    f"{volume_name(self.set_name, last.index)}) are complete"
                    if last.index > 1 else f"volume 1 ({volume_name(self.set_name, 1)}) is complete")
        else:
            kept = "no volume is complete"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"no space left in {self.directory} while writing {where}: {kept}, the unfinished "
                    "volume was removed and the set is incomplete; free space (or move finished "
                    "volumes away with --exec) and run the pipeline again")
        return (f"cannot write {where}: {cli.describe_os_error(exc)}; {kept}, the unfinished volume "
                "was removed and the set is incomplete")


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


def confirm_stdin_end(wait=0.05):
    """At end of input, tell a cut connection from the stream's end.

    A byte stream has no end marker: when the ssh session that feeds `ssh host 'split-span ...'`
    dies, split-span just sees end of input. But sshd then also closes the reading ends of the
    session's stdout and stderr pipes, which a clean end of the stream never does while we run.
    So if stdout or stderr is a pipe or socket whose reader is gone (or goes within `wait`
    seconds, as sshd closes its descriptors one by one), the input was cut."""
    watched = []
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            watched.append(fd)
    if not watched:
        return
    poller = select.poll()
    for fd in watched:
        poller.register(fd, 0)  # no events asked: poll reports POLLERR/POLLHUP only
    if poller.poll(wait * 1000):
        raise Error("input ended because the process feeding it went away (its connection or "
                    "session closed), not at the end of the stream; the last volume was not "
                    "finished and the set is incomplete: run the pipeline again")


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
    """A manifest and the volume file beside it."""
    manifest: Manifest
    manifest_path: str

    @property
    def path(self):
        return manifests.volume_path(self.manifest_path)

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
        from . import iso   # iso builds on this module
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
    from . import iso
    return stat.S_ISREG(mode) and not path.endswith(manifests.SUFFIX) and iso.is_image(path)


def rereadable(source):
    """A source that can hold another disc when asked again: a directory (a mount point) or a
    drive."""
    return os.path.isdir(source) or (os.path.exists(source) and stat.S_ISBLK(os.stat(source).st_mode))


def _set_label(manifest):
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
                f"{volume.path} is {name_of(volume_key(theirs))} of another set {_set_label(theirs)}, not of "
                f"the set {_set_label(mine)}; remove it")
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
            if (known.manifest.volume_digest, known.manifest.length, known.manifest.last) != \
                    (theirs.volume_digest, theirs.length, theirs.last):
                self.problems.append(
                    f"two different volumes {theirs.index} of set '{mine.set_name}': {known.path} and "
                    f"{volume.path} (different content); keep the right one and remove the other")
            return   # an identical copy (the same disc twice) is harmless
        self.by_index[theirs.index] = volume
        if theirs.last:
            if self.last and self.last.index != theirs.index:
                self.problems.append(f"two last volumes ({self.last.index} and {theirs.index}) in set "
                                     f"'{mine.set_name}'; the manifests were altered")
            self.last = theirs
            self._check_end()

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
            if known.manifest.volume_digest != manifest.volume_digest:
                self.problems.append(
                    f"two different parity volumes {manifest.parity_index} of group {manifest.group}: "
                    f"{known.path} and {volume.path}; keep the right one and remove the other")
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
            free = f", which has {cli.format_size(info.f_bavail * info.f_frsize)} free"
        except OSError:
            free = ""
        return (f". The set has parity: run reassemble again and answer l when it asks for disc "
                f"{index}; it rebuilds volume {index} from the other discs of group {group} (data discs "
                f"{indices[0]}-{indices[-1]} and a parity disc of group {group}), which it asks for, in "
                f"{cli.format_size(self.reference.volume_size)} of scratch space in {where} (TMPDIR)"
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

    def open_all(self):
        """Check that every volume found can be opened and has its length; a volume that cannot
        is set aside in self.lost, with the reason."""
        for key, volume in [*sorted(self.by_index.items()), *sorted(self.parity.items())]:
            try:
                os.close(volume.open_checked())
            except Error as exc:
                self.lost[key] = str(exc)


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


# ---------------------------------------------------------------------------------------------
# Reading a set

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
                    else f"{m.disc_title} of another set {_set_label(m)}"
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
                    if got != size or _digest_of(view[:size]) != manifest.chunk_digest(number):
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


def _digest_of(data):
    digest = manifests.new_hash()
    digest.update(data)
    return digest.digest()


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

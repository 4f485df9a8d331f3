"""Parity volumes: built while the data volumes stream past, and used to rebuild lost volumes.

A group is up to erasure.MAX_DATA data volumes of a set plus K parity volumes (see erasure.py
for the code). ParityAccumulator builds the parity volumes as files, folding each data volume in
block by block as split-span writes it (read-modify-write of the parity files in place), so
memory stays bounded and a data volume may be burned and deleted as soon as it is finished.
Rebuilder reads the surviving volumes of a group chunk by chunk, checking each chunk against its
manifest digest, and regenerates the chunks of volumes that are missing or damaged.

Parity volumes are as long as the group's longest data volume; a shorter data volume (the last
of the set) counts as zero-padded. Chunks of parity volumes line up with the data volumes' chunks
(same chunk size, same offsets), so chunk n of every volume of a group covers the same bytes.
"""

import errno
import mmap
import multiprocessing
import multiprocessing.connection
import os
import signal
from dataclasses import dataclass, field

from . import chunks, erasure, manifests
from ..stream import streams
from ..errors import Error, describe_os_error

# Data is folded a streams.BLOCK_SIZE block at a time: few Python-level steps, and a block and its
# scaled copy stay in the CPU cache.


# ---------------------------------------------------------------------------------------------
# Building parity volumes

@dataclass
class ParityVolume:
    """A finished parity volume: what its manifest needs."""
    parity: int             # 0 .. K-1 within its group
    path: str
    length: int
    chunk_digests: bytes    # manifests.DIGEST_SIZE bytes per chunk, like a data volume's
    volume_digest: bytes
    coefficients: list      # what each data volume (each volume fed) was multiplied by
    data_lengths: list      # the group's data volumes' lengths, in order


class ParityAccumulator:
    """The parity volumes of one group, built in files while the group's data volumes pass.

    Feed each data volume's bytes in order with add(), call end_data_volume() after each data
    volume, and finish() after the last. The files at `paths` (parity volumes `parities`, by
    default 0 .. len(paths)-1) are created (truncated) at once; finish() fsyncs, hashes and
    closes them, discard() removes them. Each data volume is cut into blocks of block_size,
    folded into the parity files at the same offset. Memory: one block and a few blocks' worth
    of temporaries, whatever the volume size.

    The same fold rebuilds lost volumes from volumes that arrive one at a time (discs inserted
    one by one): pass the lost rows as `parities` and as `coefficient` what each volume fed is
    multiplied by for each of them (from erasure.Code.recovery); see rebuild_coefficient().
    """

    def __init__(self, paths, chunk_size, block_size=streams.BLOCK_SIZE, parities=None,
                 coefficient=erasure.coefficient):
        self.targets = list(parities if parities is not None else range(len(paths)))
        if not 1 <= len(paths) <= erasure.MAX_PARITY or len(paths) != len(self.targets):
            raise Error(f"{len(paths)} parity volumes per group: choose 1 to {erasure.MAX_PARITY}")
        self.paths = list(paths)
        self.coefficient = coefficient
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.block = bytearray(block_size)
        self.filled = 0           # bytes of the pending block
        self.data_offset = 0      # bytes of the current data volume taken so far
        self.data_lengths = []    # of the data volumes ended so far
        self.fds = []
        self.finished = False
        self.scratch = None       # the fold's sum buffer, made where the folding runs
        try:
            for path in self.paths:
                self.fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666))
        except OSError as exc:
            self._remove_files()
            raise Error(f"cannot create parity volume {exc.filename}: {exc.strerror}") from None

    def add(self, data):
        """Take the next bytes of the current data volume."""
        view = memoryview(data)
        while view:
            take = min(len(view), self.block_size - self.filled)
            self._pending_block()[self.filled:self.filled + take] = view[:take]
            self.filled += take
            view = view[take:]
            if self.filled == self.block_size:
                self._flush()

    def end_data_volume(self):
        """The current data volume is complete (the next add() starts the next one)."""
        self._flush()
        self.data_lengths.append(self.data_offset)
        self.data_offset = 0

    def _flush(self):
        if not self.filled:
            return
        if len(self.data_lengths) >= erasure.MAX_DATA:
            raise Error(f"a parity group holds at most {erasure.MAX_DATA} data volumes")
        # Beyond the longest earlier data volume the parity files hold nothing yet (zeros).
        held = min(self.filled, max(0, max(self.data_lengths, default=0) - self.data_offset))
        self._fold_block(self.filled, len(self.data_lengths), self.data_offset, held)
        self.data_offset += self.filled
        self.filled = 0

    def _pending_block(self):
        return self.block

    def _fold_block(self, size, index, offset, held):
        data = self.block if size == len(self.block) else self.block[:size]
        _fold(self, data, index, offset, held)

    def finish(self):
        """Make the parity volumes durable and hash them; a ParityVolume for each, in order."""
        if self.filled or self.data_offset:
            raise ValueError("end_data_volume() was not called after the last data volume")
        length = max(self.data_lengths, default=0)
        finished = []
        try:
            for path, target, fd in zip(self.paths, self.targets, self.fds):
                os.fsync(fd)
                chunk_digests, volume_digest = _hash_file(fd, length, self.chunk_size)
                finished.append(ParityVolume(
                    parity=target, path=path, length=length, chunk_digests=chunk_digests,
                    volume_digest=volume_digest, data_lengths=list(self.data_lengths),
                    coefficients=[self.coefficient(target, i) for i in range(len(self.data_lengths))]))
        except OSError as exc:
            raise Error(f"cannot finish parity volume {path}: {describe_os_error(exc)}") from None
        self._close()
        self.finished = True
        return finished

    def _close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def discard(self):
        """Close and remove the parity files (after a failure: they would only take space);
        nothing once finish() has returned."""
        if not self.finished:
            self._remove_files()

    def _remove_files(self):
        self._close()
        for path in self.paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def _fold(files, data, index, offset, held):
    """parity_t[offset ...] += coefficient(t, index) * data for each target t of `files` (a
    ParityAccumulator's paths, targets, fds and coefficient); `held` bytes from offset hold
    earlier sums, the rest is still zeros."""
    if files.scratch is None:
        files.scratch = _zeros(files.block_size)
    total = files.scratch[:len(data)]
    try:
        for path, target, fd in zip(files.paths, files.targets, files.fds):
            if streams.pread_full(fd, total[:held], offset) != held:
                raise Error(f"parity volume {path} was shortened while being written; the parity "
                            "volumes of this group are incomplete")
            total[held:] = 0
            erasure.add_scaled(total, files.coefficient(target, index), data)
            streams.pwrite_all(fd, total, offset)
    except OSError as exc:
        raise Error(f"cannot write parity volume {path}: {describe_os_error(exc)}; "
                    "the parity volumes of this group are incomplete") from None


def rebuild_coefficient(code, lost, sources):
    """The `coefficient` for a ParityAccumulator that rebuilds the rows `lost` of a group from
    the rows `sources` fed to it in that order (volumes read one at a time); its `parities` are
    the lost rows. erasure.NotEnoughVolumes when the sources are too few. A rebuilt row comes
    out as long as the longest source: cut it to the row's own length."""
    plans = code.recovery(lost, frozenset(sources))

    def coefficient(lost_row, fed):
        return plans[lost_row].get(sources[fed], 0)
    return coefficient


class ParallelParityAccumulator(ParityAccumulator):
    """A ParityAccumulator whose folding runs in worker processes, beside the caller's work.

    Folding is CPU work that holds the GIL (bytes.translate scales each block), so threads would
    not overlap it; processes do. Worker w folds the blocks at offsets
    w, w + W, w + 2W, ... (in blocks) of every data volume into every parity file: the work is
    even for any number of parity volumes, and one offset is only ever folded by one worker, in
    order. Blocks reach the workers through a ring of RING_SLOTS shared-memory slots (an
    anonymous shared mapping the forked workers inherit, like the parity files' descriptors);
    a slot is reused once its worker has copied the block out, which bounds memory and keeps
    the workers at most RING_SLOTS blocks behind.
    """

    RING_SLOTS = 8

    def __init__(self, paths, chunk_size, workers=None, block_size=streams.BLOCK_SIZE, parities=None,
                 coefficient=erasure.coefficient):
        super().__init__(paths, chunk_size, block_size, parities, coefficient)
        self.ring = mmap.mmap(-1, self.RING_SLOTS * block_size)
        self.ring_view = memoryview(self.ring)
        self.slot = 0
        self.busy = [False] * self.RING_SLOTS       # a worker has yet to copy the slot's block
        self.workers = []
        self.ended = set()                          # connections of workers that have finished
        count = max(1, workers or os.cpu_count() or 1)
        context = multiprocessing.get_context("fork")
        for _ in range(count):
            ours, theirs = context.Pipe()
            # The worker must not keep our ends of the pipes open: it would never see EOF when
            # we die, and would outlive us.
            ours_everywhere = [ours] + [c for _, c in self.workers]
            process = context.Process(target=_parity_worker, daemon=True, name="parity",
                                      args=(theirs, ours_everywhere, self))
            process.start()
            theirs.close()
            self.workers.append((process, ours))

    def _pending_block(self):
        start = self.slot * self.block_size
        return self.ring_view[start:start + self.block_size]

    def _fold_block(self, size, index, offset, held):
        _, connection = self.workers[offset // self.block_size % len(self.workers)]
        self._send(connection, ("block", self.slot, size, index, offset, held))
        self.busy[self.slot] = True
        self.slot = (self.slot + 1) % self.RING_SLOTS
        self._wait_until(lambda: not self.busy[self.slot])

    def finish(self):
        """Wait for the workers to fold every block, then finish as ParityAccumulator does."""
        if self.filled or self.data_offset:
            raise ValueError("end_data_volume() was not called after the last data volume")
        for _, connection in self.workers:
            self._send(connection, ("finish",))
        self._wait_until(lambda: len(self.ended) == len(self.workers))
        self._stop_workers(terminate=False)
        return super().finish()

    def discard(self):
        """Stop the workers and remove the parity files; nothing once finish() has returned."""
        self._stop_workers(terminate=True)
        super().discard()

    def _stop_workers(self, terminate):
        for process, connection in self.workers:
            if terminate:
                process.terminate()
            process.join()
            connection.close()
        self.workers = []
        if not self.ring.closed:
            self.ring_view.release()
            self.ring.close()

    def _send(self, connection, message):
        try:
            connection.send(message)
        except OSError:
            self._wait_until(lambda: False)     # the worker is gone: its last words say why

    def _wait_until(self, done):
        """Take the workers' messages until done() holds; errors.Error when a worker failed
        (the caller then discards the group)."""
        while not done():
            # A worker that has finished has ended: its connection only has EOF left.
            working = [c for _, c in self.workers if c not in self.ended]
            for connection in multiprocessing.connection.wait(working):
                try:
                    kind, *detail = connection.recv()
                except (EOFError, OSError):
                    raise Error("a parity worker process ended unexpectedly; the parity volumes of "
                                "this group are incomplete") from None
                if kind == "copied":
                    self.busy[detail[0]] = False
                elif kind == "finished":
                    self.ended.add(connection)
                else:
                    raise Error(detail[0])


def _parity_worker(connection, callers_ends, files):
    """A worker process of ParallelParityAccumulator: folds the blocks it is sent into the
    parity files it inherited. It ends when its caller does (end of file on the connection)."""
    for end in callers_ends:
        end.close()
    _close_descriptors_but(connection.fileno(), *files.fds)
    # ^C reaches the whole process group: the caller handles it and the worker ends with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    block = bytearray(files.block_size)
    try:
        while True:
            kind, *detail = connection.recv()
            if kind == "finish":
                connection.send(("finished",))
                return
            slot, size, index, offset, held = detail
            start = slot * files.block_size
            block[:size] = files.ring_view[start:start + size]
            connection.send(("copied", slot))
            _fold(files, block if size == len(block) else block[:size], index, offset, held)
    except Error as exc:
        connection.send(("error", str(exc)))
    except EOFError:
        pass    # the caller is gone or discarded the group


def _close_descriptors_but(*keep):
    """Close what a forked worker inherited beyond stdin, stdout, stderr and `keep`: a file lock
    the caller's progress thread held at the moment of the fork would stay held by the worker's
    copy of its descriptor, and the caller's next message would wait for the worker to end."""
    start = 3
    for fd in sorted(keep):
        if fd >= start:
            os.closerange(start, fd)
            start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))


def _hash_file(fd, length, chunk_size):
    """(chunk digests, volume digest) of the first `length` bytes of fd."""
    chunk_digests = bytearray()
    volume_hash = manifests.new_hash()
    piece_buffer = memoryview(bytearray(streams.BLOCK_SIZE))
    for start in range(0, length, chunk_size):
        chunk_hash = manifests.new_hash()
        end = min(length, start + chunk_size)
        for offset in range(start, end, streams.BLOCK_SIZE):
            piece = piece_buffer[:min(streams.BLOCK_SIZE, end - offset)]
            if streams.pread_full(fd, piece, offset) != len(piece):
                raise OSError(errno.EIO, "the file is shorter than the data folded into it")
            chunk_hash.update(piece)
            volume_hash.update(piece)
        chunk_digests += chunk_hash.digest()
    return bytes(chunk_digests), volume_hash.digest()


# ---------------------------------------------------------------------------------------------
# Rebuilding lost volumes

@dataclass
class Member:
    """One volume of a group as the Rebuilder sees it."""
    name: str                      # how messages name it, e.g. "volume 3 (out/image.003)"
    length: int                    # from its manifest, or from a parity manifest's data_lengths
    file: object = None            # a readable binary file (seek, read); None when it is missing
    chunk_digests: bytes = None    # the digest of each chunk; None: what is read is trusted
    bad_chunks: set = field(default_factory=set)   # chunks known to be unreadable or damaged


@dataclass
class GroupHealth:
    """What a check of every chunk of a group found (reassemble --verify)."""
    parity_count: int
    lost_chunks: dict         # row -> sorted numbers of its chunks missing or damaged
    worst: int                # the most rows lost at any one chunk position

    @property
    def spare(self):
        """How many more volumes the group can lose (negative: it cannot be rebuilt now)."""
        return self.parity_count - self.worst


class Rebuilder:
    """Regenerates missing or damaged chunks of a group from its other volumes.

    Rows are erasure.Code rows: data volumes 0 .. G-1, then parity volumes G .. G+K-1. A chunk
    counts as lost when its file is missing, cannot be read, is short or does not match its
    digest; what was found lost is remembered in the member's bad_chunks. Memory: the chunk being
    read and one chunk-sized sum per row being rebuilt, plus a few streams.BLOCK_SIZE pieces.
    """

    def __init__(self, data_members, parity_members, chunk_size, group_name="the group"):
        self.members = list(data_members) + list(parity_members)
        self.code = erasure.Code(len(data_members), len(parity_members))
        self.chunk_size = chunk_size
        self.group_name = group_name
        self.chunks = manifests.chunk_count(max(m.length for m in self.members), chunk_size)
        self._plans = {}
        self._sums = {}                         # row -> its reused sum buffer
        self.checked = set()                    # (row, chunk) read and found good
        self.buffer = bytearray(chunk_size)     # the chunk being read

    def chunk_length(self, row, number):
        return max(0, min(self.chunk_size, self.members[row].length - number * self.chunk_size))

    def read_chunk(self, row, number):
        """Chunk `number` of a row as stored, or None when it is lost (then remembered as bad).
        The chunk is a memoryview of a buffer the next read reuses."""
        member = self.members[row]
        if member.file is None or number in member.bad_chunks:
            return None
        size = self.chunk_length(row, number)
        view = memoryview(self.buffer)[:size]
        try:
            # Whole chunks at once: member.file may be a copies.VolumeCopies.
            digest = chunks.read_chunk(member.file, number, self.chunk_size, view, piece_size=size)
        except (OSError, Error):
            digest = None      # an unreadable sector of a scratched disc: the chunk is lost
        if digest is not None and (member.chunk_digests is None or
                                   digest == manifests.chunk_digest(member.chunk_digests, number)):
            self.checked.add((row, number))
            return view
        member.bad_chunks.add(number)
        return None

    def chunk(self, row, number):
        """(data, rebuilt): chunk `number` of a row, checked, read as stored when it is intact,
        else rebuilt from the rest of the group (Error when it cannot be). The data is valid
        until the next call."""
        data = self.read_chunk(row, number)
        if data is not None:
            return data, False
        return self._rebuilt([row], number)[row], True

    def rebuild_volume(self, row, write):
        """Pass the right content of a whole row to write(buffer), chunk by chunk (write must
        use each buffer before it returns)."""
        for number in range(manifests.chunk_count(self.members[row].length, self.chunk_size)):
            write(self.chunk(row, number)[0])

    def _rebuilt(self, rows, number):
        """{row: memoryview}: chunk `number` of each row, rebuilt (valid until the next call)."""
        lost = set(rows)
        while True:
            known = self._known_rows(number, lost)
            try:
                plans = self._plan(rows, known)
            except erasure.NotEnoughVolumes:
                raise Error(self._beyond_repair(number, lost)) from None
            sums = self._sum_sources(plans, number)
            if sums is not None:
                rebuilt = {row: memoryview(sums[row])[:self.chunk_length(row, number)] for row in rows}
                for row, data in rebuilt.items():
                    self._check_rebuilt(row, number, data)
                return rebuilt
            # A source turned out damaged while being read: plan again without it.
            lost |= {r for r in known if number in self.members[r].bad_chunks}

    def _check_rebuilt(self, row, number, data):
        """A rebuilt chunk of a member whose digests are known must match its digest: the sources
        were all checked, so a mismatch means manifests that disagree with one another."""
        digests = self.members[row].chunk_digests
        if digests is not None and manifests.digest_of(data) != manifests.chunk_digest(digests, number):
            raise Error(f"chunk {number} of {self.members[row].name} as rebuilt from {self.group_name} "
                        "does not match its manifest: the manifests of the group disagree (altered)")

    def _known_rows(self, number, lost):
        """Rows that may serve as sources at chunk `number`: not lost, not known bad; a row that
        ends before the chunk is known to be zeros there."""
        return frozenset(
            r for r, m in enumerate(self.members)
            if self.chunk_length(r, number) == 0 or
            (r not in lost and m.file is not None and number not in m.bad_chunks))

    def _plan(self, rows, known):
        key = (tuple(rows), known)
        if key not in self._plans:
            self._plans[key] = self.code.recovery(rows, known)
        return self._plans[key]

    def _sum_sources(self, plans, number):
        """{row: numpy array} summing each plan's sources, one source chunk at a time; None when
        a source chunk turns out lost. The arrays are reused from one chunk to the next."""
        sources = sorted({s for plan in plans.values() for s in plan if self.chunk_length(s, number)})
        sums = {}
        for row in plans:
            if row not in self._sums:
                self._sums[row] = _zeros(self.chunk_size)
            sums[row] = self._sums[row]
            sums[row][:] = 0
        for source in sources:
            data = self.read_chunk(source, number)
            if data is None:
                return None
            # Piece by piece, so that each piece is scaled and added while in the CPU cache.
            for start in range(0, len(data), streams.BLOCK_SIZE):
                piece = data[start:start + streams.BLOCK_SIZE]
                for row, plan in plans.items():
                    erasure.add_scaled(sums[row][start:], plan.get(source, 0), piece)
        return sums

    def _beyond_repair(self, number, lost):
        names = [self.members[r].name for r in sorted(lost | self._lost_rows(number))]
        where = "" if self._whole(lost | self._lost_rows(number)) else \
            f" at chunk {number} (offset {number * self.chunk_size})"
        return (f"cannot rebuild {self.group_name}: {_join(names)} are missing or damaged{where}, "
                f"more than its {self.code.parity_count} parity volume"
                f"{'s' if self.code.parity_count > 1 else ''} can rebuild; find another copy of "
                "one of them")

    def _lost_rows(self, number):
        return {r for r, m in enumerate(self.members)
                if self.chunk_length(r, number) and (m.file is None or number in m.bad_chunks)}

    def _whole(self, rows):
        return all(self.members[r].file is None for r in rows)

    def health(self):
        """Read and check every chunk of every present member not read yet: a GroupHealth."""
        worst = 0
        lost_chunks = {}
        for number in range(self.chunks):
            for row in range(self.code.rows):
                if self.chunk_length(row, number) and (row, number) not in self.checked:
                    self.read_chunk(row, number)
            lost_rows = self._lost_rows(number)
            for row in lost_rows:
                lost_chunks.setdefault(row, []).append(number)
            worst = max(worst, len(lost_rows))
        return GroupHealth(self.code.parity_count, lost_chunks, worst)


def _zeros(size):
    """A numpy byte array for sums. numpy is imported here, at the first sum, not with the
    module: reading a healthy set with parity volumes never needs it (the import takes ~90 ms)."""
    import numpy
    return numpy.zeros(size, numpy.uint8)


def _join(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

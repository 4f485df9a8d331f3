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

import os
from dataclasses import dataclass, field

from . import cli, erasure, manifests
from .errors import Error

# Bytes folded per step: large enough for few Python-level steps, small enough that the ints
# int.from_bytes makes stay in the CPU cache (from_bytes runs ~3x slower on 4 MiB than on 1 MiB).
FOLD_BLOCK_SIZE = 1 << 20


def _read_at(read_file, offset, size):
    """Up to size bytes of read_file from offset (fewer only at its end)."""
    read_file.seek(offset)
    pieces = []
    while size:
        piece = read_file.read(size)
        if not piece:
            break
        pieces.append(piece)
        size -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _pread_full(fd, size, offset):
    pieces = []
    while size:
        piece = os.pread(fd, size, offset)
        if not piece:
            break
        pieces.append(piece)
        size -= len(piece)
        offset += len(piece)
    return b"".join(pieces)


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


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
    coefficients: list      # what each data volume of the group was multiplied by
    data_lengths: list      # the group's data volumes' lengths, in order


class ParityAccumulator:
    """The parity volumes of one group, built in files while the group's data volumes pass.

    Feed each data volume's bytes in order with add(), call end_data_volume() after each data
    volume, and finish() after the last. The files at `paths` are created (truncated) at once;
    finish() fsyncs and hashes them and closes them, discard() removes them. Memory: one fold
    block and a few blocks' worth of temporaries, whatever the volume size and K.
    """

    def __init__(self, paths, chunk_size, block_size=FOLD_BLOCK_SIZE):
        if not 1 <= len(paths) <= erasure.MAX_PARITY:
            raise Error(f"{len(paths)} parity volumes per group: choose 1 to {erasure.MAX_PARITY}")
        self.paths = list(paths)
        self.chunk_size = chunk_size
        self.block = bytearray(block_size)
        self.filled = 0
        self.data_offset = 0      # bytes of the current data volume taken so far
        self.data_lengths = []    # of the data volumes ended so far
        self.parity_length = 0
        self.fds = []
        try:
            for path in self.paths:
                self.fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666))
        except OSError as exc:
            self.discard()
            raise Error(f"cannot create parity volume {exc.filename}: {exc.strerror}") from None

    def add(self, data):
        """Take the next bytes of the current data volume."""
        view = memoryview(data)
        while view:
            take = min(len(view), len(self.block) - self.filled)
            self.block[self.filled:self.filled + take] = view[:take]
            self.filled += take
            view = view[take:]
            if self.filled == len(self.block):
                self._fold()

    def end_data_volume(self):
        """The current data volume is complete (the next add() starts the next one)."""
        self._fold()
        self.data_lengths.append(self.data_offset)
        self.data_offset = 0

    def _fold(self):
        """parity_p[x ...] += coefficient(p, i) * block for the pending block of data volume i."""
        if not self.filled:
            return
        index = len(self.data_lengths)
        if index >= erasure.MAX_DATA:
            raise Error(f"a parity group holds at most {erasure.MAX_DATA} data volumes")
        size, offset = self.filled, self.data_offset
        data = self.block if size == len(self.block) else self.block[:size]
        # Beyond the parity written so far every earlier data volume is zero: no read needed.
        held = min(size, max(0, self.parity_length - offset))
        try:
            for parity, fd in enumerate(self.fds):
                constant = erasure.coefficient(parity, index)
                if held:
                    stored = _pread_full(fd, held, offset)
                    updated = erasure.combine([(1, stored), (constant, data)], size)
                else:
                    updated = erasure.scale(constant, data)
                _pwrite_all(fd, updated, offset)
        except OSError as exc:
            raise Error(f"cannot write parity volume {self.paths[parity]}: {cli.describe_os_error(exc)}; "
                        "the parity volumes of this group are incomplete") from None
        self.data_offset += size
        self.parity_length = max(self.parity_length, offset + size)
        self.filled = 0

    def finish(self):
        """Make the parity volumes durable and hash them; a ParityVolume for each, in order."""
        if self.filled or self.data_offset:
            raise ValueError("end_data_volume() was not called after the last data volume")
        finished = []
        try:
            for parity, (path, fd) in enumerate(zip(self.paths, self.fds)):
                os.fsync(fd)
                chunk_digests, volume_digest = _hash_file(fd, self.parity_length, self.chunk_size)
                finished.append(ParityVolume(
                    parity=parity, path=path, length=self.parity_length, chunk_digests=chunk_digests,
                    volume_digest=volume_digest, data_lengths=list(self.data_lengths),
                    coefficients=[erasure.coefficient(parity, i) for i in range(len(self.data_lengths))]))
        except OSError as exc:
            raise Error(f"cannot finish parity volume {path}: {cli.describe_os_error(exc)}") from None
        self._close()
        return finished

    def _close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def discard(self):
        """Close and remove the parity files (after a failure: they would only take space)."""
        self._close()
        for path in self.paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def _hash_file(fd, length, chunk_size):
    """(chunk digests, volume digest) of the first `length` bytes of fd."""
    chunk_digests = bytearray()
    volume_hash = manifests.new_hash()
    for start in range(0, length, chunk_size):
        chunk_hash = manifests.new_hash()
        end = min(length, start + chunk_size)
        for offset in range(start, end, FOLD_BLOCK_SIZE):
            piece = _pread_full(fd, min(FOLD_BLOCK_SIZE, end - offset), offset)
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
    digest; what was found lost is remembered in the member's bad_chunks. Memory: one chunk being
    read and one chunk-sized sum per row being rebuilt.
    """

    def __init__(self, data_members, parity_members, chunk_size, group_name="the group"):
        self.members = list(data_members) + list(parity_members)
        self.code = erasure.Code(len(data_members), len(parity_members))
        self.chunk_size = chunk_size
        self.group_name = group_name
        self.chunks = manifests.chunk_count(max(m.length for m in self.members), chunk_size)
        self._plans = {}

    def chunk_length(self, row, number):
        return max(0, min(self.chunk_size, self.members[row].length - number * self.chunk_size))

    def read_chunk(self, row, number):
        """Chunk `number` of a row as stored, or None when it is lost (then remembered as bad)."""
        member = self.members[row]
        if member.file is None or number in member.bad_chunks:
            return None
        size = self.chunk_length(row, number)
        try:
            data = _read_at(member.file, number * self.chunk_size, size)
        except OSError:
            data = None     # an unreadable sector of a scratched disc: the chunk is lost
        if data is not None and len(data) == size and (
                member.chunk_digests is None or _digest_of(data) == _digest(member.chunk_digests, number)):
            return data
        member.bad_chunks.add(number)
        return None

    def chunk(self, row, number):
        """The right content of chunk `number` of a row: as stored when good, else rebuilt."""
        data = self.read_chunk(row, number)
        return data if data is not None else self.rebuild_chunks([row], number)[row]

    def rebuild_chunks(self, rows, number):
        """Rebuild chunk `number` of the rows given from the others: {row: bytes}. errors.Error
        naming what is lost when more rows than there are parity volumes are lost there."""
        size = max(self.chunk_length(r, number) for r in range(self.code.rows))
        lost = set(rows)
        while True:
            known = self._known_rows(number, lost)
            try:
                plans = self._plan(rows, known)
            except erasure.NotEnoughVolumes:
                raise Error(self._beyond_repair(number, lost)) from None
            sums = self._sum_sources(plans, number, size)
            if sums is not None:
                return {row: sums[row][:self.chunk_length(row, number)] for row in rows}
            # A source turned out damaged while being read: plan again without it.
            lost |= {r for r in known if number in self.members[r].bad_chunks}

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

    def _sum_sources(self, plans, number, size):
        """{row: bytes} summing each plan's sources, source by source in FOLD_BLOCK_SIZE pieces;
        None when a source chunk turns out lost."""
        sources = sorted({s for plan in plans.values() for s in plan if self.chunk_length(s, number)})
        pieces = range(0, size, FOLD_BLOCK_SIZE)
        sums = {row: [0] * len(pieces) for row in plans}
        for source in sources:
            data = self.read_chunk(source, number)
            if data is None:
                return None
            for row, plan in plans.items():
                constant = plan.get(source)
                if not constant:
                    continue
                row_sums = sums[row]
                for i, start in enumerate(pieces):
                    piece = data[start:start + FOLD_BLOCK_SIZE]
                    row_sums[i] ^= int.from_bytes(erasure.scale(constant, piece), "little")
        return {row: b"".join(total.to_bytes(min(FOLD_BLOCK_SIZE, size - start), "little")
                              for total, start in zip(row_sums, pieces))
                for row, row_sums in sums.items()}

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

    def check(self):
        """errors.Error when what is already known lost (missing files, bad chunks) is more than
        the parity can rebuild at some chunk position."""
        for number in range(self.chunks):
            if len(self._lost_rows(number)) > self.code.parity_count:
                raise Error(self._beyond_repair(number, set()))

    def rebuild_volume(self, row, write):
        """Pass the right content of a whole row to write(bytes), chunk by chunk."""
        for number in range(manifests.chunk_count(self.members[row].length, self.chunk_size)):
            write(self.chunk(row, number))

    def health(self):
        """Read and check every chunk of every present member: a GroupHealth."""
        worst = 0
        lost_chunks = {}
        for number in range(self.chunks):
            for row in range(self.code.rows):
                if self.chunk_length(row, number):
                    self.read_chunk(row, number)
            lost_rows = self._lost_rows(number)
            for row in lost_rows:
                lost_chunks.setdefault(row, []).append(number)
            worst = max(worst, len(lost_rows))
        return GroupHealth(self.code.parity_count, lost_chunks, worst)


def _digest_of(data):
    digest = manifests.new_hash()
    digest.update(data)
    return digest.digest()


def _digest(digests, number):
    return digests[number * manifests.DIGEST_SIZE:(number + 1) * manifests.DIGEST_SIZE]


def _join(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

"""Parity volumes built while data volumes stream past, and lost or damaged volumes rebuilt from
them byte for byte: every loss pattern up to K, refusal beyond, damage inside volumes."""

import io
import itertools
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import flipped, parity_rows, random_data
from mirrorpipe.sets import erasure, manifests, parity
from mirrorpipe.errors import Error

REPO = Path(__file__).resolve().parent.parent
CHUNK = 16 << 10
BLOCK = 10_000          # a fold block that does not divide the chunk: pieces straddle chunks


def chunk_digests(data, chunk_size=CHUNK):
    digests = bytearray()
    for start in range(0, len(data), chunk_size):
        digest = manifests.new_hash()
        digest.update(data[start:start + chunk_size])
        digests += digest.digest()
    return bytes(digests)


def new_accumulator(kind, paths):
    if kind == "inline":
        return parity.ParityAccumulator(paths, CHUNK, block_size=BLOCK)
    return parity.ParallelParityAccumulator(paths, CHUNK, workers=2, block_size=BLOCK)


ACCUMULATORS = ["inline", "parallel"]


def build_group(tmp_path, data, parity_count, seed=0, delete_after_feeding=False, kind="inline"):
    """Write each data volume to a file, feed it to an accumulator in pieces of random sizes as
    split-span would, optionally deleting it at once; the finished ParityVolumes."""
    pieces = random.Random(seed)
    accumulator = new_accumulator(kind, [str(tmp_path / f"image.parity{p + 1}") for p in range(parity_count)])
    for index, volume in enumerate(data):
        path = tmp_path / f"image.{index + 1:03d}"
        path.write_bytes(volume)
        with open(path, "rb") as stream:
            while piece := stream.read(pieces.randint(1, 3 * BLOCK)):
                accumulator.add(piece)
        if delete_after_feeding:
            path.unlink()
        accumulator.end_data_volume()
    return accumulator.finish()


def make_data(sizes, seed=1):
    """One volume's data per size, random and the same for the same seed."""
    return [random_data(size, seed=seed * 1000 + i) for i, size in enumerate(sizes)]


def members(rows, lost=(), names=None):
    """Members for the Rebuilder: the rows' bytes behind file objects, lost ones without a file."""
    return [parity.Member(name=names[r] if names else f"volume {r}", length=len(data),
                          file=None if r in lost else io.BytesIO(data), chunk_digests=chunk_digests(data))
            for r, data in enumerate(rows)]


def rebuilder(rows, data_count, lost=(), names=None):
    group = members(rows, lost, names)
    return parity.Rebuilder(group[:data_count], group[data_count:], CHUNK, group_name="group 1")


def rebuilt(rebuild, row):
    out = bytearray()
    rebuild.rebuild_volume(row, out.extend)
    return bytes(out)


# Group shapes: one data volume; several full ones; the set's last volume shorter (also shorter
# than one chunk, and not a multiple of the fold block or the chunk).
SHAPES = {
    "single": [50_000],
    "two": [40_000, 40_000],
    "short-last": [48_000, 48_000, 48_000, 48_000, 21_001],
    "tiny-last": [40_000, 40_000, 40_000, 300],
}


@pytest.mark.parametrize("kind", ACCUMULATORS)
@pytest.mark.parametrize("parity_count", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_volumes_hold_the_coefficient_weighted_sums_and_their_digests(tmp_path, shape, parity_count, kind):
    data = make_data(SHAPES[shape])
    finished = build_group(tmp_path, data, parity_count, kind=kind)
    expected = parity_rows(data, parity_count)
    assert [v.parity for v in finished] == list(range(parity_count))
    for volume, want in zip(finished, expected):
        stored = open(volume.path, "rb").read()
        assert stored == want
        assert volume.length == len(want) == max(SHAPES[shape])
        assert volume.chunk_digests == chunk_digests(want)
        digest = manifests.new_hash()
        digest.update(want)
        assert volume.volume_digest == digest.digest()
        assert volume.data_lengths == SHAPES[shape]
        assert volume.coefficients == [erasure.coefficient(volume.parity, i) for i in range(len(data))]


@pytest.mark.parametrize("kind", ACCUMULATORS)
def test_data_volumes_deleted_right_after_feeding_still_give_correct_parity(tmp_path, kind):
    data = make_data(SHAPES["short-last"], seed=5)
    finished = build_group(tmp_path, data, 2, delete_after_feeding=True, kind=kind)
    assert not list(tmp_path.glob("image.0*"))
    assert [open(v.path, "rb").read() for v in finished] == parity_rows(data, 2)


@pytest.mark.parametrize("parity_count", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_combination_of_up_to_k_lost_volumes_is_rebuilt_byte_identical(tmp_path, shape, parity_count):
    data = make_data(SHAPES[shape], seed=parity_count)
    rows = data + [open(v.path, "rb").read() for v in build_group(tmp_path, data, parity_count)]
    for count in range(1, parity_count + 1):
        for lost in itertools.combinations(range(len(rows)), count):
            rebuild = rebuilder(rows, len(data), lost)
            assert rebuild.health().worst <= parity_count   # what --verify reads
            for row in lost:
                assert rebuilt(rebuild, row) == rows[row], f"lost {lost}, row {row}"


@pytest.mark.parametrize("kind", ACCUMULATORS)
def test_lost_volumes_rebuilt_from_survivors_read_one_at_a_time(tmp_path, kind):
    """Disc by disc: the survivors pass one after another through an accumulator with the
    recovery coefficients; the scratch files end up holding the lost volumes."""
    data = make_data(SHAPES["short-last"], seed=12)
    rows = data + parity_rows(data, 2)
    code = erasure.Code(len(data), 2)
    lost = [1, len(data) - 1]
    sources = [r for r in range(code.rows) if r not in lost]
    scratch = [str(tmp_path / f"rebuilt{r}") for r in lost]
    if kind == "inline":
        accumulator = parity.ParityAccumulator(scratch, CHUNK, BLOCK, parities=lost,
                                               coefficient=parity.rebuild_coefficient(code, lost, sources))
    else:
        accumulator = parity.ParallelParityAccumulator(
            scratch, CHUNK, workers=2, block_size=BLOCK, parities=lost,
            coefficient=parity.rebuild_coefficient(code, lost, sources))
    for source in sources:
        accumulator.add(rows[source])
        accumulator.end_data_volume()
    for volume, row in zip(accumulator.finish(), lost):
        assert volume.parity == row
        rebuilt_bytes = open(volume.path, "rb").read()
        assert rebuilt_bytes[:len(rows[row])] == rows[row]
        assert not any(rebuilt_bytes[len(rows[row]):])
    with pytest.raises(erasure.NotEnoughVolumes):
        parity.rebuild_coefficient(code, [0, 1, 2], [3, 4, 5, 6])


@pytest.mark.parametrize("parity_count", [1, 2, 3])
def test_more_losses_than_parity_are_refused_naming_what_is_missing(parity_count):
    data = make_data(SHAPES["short-last"])
    rows = data + parity_rows(data, parity_count)
    names = [f"volume {i + 1}" for i in range(len(data))] + [f"parity volume {p + 1}" for p in range(parity_count)]
    lost = list(range(parity_count)) + [len(rows) - 1]        # the first data volumes and the last parity
    rebuild = rebuilder(rows, len(data), lost, names)
    with pytest.raises(Error) as caught:
        rebuilt(rebuild, 0)
    message = str(caught.value)
    assert "cannot rebuild group 1" in message and "\n" not in message
    for row in lost:
        assert names[row] in message
    assert f"{parity_count} parity volume" in message


def test_damage_inside_several_volumes_is_repaired_chunk_by_chunk():
    """Flipped bits in four volumes, at most two per chunk position, with two parity volumes."""
    data = make_data([48_000] * 4 + [21_001], seed=9)
    rows = data + parity_rows(data, 2)
    hits = {0: [100, 40_000], 2: [100, 20_000], 4: [20_500], 6: [40_001]}
    group = members(rows)
    for row, offsets in hits.items():
        damaged = rows[row]
        for offset in offsets:
            damaged = flipped(damaged, offset)
        group[row].file = io.BytesIO(damaged)
    rebuild = parity.Rebuilder(group[:5], group[5:], CHUNK)
    health = rebuild.health()
    assert health.lost_chunks == {0: [0, 2], 2: [0, 1], 4: [1], 6: [2]}
    assert (health.worst, health.spare) == (2, 0)
    for row in range(len(rows)):
        assert rebuilt(rebuild, row) == rows[row]


def test_a_third_damaged_chunk_at_one_position_with_two_parity_is_refused_with_its_offset():
    data = make_data([48_000] * 3, seed=10)
    rows = data + parity_rows(data, 2)
    group = members(rows)
    for row in (0, 1, 3):
        group[row].file = io.BytesIO(flipped(rows[row], CHUNK + 7))
    rebuild = parity.Rebuilder(group[:3], group[3:], CHUNK, group_name="group 2")
    assert rebuilt(rebuild, 2) == rows[2]                     # intact volumes still read
    with pytest.raises(Error, match=rf"cannot rebuild group 2: volume 0, volume 1 and volume 3 .* "
                                    rf"at chunk 1 \(offset {CHUNK}\)"):
        rebuilt(rebuild, 0)
    assert rebuild.health().spare == -1


def test_a_truncated_volume_file_has_its_missing_tail_rebuilt(tmp_path):
    """Real files: a volume cut short (copy interrupted) reads short from its new end on."""
    data = make_data([48_000] * 3 + [30_000], seed=13)
    rows = data + parity_rows(data, 1)
    paths = []
    for row, content in enumerate(rows):
        paths.append(tmp_path / f"volume{row}")
        paths[-1].write_bytes(content)
    os.truncate(paths[1], CHUNK + 100)
    group = [parity.Member(f"volume {row}", len(content), open(path, "rb", buffering=0), chunk_digests(content))
             for row, (path, content) in enumerate(zip(paths, rows))]
    rebuild = parity.Rebuilder(group[:4], group[4:], CHUNK)
    assert rebuilt(rebuild, 1) == rows[1]
    assert group[1].bad_chunks == {1, 2}
    for member in group:
        member.file.close()


class FailingReads(io.BytesIO):
    """A file whose reads fail (EIO, like a scratched disc) from one offset on."""

    def __init__(self, data, bad_from):
        super().__init__(data)
        self.bad_from = bad_from

    def readinto(self, buffer):
        if self.tell() >= self.bad_from:
            raise OSError(5, "Input/output error")
        return super().readinto(memoryview(buffer)[:self.bad_from - self.tell()])


def test_unreadable_chunks_count_as_lost_and_are_rebuilt():
    data = make_data([40_000] * 3, seed=11)
    rows = data + parity_rows(data, 1)
    group = members(rows)
    group[1].file = FailingReads(rows[1], bad_from=2 * CHUNK + 3)
    rebuild = parity.Rebuilder(group[:3], group[3:], CHUNK)
    assert rebuilt(rebuild, 1) == rows[1]
    assert group[1].bad_chunks == {2}


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_random_groups_and_loss_patterns_are_rebuilt(draw):
    parity_count = draw.draw(st.integers(1, 3), "parity_count")
    data_count = draw.draw(st.integers(1, 6), "data_count")
    full = draw.draw(st.integers(1, 3 * CHUNK), "volume length")
    last = draw.draw(st.integers(1, full), "last volume length")
    data = make_data([full] * (data_count - 1) + [last], seed=draw.draw(st.integers(0, 99), "seed"))
    rows = data + parity_rows(data, parity_count)
    lost_volumes = draw.draw(st.sets(st.integers(0, len(rows) - 1), max_size=parity_count), "lost")
    chunk_count = manifests.chunk_count(full, CHUNK)
    damaged = draw.draw(st.dictionaries(st.integers(0, chunk_count - 1),
                                        st.sets(st.integers(0, len(rows) - 1), max_size=parity_count - len(lost_volumes)),
                                        max_size=chunk_count), "damaged chunks per position")
    group = members(rows, lost_volumes)
    for number, hit in damaged.items():
        for row in hit - lost_volumes:
            offset = number * CHUNK
            if offset < len(rows[row]) and group[row].file is not None:
                group[row].file = io.BytesIO(flipped(group[row].file.getvalue(), offset))
    rebuild = parity.Rebuilder(group[:data_count], group[data_count:], CHUNK)
    for row in range(len(rows)):
        assert rebuilt(rebuild, row) == rows[row]


@pytest.mark.parametrize("kind", ACCUMULATORS)
def test_accumulator_rules(tmp_path, kind):
    paths = [str(tmp_path / "p1"), str(tmp_path / "p2"), str(tmp_path / "p3")]
    accumulator = new_accumulator(kind, paths)
    accumulator.add(os.urandom(3 * BLOCK))
    with pytest.raises(ValueError):
        accumulator.finish()
    accumulator.discard()
    assert not any(os.path.exists(p) for p in paths)
    with pytest.raises(Error, match="parity volumes per group"):
        new_accumulator(kind, [])
    with pytest.raises(Error, match="cannot create parity volume .*no-such-dir"):
        new_accumulator(kind, [str(tmp_path / "p1"), str(tmp_path / "no-such-dir" / "p2")])


def test_a_parity_worker_that_cannot_write_stops_the_group_with_its_message(tmp_path):
    """A write error in a worker (EFBIG from a file size limit the forked workers inherit) reaches
    the caller as a one-line errors.Error naming the parity volume."""
    paths = [str(tmp_path / "p1"), str(tmp_path / "p2")]
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * BLOCK, limit[1]))
    try:
        accumulator = new_accumulator("parallel", paths)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    with pytest.raises(Error, match=r"cannot write parity volume .*/p[12]: File too large"):
        for _ in range(20):
            accumulator.add(os.urandom(BLOCK))
    accumulator.discard()
    assert not any(os.path.exists(p) for p in paths)


def test_a_parity_worker_that_dies_stops_the_group(tmp_path):
    accumulator = new_accumulator("parallel", [str(tmp_path / "p1"), str(tmp_path / "p2")])
    accumulator.workers[1][0].kill()
    with pytest.raises(Error, match="parity worker process ended unexpectedly"):
        for _ in range(20):
            accumulator.add(os.urandom(BLOCK))
    accumulator.discard()


def test_parity_workers_end_when_their_caller_is_killed(tmp_path):
    script = (f"import os, sys, time; sys.path.insert(0, {str(REPO)!r}); from mirrorpipe.sets import parity; "
              f"a = parity.ParallelParityAccumulator([{str(tmp_path / 'p1')!r}, {str(tmp_path / 'p2')!r}], "
              f"{CHUNK}, workers=2); print(*[p.pid for p, _ in a.workers], flush=True); time.sleep(60)")
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in caller.stdout.readline().split()]
    assert len(workers) == 2
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 10
    try:
        while any(_state(pid) != "Z" for pid in workers):
            assert time.monotonic() < deadline, "parity workers outlived their caller"
            time.sleep(0.05)
    finally:
        for pid in workers:
            if _state(pid) != "Z":
                os.kill(pid, signal.SIGKILL)


def _state(pid):
    """A process's state letter; Z also for one that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("kind", ACCUMULATORS)
def test_discard_after_finish_keeps_the_finished_parity_volumes(tmp_path, kind):
    paths = [str(tmp_path / "p1"), str(tmp_path / "p2")]
    accumulator = new_accumulator(kind, paths)
    accumulator.add(b"data")
    accumulator.end_data_volume()
    accumulator.finish()
    accumulator.discard()
    assert all(os.path.exists(p) for p in paths)


def test_an_empty_group_makes_empty_parity(tmp_path):
    finished = build_group(tmp_path, [b""], 2)
    assert [(v.length, v.chunk_digests, open(v.path, "rb").read()) for v in finished] == [(0, b"", b"")] * 2

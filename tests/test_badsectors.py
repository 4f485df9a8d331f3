"""read-disk on sources with unreadable sectors: real EIO from the kernel, through faultfs (a
FUSE file) and a loop device over it. The image is complete, every readable byte is the
source's, unreadable sectors hold the fill, the map lists exactly the bad sectors as
ddrescuelog reads it, and the exit status is 3."""

import os
import random
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MIB, sh
from faultfs import SECTOR, FaultFS
from mirrorpipe.disk import badsectors, mapfile
from mirrorpipe.errors import EXIT_SECTORS_FILLED
from mirrorpipe.errors import UsageError


SIZE = 8 * MIB
SECTORS = SIZE // SECTOR


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "image"
    path.write_bytes(os.urandom(SIZE))
    return str(path)


def need_ddrescuelog():
    if shutil.which("ddrescuelog") is None:
        pytest.skip("needs ddrescuelog (Debian package gddrescue)")


def listed_bad_sectors(map_path):
    """Bad-sector numbers as GNU ddrescuelog reads them from the map."""
    out = subprocess.run(["ddrescuelog", "-l-", str(map_path)], capture_output=True, text=True,
                         check=True).stdout
    return [int(n) for n in out.split()]


def expected_image(image, bad_sectors, fill_sector=bytes(SECTOR)):
    data = bytearray(open(image, "rb").read())
    for sector in bad_sectors:
        data[sector * SECTOR:(sector + 1) * SECTOR] = fill_sector
    return bytes(data)


def sectors_of(ranges):
    return sorted({s for first, count, *_ in ranges for s in range(first, first + count)})


def runs(sectors):
    """Sorted sector numbers as (first, count) ranges that do not overlap, as faultfs wants."""
    found = []
    for sector in sectors:
        if found and found[-1][0] + found[-1][1] == sector:
            found[-1][1] += 1
        else:
            found.append([sector, 1])
    return [tuple(run) for run in found]


def read_disk(source, tmp_path, options=""):
    """read-disk SOURCE to a file; (CompletedProcess, image bytes, map path)."""
    map_path = tmp_path / "map"
    out = tmp_path / "out.img"
    result = sh(f"read-disk --map {map_path} {options} {source} > {out}")
    return result, out.read_bytes(), map_path


# Single bad sectors, areas across the 1 MiB block boundaries, and an area at the very end.
SCATTERED = [(0, 1), (10, 1), (100, 3), (2047, 2), (4090, 20), (8000, 1), (8002, 1),
             (SECTORS - 5, 5)]


def test_bad_sectors_are_filled_mapped_and_reported(image, tmp_path, faultfs):
    need_ddrescuelog()
    disk = faultfs.mount(image, bad=SCATTERED)
    result, out, map_path = read_disk(disk.path, tmp_path, "--fill 0xDEADBEEF")
    bad = sectors_of(SCATTERED)
    assert result.returncode == EXIT_SECTORS_FILLED, result.stderr_text
    assert out == expected_image(image, bad, bytes.fromhex("DEADBEEF") * (SECTOR // 4))
    assert listed_bad_sectors(map_path) == bad
    summary = result.stderr_text
    assert f"{len(bad) * SECTOR} bytes unreadable ({len(bad)} sectors of 512 bytes) in 8 areas" in summary
    assert "sector 0 (bytes 0-511), sector 10 (bytes 5120-5631), sectors 100-102" in summary
    assert f"map in {map_path}" in summary


def test_text_fill_can_be_found_in_the_image(image, tmp_path, faultfs):
    disk = faultfs.mount(image, bad=[(3000, 2)])
    result, out, _ = read_disk(disk.path, tmp_path, "--fill 'BAD SECTOR '")
    assert result.returncode == EXIT_SECTORS_FILLED
    fill = (b"BAD SECTOR " * 47)[:SECTOR]
    assert out.find(fill) == 3000 * SECTOR and out.find(fill, 3001 * SECTOR) == 3001 * SECTOR
    assert out == expected_image(image, [3000, 3001], fill)


def test_whole_pipeline_restores_with_the_filled_sectors(image, tmp_path, faultfs):
    disk = faultfs.mount(image, bad=SCATTERED)
    restored = tmp_path / "restored.img"
    result = sh(f"read-disk -q {disk.path} | compress | compress -d > {restored}; "
                "echo ${PIPESTATUS[@]}")
    assert result.stdout.split() == [str(EXIT_SECTORS_FILLED).encode(), b"0", b"0"], result.stderr_text
    assert result.stderr_text == ""
    assert restored.read_bytes() == expected_image(image, sectors_of(SCATTERED))


def test_healthy_source_exits_0_and_maps_everything_read(image, tmp_path, faultfs):
    need_ddrescuelog()
    disk = faultfs.mount(image)
    result, out, map_path = read_disk(disk.path, tmp_path)
    assert result.returncode == 0 and result.stderr_text == ""
    assert out == open(image, "rb").read()
    assert open(map_path).read().endswith(f"0x00000000  0x{SIZE:08X}  +\n")
    assert "current status: finished" in subprocess.run(
        ["ddrescuelog", "-t", str(map_path)], capture_output=True, text=True).stdout


def test_errors_that_heal_are_retried(image, tmp_path, faultfs):
    # Each of these ranges fails its first two reads, then reads.
    flaky = [(50, 1, 2), (3000, 8, 2)]
    disk = faultfs.mount(image, bad=flaky)
    result, out, map_path = read_disk(disk.path, tmp_path, "--retries 2")
    assert result.returncode == 0, result.stderr_text
    assert out == open(image, "rb").read()
    # The retries healed them: no narrowing (one failed read and one failed retry per range).
    assert disk.stats()["failed"] == 4


def test_offset_and_length_with_bad_sectors(image, tmp_path, faultfs):
    need_ddrescuelog()
    disk = faultfs.mount(image, bad=SCATTERED)
    start, length = 3000, 5 * MIB  # not sector-aligned
    result, out, map_path = read_disk(disk.path, tmp_path, f"--offset {start} --length {length}")
    assert result.returncode == EXIT_SECTORS_FILLED
    assert out == expected_image(image, sectors_of(SCATTERED))[start:start + length]
    first, last = start // SECTOR, (start + length - 1) // SECTOR
    assert listed_bad_sectors(map_path) == [s for s in sectors_of(SCATTERED) if first <= s <= last]


def test_source_that_stops_answering_is_crossed_by_probes(image, tmp_path, faultfs):
    need_ddrescuelog()
    half = SIZE // 2 + 3 * SECTOR
    disk = faultfs.mount(image, fail_from=half)
    result, out, map_path = read_disk(disk.path, tmp_path, "--max-retry-time 0")
    assert result.returncode == EXIT_SECTORS_FILLED
    assert out == expected_image(image, range(half // SECTOR, SECTORS))
    # Not one read per sector (8189 of them): probes in growing steps, then halving.
    assert disk.stats()["failed"] < 60
    untried = subprocess.run(["ddrescuelog", "-l?", str(map_path)], capture_output=True,
                             text=True).stdout.split()
    assert sorted(listed_bad_sectors(map_path) + [int(s) for s in untried]) == \
        list(range(half // SECTOR, SECTORS))
    assert "bytes of them were skipped without being tried (the retry time ran out)" in result.stderr_text


def test_with_time_the_skipped_area_is_read_sector_by_sector(image, tmp_path, faultfs):
    need_ddrescuelog()
    half = SIZE // 2 + 3 * SECTOR
    disk = faultfs.mount(image, fail_from=half, bad=[(100, 1)])
    result, out, map_path = read_disk(disk.path, tmp_path)
    assert result.returncode == EXIT_SECTORS_FILLED
    bad = [100] + list(range(half // SECTOR, SECTORS))
    assert out == expected_image(image, bad)
    assert listed_bad_sectors(map_path) == bad


def test_retry_time_bounds_the_time_spent_in_a_dead_area(image, tmp_path, faultfs):
    need_ddrescuelog()
    half = SIZE // 2
    # Each failing read takes 2 ms, like a disk giving up on a sector (real ones take longer).
    disk = faultfs.mount(image, fail_from=half, error_delay_us=2000)
    result, out, map_path = read_disk(disk.path, tmp_path, "--max-retry-time 1")
    assert result.returncode == EXIT_SECTORS_FILLED
    assert out == expected_image(image, range(half // SECTOR, SECTORS))
    # About 1 s of sector-by-sector reading, not the 8192 reads (16 s) of the whole dead half.
    assert disk.stats()["failed"] < 2000
    bad = listed_bad_sectors(map_path)
    untried = subprocess.run(["ddrescuelog", "-l?", str(map_path)], capture_output=True,
                             text=True).stdout.split()
    assert bad and untried and len(bad) + len(untried) == SECTORS - half // SECTOR


def test_loop_device_saves_the_readable_sectors_of_a_failing_page(image, tmp_path, faultfs,
                                                                  faulty_loop_device):
    need_ddrescuelog()
    # Sector 4101 is alone in its 4 KiB page (sectors 4096-4103), which buffered reads lose.
    bad = [(4101, 1), (9, 1), (SECTORS - 1, 1)]
    device = faulty_loop_device(faultfs.mount(image, bad=bad).path)
    result, out, map_path = read_disk(device, tmp_path)
    assert result.returncode == EXIT_SECTORS_FILLED, result.stderr_text
    assert out == expected_image(image, sectors_of(bad))
    assert listed_bad_sectors(map_path) == sectors_of(bad)


def test_a_block_device_meets_a_dead_area_with_few_failed_requests(tmp_path, faultfs, faulty_loop_device):
    """Buffered reads of a block device would make the kernel retry a failing 1 MiB block and the
    read-ahead before it page by page (about 550 failed requests here); read-disk reads block
    devices with O_DIRECT, so the dead half costs about what it costs on the file itself."""
    big = tmp_path / "big"
    size = 64 * MIB     # long enough a healthy stretch for the read-ahead window to open fully
    with open(big, "wb") as f:
        f.truncate(size)
    disk = faultfs.mount(str(big), fail_from=size // 2)
    device = faulty_loop_device(disk.path)
    result, out, _ = read_disk(device, tmp_path, "--max-retry-time 0")
    assert result.returncode == EXIT_SECTORS_FILLED, result.stderr_text
    assert len(out) == size and out == bytes(size)
    assert disk.stats()["failed"] < 80


def read_through_engine(path, size, **options):
    """The engine over the file at path, from Python; (image bytes, reader)."""
    fd = os.open(path, os.O_RDONLY)
    out = bytearray(size)
    try:
        with badsectors.BadSectorReader(fd, 0, size, **options) as reader:
            position = 0
            while position < size:
                position += reader.read(position, memoryview(out)[position:position + MIB])
    finally:
        os.close(fd)
    return bytes(out), reader


@pytest.mark.parametrize("cost_ratio, reads_per_bad, failed_per_bad", [
    (1, 9.5, 5.5),      # failed reads as quick as good ones, as faultfs's: fewest reads
    (1000, None, 1.2),  # a real disk's (seconds against a fraction of a millisecond): fewest failures
])
def test_reads_per_scattered_bad_sector(image, faultfs, monkeypatch, cost_ratio, reads_per_bad,
                                        failed_per_bad):
    """1 % of the sectors bad, each alone, spread at random: the read requests faultfs counts per
    bad sector, beyond those of the healthy source, stay near the least possible (about 8: each
    read answers yes or no, and where the bad sectors are holds about 8 bits per bad sector).
    Halving the rest of the block after each bad sector took about 12 (7 of them failed).
    The cost ratio of failed to good reads, measured by the engine, is pinned so that the plan,
    and the count, do not depend on the timing of the machine."""
    monkeypatch.setattr(badsectors.BadSectorReader, "_cost_ratio", lambda self: float(cost_ratio))
    bad = sorted(random.Random(5).sample(range(SECTORS), SECTORS // 100))
    healthy = faultfs.mount(image)
    read_through_engine(healthy.path, SIZE)
    disk = faultfs.mount(image, bad=runs(bad))
    out, reader = read_through_engine(disk.path, SIZE, max_retry_time=0)
    assert out == expected_image(image, bad)
    assert [s for start, end, _ in reader.map.areas(mapfile.UNREAD)
            for s in range(start // SECTOR, end // SECTOR)] == bad
    assert reader.map.areas(mapfile.BAD_SECTOR) == reader.map.areas(mapfile.UNREAD)
    stats = disk.stats()
    extra_reads = (stats["reads"] - healthy.stats()["reads"]) / len(bad)
    assert stats["failed"] >= len(bad), "each bad sector fails at least once: the count is wrong"
    if reads_per_bad:
        assert extra_reads <= reads_per_bad
    assert stats["failed"] / len(bad) <= failed_per_bad


@given(st.lists(st.tuples(st.integers(0, 6143), st.integers(1, 300)), max_size=6),
       st.one_of(st.none(), st.integers(0, 6143)), st.integers(0, 2), st.sampled_from([0, 60]))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_faults_read_through_the_engine(faultfs_directory, image, bad, dead_from, retries,
                                            retry_time):
    """The engine from Python, whatever the bad ranges and wherever the source stops answering:
    the map is true (every bad sector is mapped bad or non-tried, every sector mapped bad is
    unreadable), the image holds the source's bytes where the map says finished and the fill
    elsewhere, and with retry time the map lists exactly the unreadable sectors."""
    size = 3 * MIB
    sectors = size // SECTOR
    bad = runs(sectors_of((first, min(count, sectors - first)) for first, count in bad))
    dead = range(sectors if dead_from is None else dead_from, sectors)
    unreadable = sorted(set(sectors_of(bad)) | set(dead))
    fs = FaultFS(faultfs_directory)
    try:
        disk = fs.mount(image, bad=bad, fail_from=None if dead_from is None else dead_from * SECTOR)
        out, reader = read_through_engine(disk.path, size, retries=retries, max_retry_time=retry_time)
    finally:
        fs.close()

    def mapped(statuses):
        return [s for start, end, _ in reader.map.areas(statuses)
                for s in range(start // SECTOR, end // SECTOR)]
    not_read = mapped(mapfile.UNREAD)
    assert set(unreadable) <= set(not_read)
    assert set(mapped(mapfile.BAD_SECTOR)) <= set(unreadable)
    if retry_time:
        assert mapped(mapfile.BAD_SECTOR) == not_read == unreadable
    assert bytes(out) == expected_image(image, not_read)[:size]
    assert reader.unreadable_bytes() == len(not_read) * SECTOR


@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 64), st.integers(1, 4)), max_size=6),
       st.integers(0, 2))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_errors_that_come_and_go(faultfs_directory, image, flaky, retries):
    """Sectors that fail a few reads, then read: whatever the engine saw, the image holds the
    source's bytes where the map says finished, the fill elsewhere, and only flaky sectors are
    mapped bad."""
    size = 2 * MIB
    taken = set()
    ranges = []
    for first, count, failures in flaky:  # faultfs wants ranges apart
        sectors = set(range(first, first + count))
        if not sectors & taken:
            taken |= sectors
            ranges.append((first, count, failures))
    fs = FaultFS(faultfs_directory)
    try:
        out, reader = read_through_engine(fs.mount(image, bad=ranges).path, size, retries=retries)
    finally:
        fs.close()
    not_read = [s for start, end, _ in reader.map.areas(mapfile.UNREAD)
                for s in range(start // SECTOR, end // SECTOR)]
    assert set(not_read) <= taken
    assert bytes(out) == expected_image(image, not_read)[:size]


def test_fill_patterns():
    assert badsectors.parse_fill_pattern("0xDEADbeef") == b"\xde\xad\xbe\xef"
    assert badsectors.parse_fill_pattern("BAD") == b"BAD"
    for wrong in ("0xABC", "0xZZ", ""):
        with pytest.raises(UsageError):
            badsectors.parse_fill_pattern(wrong)


def test_map_of_a_stream_is_a_usage_error(tmp_path):
    result = sh(f"echo data | read-disk --map {tmp_path / 'map'} /dev/stdin | cat")
    assert result.returncode == 2 and "drop --map" in result.stderr_text

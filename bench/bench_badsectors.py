#!/usr/bin/env python3
"""Benchmark read-disk on sources with unreadable sectors against the same source healthy.

The sources are one image served by faultfs (tests/faultfs: a FUSE file whose chosen sectors
fail with EIO from the kernel), optionally through a loop device over it (a block device):

  healthy         no errors
  1% sectors      1% of the 512-byte sectors unreadable, each alone, spread at random
  1% 4K clusters  1% of the sectors unreadable in runs of 8 (a bad physical sector of a 512e disk)
  dead half       every read from the middle on fails (a disk that stops answering),
                  with --max-retry-time 0 (probes only) and 10 (then sector by sector for 10 s)

Each case runs `read-disk --map MAP SOURCE > /dev/null` --runs times; the table gives the median
time, the ratio to the healthy median, the read requests (and failed ones) faultfs answered per
run, for the 1 % cases the read requests per bad sector beyond those of the healthy source, and
the time per read request beyond those of the healthy source. Set that beside the round trip of
one bare 512-byte read, measured on the healthy source and printed under its row: the rest is
mostly read-disk's own work per read (reads of many sectors take a little longer too), and no
reader can beat its reads times the round trip (with 1 % of the sectors bad alone, at least about
8 reads per bad sector: each read answers yes or no).
Needs root, /dev/fuse, gcc, pkg-config and the Debian packages fuse3 and libfuse3-dev.

With --baseline DIR (another checkout of mirrorpipe, e.g. `git archive HEAD | tar -x -C DIR`),
its read-disk runs too, alternately with this one's on the same sources, so that both meet the
same load; each gets its own rows, and its ratios are to its own healthy median.

    python bench/bench_badsectors.py                 # 256 MiB, 3 runs, FUSE file
    python bench/bench_badsectors.py --size 1G --loop
    python bench/bench_badsectors.py --error-delay-us 1000 --runs 1   # errors slow as a disk's
    python bench/bench_badsectors.py --baseline /tmp/before --runs 5

Run it with a Python that has mirrorpipe's dependencies: bin/read-disk runs with it.
"""

import argparse
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, CHECKOUT)
sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
from faultfs import SECTOR, FaultFS, loop_device, missing_requirement  # noqa: E402
from mirrorpipe.units import format_size, parse_size  # noqa: E402

READ_DISK = os.path.join(CHECKOUT, "bin", "read-disk")
BAD_FRACTION = 0.01
ROUND_TRIP_READS = 2000


def scattered_bad_sectors(sectors, run_length, rng):
    """(first, count) runs of run_length sectors, BAD_FRACTION of all sectors, apart and sorted."""
    runs = int(sectors * BAD_FRACTION / run_length)
    firsts = sorted(rng.sample(range(sectors // run_length), runs))
    return [(first * run_length, run_length) for first in firsts]


def make_image(path, size):
    with open(path, "wb") as f:
        for _ in range(size // (16 << 20)):
            f.write(os.urandom(16 << 20))
        f.write(os.urandom(size % (16 << 20)))


def read_round_trip(source, sectors, rng):
    """Median microseconds of a bare one-sector O_DIRECT read of source at random sectors: what
    every read of the narrowing costs at least."""
    fd = os.open(source, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, SECTOR)  # page-aligned, as O_DIRECT wants
    times = []
    try:
        for _ in range(ROUND_TRIP_READS):
            offset = rng.randrange(sectors) * SECTOR
            began = time.perf_counter()
            os.preadv(fd, [buffer], offset)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        buffer.close()
    return statistics.median(times) * 1e6


def time_read_disk(read_disk, source, options, map_path):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, read_disk, "-q", "--map", map_path, *options, source],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 3):
        raise SystemExit(f"read-disk failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed, result.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop", action="store_true",
                        help="read a loop device over the FUSE file (a block device) instead")
    parser.add_argument("--error-delay-us", type=int, default=0, metavar="N",
                        help="make every failing read take N microseconds, as a real disk's do")
    parser.add_argument("--workdir", default=None, help="where the image goes (default: a temp dir)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="another mirrorpipe checkout to run alternately with this one")
    args = parser.parse_args()
    engines = [("", READ_DISK)]
    if args.baseline:
        engines = [("this: ", READ_DISK), ("baseline: ", os.path.join(args.baseline, "bin", "read-disk"))]
        if not os.path.exists(engines[1][1]):
            raise SystemExit(f"no bin/read-disk in {args.baseline}")
    reason = missing_requirement()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    size = args.size // (1 << 20) * (1 << 20)
    sectors = size // SECTOR
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="bench-badsectors-", dir=args.workdir)
    fs = FaultFS(workdir)
    try:
        image = os.path.join(workdir, "image")
        make_image(image, size)
        cases = [
            ("healthy", {}, []),
            ("1% sectors", {"bad": scattered_bad_sectors(sectors, 1, rng)}, []),
            ("1% 4K clusters", {"bad": scattered_bad_sectors(sectors, 8, rng)}, []),
            ("dead half, --max-retry-time 0", {"fail_from": size // 2}, ["--max-retry-time", "0"]),
            ("dead half, --max-retry-time 10", {"fail_from": size // 2}, ["--max-retry-time", "10"]),
        ]
        print(f"{format_size(size)} source, {'loop device over ' if args.loop else ''}faultfs, "
              f"{args.error_delay_us} us per failing read, {args.runs} runs per case, medians; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'case':42} {'time s':>8} {'MB/s':>8} {'ratio':>7} {'reads/run':>10} {'failed/run':>10} "
              f"{'reads/bad':>9} {'us/read':>8}  exit")
        healthy = {}
        for name, faults, options in cases:
            disk = fs.mount(image, error_delay_us=args.error_delay_us, **faults)
            source_context = loop_device(disk.path) if args.loop else None
            source = source_context.__enter__() if source_context else disk.path
            times = {label: [] for label, _ in engines}
            counts = {label: [0, 0] for label, _ in engines}
            statuses = {}
            try:
                for _ in range(args.runs):
                    for label, read_disk in engines:
                        if args.loop:  # each run starts from the disk, not from the page cache
                            subprocess.run(["blockdev", "--flushbufs", source], check=True)
                        before = disk.stats()
                        elapsed, status = time_read_disk(read_disk, source, options,
                                                         os.path.join(workdir, "map"))
                        after = disk.stats()
                        times[label].append(elapsed)
                        statuses[label] = status
                        counts[label][0] += after["reads"] - before["reads"]
                        counts[label][1] += after["failed"] - before["failed"]
                round_trip = None if faults else read_round_trip(source, sectors, random.Random(args.seed))
            finally:
                if source_context:
                    source_context.__exit__(None, None, None)
            bad_sectors = sum(count for _, count in faults.get("bad", []))
            for label, _ in engines:
                median = statistics.median(times[label])
                reads, failed = (n // args.runs for n in counts[label])
                healthy.setdefault(label, (median, reads))
                extra_reads = reads - healthy[label][1]
                per_bad = f"{extra_reads / bad_sectors:9.2f}" if bad_sectors else f"{'':9}"
                per_read = (f"{(median - healthy[label][0]) / extra_reads * 1e6:8.1f}" if extra_reads > 0
                            else f"{'':8}")
                print(f"{label + name:42} {median:8.2f} {size / median / 1e6:8.0f} "
                      f"{median / healthy[label][0]:7.1f} {reads:>10} {failed:>10} {per_bad} {per_read}"
                      f"  {statuses[label]}", flush=True)
            if round_trip is not None:
                print(f"  (a bare 512-byte read of this source: {round_trip:.1f} us, median of "
                      f"{ROUND_TRIP_READS})", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        fs.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

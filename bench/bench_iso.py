#!/usr/bin/env python3
"""Benchmark ISO packaging against copying: `burn-iso VOLUME` vs `cp VOLUME X && sync X`.

Makes a volume of incompressible data (what a compressed stream is) with split-span, then times
both commands several times, alternating, each writing a new file that is fsync'ed (burn-iso
syncs its image before renaming it; `sync FILE` does the same for cp's copy). Prints the median
times and the ratio cp / burn-iso, writes JSON to the work directory, exits 0 when the ratio
meets the target (issue 4: packaging runs at least at 0.8 of the speed of cp).

Also prints the ISO overhead of a full volume of every media preset (bytes of image beyond the
volume, and the sectors a burned disc keeps free).

Run with a Python that has mirrorpipe's dependencies: .venv/bin/python bench/bench_iso.py
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, CHECKOUT)
from mirrorpipe import iso, manifests, media  # noqa: E402 - the checkout, not installed
from mirrorpipe.units import format_size, parse_size  # noqa: E402

BIN = os.path.join(CHECKOUT, "bin")
MIN_RATIO = 0.8


def timed(command):
    started = time.monotonic()
    subprocess.run(command, shell=True, check=True)
    return time.monotonic() - started


def make_volume(workdir, size):
    """NAME.001 of SIZE bytes of random data, cut and hashed by split-span."""
    volume = os.path.join(workdir, "set", "bench.001")
    if not os.path.exists(volume):
        subprocess.run(f"head -c {size} /dev/urandom | {BIN}/split-span --size {size} --name bench "
                       f"{workdir}/set", shell=True, check=True)
    return volume


def overhead_table():
    """Per preset: a full volume's image size beyond the volume, and the disc's free sectors
    after burning it (computed by pycdlib's layout, as iso.package lays it out)."""
    rows = []
    for preset in media.PRESETS.values():
        length = media.volume_size_for(preset)
        chunks = manifests.chunk_count(length, manifests.DEFAULT_CHUNK_SIZE)
        bound = iso.image_size_bound(length, manifests.DEFAULT_CHUNK_SIZE)
        file_systems = iso.image_size("x.001", length, 0, 0) - length
        largest = iso.largest_volume(preset.sectors, manifests.DEFAULT_CHUNK_SIZE)
        rows.append({
            "preset": preset.name, "sectors": preset.sectors, "volume": length, "chunks": chunks,
            "file_system_overhead": file_systems, "image_bound": bound,
            "image_overhead_bound": bound - length, "burned_sectors": iso.burned_sectors(bound),
            "spare_sectors": preset.sectors - iso.burned_sectors(bound),
            "largest_volume": largest, "reserve_needed": preset.capacity - largest,
            "reserve_given": preset.capacity - length,
        })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("1536M"), help="volume size (default 1536M)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mirrorpipe-bench-iso"))
    args = parser.parse_args()
    # The bin/ launchers run on `python3` from PATH: make it this interpreter, which has the deps.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    os.makedirs(args.workdir, exist_ok=True)

    print(f"{'preset':<8} {'volume':>16} {'fs overhead':>12} {'image - volume':>15} "
          f"{'spare sectors':>14} {'reserve needed':>15} {'reserve given':>14}")
    table = overhead_table()
    for row in table:
        print(f"{row['preset']:<8} {row['volume']:>16,} {row['file_system_overhead']:>12,} "
              f"{row['image_overhead_bound']:>15,} {row['spare_sectors']:>14,} "
              f"{row['reserve_needed']:>15,} {row['reserve_given']:>14,}")

    volume = make_volume(args.workdir, args.size)
    image, copy = os.path.join(args.workdir, "bench.001.iso"), os.path.join(args.workdir, "copy")
    times = {"burn-iso": [], "cp": []}
    for _ in range(args.runs):
        for path in (image, copy):
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run(["sync"], check=True)
        times["burn-iso"].append(timed(f"{BIN}/burn-iso -q -o {args.workdir} {volume}"))
        subprocess.run(["sync"], check=True)
        times["cp"].append(timed(f"cp {volume} {copy} && sync {copy}"))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["cp"] / medians["burn-iso"]
    rate = args.size / medians["burn-iso"]
    print(f"\nvolume {format_size(args.size)}, {args.runs} runs: burn-iso median {medians['burn-iso']:.2f} s "
          f"({format_size(rate)}/s), cp median {medians['cp']:.2f} s; ratio cp/burn-iso {ratio:.2f} "
          f"(target >= {MIN_RATIO})")
    with open(os.path.join(args.workdir, "bench_iso.json"), "w") as stream:
        json.dump({"size": args.size, "times": times, "medians": medians, "ratio": ratio,
                   "overhead": table}, stream, indent=1)
    for path in (image, copy):
        if os.path.exists(path):
            os.unlink(path)
    return 0 if ratio >= MIN_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())

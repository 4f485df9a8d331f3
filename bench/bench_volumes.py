#!/usr/bin/env python3
"""Benchmark split-span and reassemble against split and cat, side by side, on the same stream.

  split:      cat STREAM | split-span --size V A/       vs  cat STREAM | split -b V - B/image. && sync B/*
  join:       reassemble A/ > /dev/null                 vs  cat A/image.??? > /dev/null
  join|pipe:  reassemble A/ | cat > /dev/null           vs  cat A/image.??? | cat > /dev/null
and the peak RSS of split-span and reassemble at two volume sizes (memory must not grow with it).
Every process runs under /usr/bin/time: the table also shows each pipeline's CPU seconds (user +
system, all processes), which other load on a shared machine disturbs less than elapsed time.

split-span makes every volume durable (fsync) before it counts as finished, so the split side
syncs its files too. reassemble checks every chunk's xxh3-128 hash and the stream's hash; cat
checks nothing. The stream is random bytes (what a compressed or encrypted stream looks like to
split-span). Prints a table; exits 0 when every target is met, 1 otherwise.

Run it with a Python that has mirrorpipe's dependencies (e.g. .venv/bin/python bench/bench_volumes.py
--size 2G): the bin/ launchers are run with the same interpreter.
"""

import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from bench_core import (BIN, CHECKOUT, MAX_RSS, MB, TIME, BenchError, fresh_dir, measurements,  # noqa: E402
                        sh, time_side_by_side, warm_cache)
from mirrorpipe.units import format_size, parse_size  # noqa: E402 - bench_core put the checkout on sys.path

MIN_SPEED_RATIO = 0.9


def measured(rss_dir, pipeline, process, command):
    """command run under /usr/bin/time, its peak RSS and CPU time kept per run ($RUN) where
    bench_core.measurements() reads them."""
    return f'{TIME} -f "%M %U %S" -o {sh(os.path.join(rss_dir, pipeline + "."))}"$RUN".{process} {command}'


def make_stream(workdir, size):
    path = os.path.join(workdir, f"stream-{size}")
    if not os.path.exists(path):
        print(f"bench: writing {format_size(size)} of random data to {path}", file=sys.stderr)
        subprocess.run(f"head -c {size} /dev/urandom > {sh(path + '.part')}", shell=True, check=True)
        os.rename(path + ".part", path)
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)   # into the page cache
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=2 << 30, help="stream size (default 2G)")
    parser.add_argument("--volume-size", type=parse_size, default=256 << 20,
                        help="volume size for the timing (default 256M)")
    parser.add_argument("--memory-volume-sizes", default="64M,1G", metavar="SIZE,SIZE",
                        help="volume sizes at which peak RSS is compared (default 64M,1G)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per side (default 3)")
    parser.add_argument("--workdir", default="/var/tmp/mirrorpipe-bench-volumes",
                        help="where the stream and the volumes go (needs 3x the stream size)")
    args = parser.parse_args()
    if shutil.which(TIME) is None:
        raise BenchError(f"needs {TIME} (Debian package time)")
    os.makedirs(args.workdir, exist_ok=True)
    rss_dir = fresh_dir(os.path.join(args.workdir, "rss"))
    stream = make_stream(args.workdir, args.size)
    ours_dir, stock_dir = os.path.join(args.workdir, "ours"), os.path.join(args.workdir, "stock")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    size = args.volume_size

    def clean(name=None):
        shutil.rmtree(ours_dir, ignore_errors=True)
        fresh_dir(stock_dir)

    rows = []

    def compare(name, pipelines, **hooks):
        """Time {side: [(process, command), ...]} (a pipeline, every process measured); a row."""
        print(f"bench: {name}, {args.runs} runs each", file=sys.stderr)
        texts = {side: " | ".join(measured(rss_dir, f"{name}-{side}", process, command)
                                  for process, command in stages)
                 for side, stages in pipelines.items()}
        timed = time_side_by_side(texts, args.runs, env, **hooks)
        cpu = {side: measurements(rss_dir, f"{name}-{side}")[1] for side in pipelines}
        rows.append((name, timed["ours"][0], timed["stock"][0], cpu["ours"], cpu["stock"]))

    feed = ("cat", sh("cat", stream))
    compare("split", {
        "ours": [feed, ("split-span", sh(f"{BIN}/split-span", "-q", "--size", size, ours_dir))],
        # split-span makes each volume durable before it counts; split's files get the same.
        "stock": [feed, ("split", f"sh -c {sh(f'split -b {size} - {stock_dir}/image. && sync {stock_dir}/*')}")],
    }, before=clean)
    clean()   # the set the join comparisons read, made untimed (before() removed the last one)
    subprocess.run(f"cat {sh(stream)} | {sh(f'{BIN}/split-span', '-q', '--size', size, ours_dir)}",
                   shell=True, env=env, check=True)
    if subprocess.run(f"cat {sh(ours_dir)}/image.??? | cmp -s - {sh(stream)}", shell=True).returncode:
        raise BenchError("the volumes of split-span are not the stream")
    volumes = f"{sh(ours_dir)}/image.???"
    # split-span drops what it wrote from the page cache; both sides of the join read from it.
    warm_cache(*sorted(os.path.join(ours_dir, name) for name in os.listdir(ours_dir)))
    reassemble = ("reassemble", sh(f"{BIN}/reassemble", "-q", ours_dir))
    compare("join", {"ours": [(reassemble[0], reassemble[1] + " > /dev/null")],
                     "stock": [("cat", f"cat {volumes} > /dev/null")]})
    compare("join|pipe", {"ours": [reassemble, ("consumer", "cat > /dev/null")],
                          "stock": [("cat", f"cat {volumes}"), ("consumer", "cat > /dev/null")]})

    memory = {}
    for text in args.memory_volume_sizes.split(","):
        volume_size = parse_size(text)
        shutil.rmtree(ours_dir, ignore_errors=True)
        for process, command in (("split-span", f"cat {sh(stream)} | " + measured(
                                     rss_dir, f"mem{volume_size}", "split-span",
                                     sh(f"{BIN}/split-span", "-q", "--size", volume_size, ours_dir))),
                                 ("reassemble", measured(rss_dir, f"mem{volume_size}", "reassemble",
                                                         sh(f"{BIN}/reassemble", "-q", ours_dir)) + " > /dev/null")):
            subprocess.run(["bash", "-o", "pipefail", "-c", command], env=dict(env, RUN="0"), check=True)
        memory[volume_size] = measurements(rss_dir, f"mem{volume_size}")[0]
    shutil.rmtree(ours_dir, ignore_errors=True)
    shutil.rmtree(stock_dir, ignore_errors=True)

    print(f"\nstream {format_size(args.size)}, volumes of {format_size(size)}, {args.runs} runs per side, "
          f"medians; ratio = stock time / our time (target >= {MIN_SPEED_RATIO}, ! = missed)")
    print(f"{'comparison':<11} {'ours s':>7} {'stock s':>8} {'ours MB/s':>10} {'stock MB/s':>11} "
          f"{'ratio':>6}   {'ours CPU s':>10} {'stock CPU s':>11} {'CPU ratio':>9}")
    passed = True
    for name, ours, stock, ours_cpu, stock_cpu in rows:
        ratio = stock / ours
        passed &= ratio >= MIN_SPEED_RATIO
        print(f"{name:<11} {ours:>7.2f} {stock:>8.2f} {args.size / ours / MB:>10.0f} "
              f"{args.size / stock / MB:>11.0f} {ratio:>6.2f}{' ' if ratio >= MIN_SPEED_RATIO else '!'}  "
              f"{ours_cpu:>10.2f} {stock_cpu:>11.2f} {stock_cpu / ours_cpu:>9.2f}")
    timed_rss = {process: rss for pipeline in ("split-ours", "join-ours")
                 for process, rss in measurements(rss_dir, pipeline)[0].items() if process != "cat"}
    print(f"\npeak RSS (target <= {MAX_RSS / MB:.0f} MB, the same at every volume size)")
    for label, peaks in [(f"timing, volumes of {format_size(size)}", timed_rss)] + \
            [(f"volumes of {format_size(v)}", peaks) for v, peaks in memory.items()]:
        print(f"  {label:<28} " + ", ".join(f"{p} {rss / MB:.0f} MB" for p, rss in sorted(peaks.items())))
        passed &= all(rss <= MAX_RSS for rss in peaks.values())
    print(f"\ncheckout {CHECKOUT}; {'all targets met' if passed else 'a target was missed'}")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"bench_volumes: {exc}")

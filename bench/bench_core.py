#!/usr/bin/env python3
"""Benchmark the core pipeline against stock tools, side by side, on a realistic disk image.

Compares, on an ext4 image made by tools/make-sample-disk (see bench/README.md):
  backup:   read-disk IMG | compress > X          vs  dd if=IMG bs=4M | zstd -3 -T0 > Y
  restore:  compress -d < X | write-disk T        vs  zstd -d < Y | dd of=T bs=4M conv=sparse,fsync
  checksum: cat IMG | checksum > /dev/null        vs  cat IMG | xxh128sum
with the peak RSS and CPU time of every process in those pipelines. Prints a table, writes JSON to
the work directory, exits 0 when every target is met and every check passes, 1 otherwise.

Run it with a Python that has mirrorpipe's dependencies (e.g. .venv/bin/python bench/bench_core.py):
the bin/ launchers are run with the same interpreter.
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, CHECKOUT)
from mirrorpipe.units import format_size, parse_size  # noqa: E402 - the checkout, not installed

BIN = os.path.join(CHECKOUT, "bin")
TIME = "/usr/bin/time"
MB = 1e6

# Targets (issue 2): our throughput at least the stock pipeline's, output at most 3% larger than
# zstd -3's, at most 200 MB per process, and memory that does not grow with the image.
MIN_SPEED_RATIO = 1.0
MAX_SIZE_RATIO = 1.03
MAX_RSS = 200e6
# Peak RSS at the larger image may exceed the smaller one's by this share and still count as "the
# same": it varies by 10-20% between runs of one size (how many buffers happen to be in flight),
# while memory that grew with the data would be 4x at 8 GiB against 2 GiB.
RSS_GROWTH_ALLOWANCE = 0.25
STOCK_PROCESSES = {"cat", "dd", "zstd", "zstd-d", "xxh128sum"}


class BenchError(Exception):
    pass


def sh(*words):
    return " ".join(shlex.quote(str(word)) for word in words)


class Pipelines:
    """Shell text of the compared pipelines on one image. Every process runs under /usr/bin/time,
    which writes its peak RSS and CPU seconds to measure_dir/<pipeline>.<run>.<process>
    (bash sets $RUN per repetition)."""

    def __init__(self, image, measure_dir):
        stem = os.path.splitext(image)[0]
        self.image = image
        self.ours_zst = stem + ".ours.zst"
        self.stock_zst = stem + ".stock.zst"
        self.target = stem + ".restored.img"
        self.ours_sum = stem + ".ours.xxh128"
        self.stock_sum = stem + ".stock.xxh128"
        self.measure_dir = measure_dir

    def _join(self, pipeline, stages):
        prefix = shlex.quote(os.path.join(self.measure_dir, pipeline + "."))
        return " | ".join(f'{TIME} -f "%M %U %S" -o {prefix}"$RUN".{process} {command}'
                          for process, command in stages)

    def backup(self):
        return {
            "ours": self._join("backup-ours", [
                ("read-disk", sh(f"{BIN}/read-disk", "-q", self.image)),
                ("compress", sh(f"{BIN}/compress", "-q") + " > " + sh(self.ours_zst))]),
            "stock": self._join("backup-stock", [
                ("dd", sh("dd", f"if={self.image}", "bs=4M", "status=none")),
                ("zstd", "zstd -3 -T0 -q > " + sh(self.stock_zst))]),
        }

    def restore(self):
        # write-disk flushes to stable storage before it exits; dd gets fsync for the same work.
        return {
            "ours": self._join("restore-ours", [
                ("compress-d", sh(f"{BIN}/compress", "-d", "-q") + " < " + sh(self.ours_zst)),
                ("write-disk", sh(f"{BIN}/write-disk", "-q", self.target))]),
            "stock": self._join("restore-stock", [
                ("zstd-d", "zstd -d -q < " + sh(self.stock_zst)),
                ("dd", sh("dd", f"of={self.target}", "bs=4M", "conv=sparse,fsync", "status=none"))]),
        }

    def checksum(self):
        return {
            "ours": self._join("checksum-ours", [
                ("cat", sh("cat", self.image)),
                ("checksum", sh(f"{BIN}/checksum", "-q", "-o", self.ours_sum) + " > /dev/null")]),
            "stock": self._join("checksum-stock", [
                ("cat", sh("cat", self.image)),
                ("xxh128sum", "xxh128sum > " + sh(self.stock_sum))]),
        }


def time_side_by_side(pipelines, runs, env, before=None, after=None):
    """Run each {name: shell pipeline} `runs` times, alternating between them so that the noise of
    a shared machine falls on all alike. Untimed around each run: before(name), then sync (so no
    run pays for another's dirty pages), and after(name) once it ended.
    Returns {name: (median seconds, [every run's seconds])}; a failing pipeline raises BenchError."""
    samples = {name: [] for name in pipelines}
    for run in range(runs):
        for name, text in pipelines.items():
            if before:
                before(name)
            os.sync()
            start = time.perf_counter()
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", text], env=dict(env, RUN=str(run)),
                                  stderr=subprocess.PIPE, text=True, check=False)
            elapsed = time.perf_counter() - start
            if proc.returncode:
                raise BenchError(f"{name} pipeline failed (status {proc.returncode}): {text}\n{proc.stderr}")
            samples[name].append(elapsed)
            if after:
                after(name)
    return {name: (statistics.median(times), times) for name, times in samples.items()}


def measurements(measure_dir, pipeline):
    """({process: highest peak RSS in bytes over all runs}, median over runs of the pipeline's
    CPU seconds, user + system, all processes) of one pipeline."""
    peaks = {}
    cpu_by_run = {}
    prefix = pipeline + "."
    for name in os.listdir(measure_dir):
        if not name.startswith(prefix):
            continue
        run, process = name[len(prefix):].split(".", 1)
        with open(os.path.join(measure_dir, name)) as f:
            # GNU time puts "Command exited with non-zero status" first when a command failed.
            kib, user, system = f.read().splitlines()[-1].split()
        peaks[process] = max(peaks.get(process, 0), int(kib) * 1024)
        cpu_by_run[run] = cpu_by_run.get(run, 0) + float(user) + float(system)
    return peaks, statistics.median(cpu_by_run.values())


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def size_label(size):
    """2147483648 -> '2G', 268435456 -> '256M': for file names."""
    return next((f"{size >> shift}{unit}" for shift, unit in ((30, "G"), (20, "M")) if size % (1 << shift) == 0),
                str(size))


def sample_image(workdir, size, seed):
    """The cached sample image of this size and seed, made by tools/make-sample-disk when missing."""
    path = os.path.join(workdir, f"sample-{size_label(size)}-seed{seed}.img")
    if not os.path.exists(path):
        print(f"bench: building {path} (cached for later runs)", file=sys.stderr)
        partial = path + ".part"
        subprocess.run([os.path.join(CHECKOUT, "tools", "make-sample-disk"), "--size", str(size),
                        "--seed", str(seed), partial], stdout=sys.stderr, check=True)
        os.rename(partial, path)
    return path


def warm_cache(*paths):
    """Read files once so both sides of a comparison read them from the page cache."""
    for path in paths:
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


def remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def same_bytes(a, b):
    return subprocess.run(["cmp", "-s", a, b], check=False).returncode == 0


def decodes_to(compressed, image):
    """True when stock zstd -d turns compressed into exactly the bytes of image."""
    return subprocess.run(f"zstd -d -q < {sh(compressed)} | cmp -s - {sh(image)}", shell=True,
                          check=False).returncode == 0


def digest(sum_file):
    with open(sum_file) as f:
        return f.read().split()[0]


def speed_row(name, image_size, timed, cpu):
    ours, stock = timed["ours"][0], timed["stock"][0]
    ratio = stock / ours
    return {"comparison": name, "ours_s": ours, "stock_s": stock, "ours_runs_s": timed["ours"][1],
            "stock_runs_s": timed["stock"][1], "ours_MBps": image_size / ours / MB,
            "stock_MBps": image_size / stock / MB, "ours_cpu_s": cpu["ours"], "stock_cpu_s": cpu["stock"],
            "ratio": ratio, "target": f">= {MIN_SPEED_RATIO:.2f}", "pass": ratio >= MIN_SPEED_RATIO}


def compare_speed(image, workdir, runs, env):
    """Time the three comparisons on one image; return (rows, checks, {pipeline: peak RSS})."""
    measure_dir = fresh_dir(os.path.join(workdir, "measure"))
    p = Pipelines(image, measure_dir)
    size = os.path.getsize(image)
    rows = []
    rss = {}

    def compare(title, kind, pipelines, **hooks):
        print(f"bench: {kind}, {runs} runs per side", file=sys.stderr)
        timed = time_side_by_side(pipelines, runs, env, **hooks)
        cpu = {}
        for side in ("ours", "stock"):
            rss[f"{kind}-{side}"], cpu[side] = measurements(measure_dir, f"{kind}-{side}")
        rows.append(speed_row(title, size, timed, cpu))

    warm_cache(image)
    compare("read-disk | compress  vs  dd | zstd -3 -T0", "backup", p.backup())
    ours_bytes, stock_bytes = os.path.getsize(p.ours_zst), os.path.getsize(p.stock_zst)
    size_ratio = ours_bytes / stock_bytes
    rows.append({"comparison": "  compressed size (ours / zstd -3)", "ours_bytes": ours_bytes,
                 "stock_bytes": stock_bytes, "ratio": size_ratio, "target": f"<= {MAX_SIZE_RATIO:.2f}",
                 "pass": size_ratio <= MAX_SIZE_RATIO})

    warm_cache(p.ours_zst, p.stock_zst)
    restored = []
    compare("compress -d | write-disk  vs  zstd -d | dd", "restore", p.restore(),
            before=lambda name: remove(p.target), after=lambda name: restored.append(same_bytes(p.target, image)))
    remove(p.target)

    compare("cat | checksum  vs  cat | xxh128sum", "checksum", p.checksum())

    checks = {"stock zstd -d decodes our compressed image to the image": decodes_to(p.ours_zst, image),
              "every restored file (ours and stock) is byte-identical to the image": all(restored),
              "checksum digest equals xxh128sum's": digest(p.ours_sum) == digest(p.stock_sum)}
    return rows, checks, rss


def ours_only(rss):
    """{pipeline/process: bytes} for mirrorpipe's processes (not cat, dd, zstd, xxh128sum)."""
    return {f"{pipeline}/{process}": value for pipeline, peaks in rss.items() if pipeline.endswith("-ours")
            for process, value in peaks.items() if process not in STOCK_PROCESSES}


def memory_at_sizes(workdir, sizes, seed, env):
    """Peak RSS of our processes, each pipeline run once per image size: {size: {process: bytes}}."""
    result = {}
    for size in sizes:
        image = sample_image(workdir, size, seed)
        measure_dir = fresh_dir(os.path.join(workdir, f"measure-memory-{size_label(size)}"))
        p = Pipelines(image, measure_dir)
        print(f"bench: memory at {format_size(size)}", file=sys.stderr)
        for pipelines in (p.backup(), p.restore(), p.checksum()):
            time_side_by_side({"ours": pipelines["ours"]}, 1, env, before=lambda name, target=p.target: remove(target))
        remove(p.target)
        result[size] = ours_only({pipeline: measurements(measure_dir, pipeline)[0] for pipeline in
                                  ("backup-ours", "restore-ours", "checksum-ours")})
    return result


def memory_checks(rss, memory):
    checks = {f"{process} peak RSS <= 200 MB": value <= MAX_RSS for process, value in ours_only(rss).items()}
    if memory:
        sizes = sorted(memory)
        for process, base in memory[sizes[0]].items():
            top = max(memory[size].get(process, 0) for size in sizes)
            checks[f"{process} peak RSS the same at {', '.join(format_size(s) for s in sizes)}"] = (
                top <= base * (1 + RSS_GROWTH_ALLOWANCE) and top <= MAX_RSS)
    return checks


def print_report(image, runs, rows, checks, rss, memory):
    print(f"\nimage {image}: {format_size(os.path.getsize(image))}; {runs} runs per side, alternating, "
          f"medians; page cache warmed first (both sides read from cache); sync before every run")
    print(f"{'comparison':44} {'ours':>8} {'stock':>8} {'ours MB/s':>9} {'stock MB/s':>10} "
          f"{'ours CPU':>8} {'stock CPU':>9} {'ratio':>6} {'target':>8}  result")
    for row in rows:
        if "ours_s" in row:
            figures = (f"{row['ours_s']:7.2f}s {row['stock_s']:7.2f}s {row['ours_MBps']:9.0f} "
                       f"{row['stock_MBps']:10.0f} {row['ours_cpu_s']:7.2f}s {row['stock_cpu_s']:8.2f}s")
        else:
            figures = f"{row['ours_bytes'] / MB:6.1f}MB {row['stock_bytes'] / MB:6.1f}MB {'':39}"
        print(f"{row['comparison']:44} {figures} {row['ratio']:6.3f} {row['target']:>8}  "
              f"{'PASS' if row['pass'] else 'FAIL'}")
    print("ratio: stock time / our time (speed), ours / stock (size); CPU: user + system seconds of the "
          "whole pipeline; MB = 10^6 bytes")
    print("\npeak RSS (MB), ours target <= 200 MB:")
    for pipeline, peaks in rss.items():
        print(f"  {pipeline:15} " + ", ".join(f"{process} {value / MB:.1f}" for process, value in sorted(peaks.items())))
    if memory:
        sizes = sorted(memory)
        print("\npeak RSS of our processes by image size (MB):")
        print(f"  {'process':26} " + " ".join(f"{format_size(size):>10}" for size in sizes))
        for process in sorted(memory[sizes[0]]):
            print(f"  {process:26} " + " ".join(f"{memory[size].get(process, 0) / MB:10.1f}" for size in sizes))
    print("\nchecks:")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def tool_versions():
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()[0]
        except (OSError, IndexError):
            return None
    return {"zstd": first_line(["zstd", "--version"]), "xxhsum": first_line(["xxhsum", "--version"]),
            "python": sys.version.split()[0],
            "mirrorpipe_commit": first_line(["git", "-C", CHECKOUT, "rev-parse", "HEAD"])}


class Results:
    """A bench run's JSON in the work directory, NAME-<UTC start>.json: when and where it ran
    (host, cores, the load average at the start and at each save) and what it measured."""

    def __init__(self, workdir, name):
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_at_start = os.getloadavg()
        self.path = os.path.join(workdir, f"{name}-{self.started:%Y%m%dT%H%M%SZ}.json")

    def save(self, **measured):
        """Write the file whole again (a run cut short keeps what was saved)."""
        with open(self.path, "w") as f:
            json.dump({"started": self.started.isoformat(timespec="seconds"), "host": socket.gethostname(),
                       "cpus": len(os.sched_getaffinity(0)),
                       "load_average_start_end": [self.load_at_start, os.getloadavg()], **measured},
                      f, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=2 << 30, help="image size for the timing (default 2G)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per side (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="make-sample-disk seed (default 1)")
    parser.add_argument("--workdir", default="/var/tmp/mirrorpipe-bench",
                        help="images (cached), outputs and JSON results (default /var/tmp/mirrorpipe-bench)")
    parser.add_argument("--memory-sizes", metavar="SIZE,SIZE",
                        type=lambda text: [parse_size(s) for s in text.split(",")],
                        help="also run our pipelines once at each of these image sizes and check that "
                             "peak memory stays the same (e.g. 2G,8G)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for tool in (TIME, "zstd", "xxh128sum", "dd", "cmp", "mkfs.ext4"):
        if not shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin:/sbin"):
            sys.exit(f"bench: error: {tool} is missing (Debian packages: time zstd xxhash coreutils "
                     "diffutils e2fsprogs)")
    # The bin/ launchers run on `python3` from PATH: make it this interpreter, which has the deps.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    os.makedirs(args.workdir, exist_ok=True)

    results = Results(args.workdir, "results")
    image = sample_image(args.workdir, args.size, args.seed)
    try:
        rows, checks, rss = compare_speed(image, args.workdir, args.runs, env)
        memory = memory_at_sizes(args.workdir, args.memory_sizes, args.seed, env) if args.memory_sizes else None
    except BenchError as exc:
        sys.exit(f"bench: error: {exc}")
    checks.update(memory_checks(rss, memory))
    print_report(image, args.runs, rows, checks, rss, memory)

    results.save(image=image, image_bytes=os.path.getsize(image), runs=args.runs, tools=tool_versions(),
                 comparisons=rows, peak_rss_bytes=rss, checks=checks,
                 peak_rss_by_size={str(size): peaks for size, peaks in (memory or {}).items()})
    print(f"\nresults: {results.path}")
    return 0 if all(row["pass"] for row in rows) and all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark parity volumes (issue 6): the cost of building them while splitting, the cost of
rebuilding a lost volume while reassembling, and peak memory.

  split:    cat STREAM | split-span --size V A/      vs  cat STREAM | split-span --size V --parity K B/
  rebuild:  reassemble A/ > /dev/null                vs  reassemble B/ > /dev/null with data volume 3
                                                         (file and manifest) gone, rebuilt from parity
  memory:   peak RSS, summed over split-span and its parity worker processes, and of the rebuild

The stream is random bytes. Ratios are medians of alternating runs; targets: split >= 0.5,
rebuild >= 0.4, memory <= 300 MB.

Run with a Python that has mirrorpipe's dependencies: .venv/bin/python bench/bench_parity.py
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from bench_core import CHECKOUT, MB, BenchError, sh, time_side_by_side  # noqa: E402
from bench_volumes import make_stream  # noqa: E402
from mirrorpipe.sets import manifests, names  # noqa: E402 - bench_core put the checkout on sys.path
from mirrorpipe.units import format_size, parse_size  # noqa: E402

MIN_SPLIT_RATIO = 0.5
MIN_REBUILD_RATIO = 0.4
MAX_RSS = 300e6
LOST_VOLUME = 3


# ---------------------------------------------------------------------------------------------
# Measuring

def peak_rss(script, env):
    """Run a shell script; the highest sum of RSS of the Python processes under it, sampled."""
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", script], env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _python_rss_under(proc.pid))
        time.sleep(0.02)
    if proc.returncode:
        raise BenchError(f"failed (status {proc.returncode}): {script}")
    return peak


def _python_rss_under(root):
    children, rss = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(name))
        if fields["Name"].strip().startswith("python") and "VmRSS" in fields:
            rss[int(name)] = int(fields["VmRSS"].split()[0]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class CpuSeconds:
    """CPU seconds (user + system) of each timed run, from the rusage of waited-for children."""

    def __init__(self):
        self.runs = {}
        self.begun = 0.0

    @staticmethod
    def _children():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def start(self):
        self.begun = self._children()

    def stop(self, name):
        self.runs.setdefault(name, []).append(self._children() - self.begun)

    def median(self, name):
        return statistics.median(self.runs[name])


def bench(args):
    os.makedirs(args.workdir, exist_ok=True)
    stream = make_stream(args.workdir, args.size)
    plain, with_parity = os.path.join(args.workdir, "plain"), os.path.join(args.workdir, "parity")
    env = dict(os.environ, PATH=os.path.join(CHECKOUT, "bin") + os.pathsep + os.path.dirname(sys.executable)
               + os.pathsep + os.environ["PATH"])
    split_parity = (f"cat {sh(stream)} | split-span --size {args.volume_size} --parity {args.parity} "
                    f"{sh(with_parity)}")
    rows = []

    cpu = CpuSeconds()
    split_plain = f"cat {sh(stream)} | split-span --size {args.volume_size} {sh(plain)}"
    print(f"bench: split, {args.runs} runs each", file=sys.stderr)

    def remove_outputs(name):
        shutil.rmtree(plain, ignore_errors=True)
        shutil.rmtree(with_parity, ignore_errors=True)
        cpu.start()

    timed = time_side_by_side({"plain": split_plain, "parity": split_parity}, args.runs, env,
                              before=remove_outputs, after=cpu.stop)
    rows.append((f"split, --parity {args.parity}", timed["parity"][0], timed["plain"][0], MIN_SPLIT_RATIO,
                 cpu.median("parity"), cpu.median("plain")))
    subprocess.run(["bash", "-o", "pipefail", "-c", split_plain], env=env, check=True)

    lost = os.path.join(with_parity, names.volume_name("image", LOST_VOLUME))
    os.unlink(lost)
    os.unlink(manifests.manifest_path(lost))
    print(f"bench: rebuild, {args.runs} runs each", file=sys.stderr)
    timed = time_side_by_side({
        "reassemble": f"reassemble {sh(plain)} > /dev/null",
        "rebuild": f"reassemble {sh(with_parity)} > /dev/null 2>&1",
    }, args.runs, env, before=lambda name: cpu.start(), after=cpu.stop)
    rows.append((f"reassemble, volume {LOST_VOLUME} rebuilt", timed["rebuild"][0], timed["reassemble"][0],
                 MIN_REBUILD_RATIO, cpu.median("rebuild"), cpu.median("reassemble")))

    print("bench: peak memory", file=sys.stderr)
    shutil.rmtree(with_parity)
    split_rss = peak_rss(split_parity, env)
    rebuild_rss = peak_rss(f"rm {sh(lost)} {sh(manifests.manifest_path(lost))} && "
                           f"reassemble {sh(with_parity)} > /dev/null 2>&1", env)

    volume_count = -(-args.size // args.volume_size)
    print(f"\n{format_size(args.size)} of random data, {volume_count} volumes of {format_size(args.volume_size)}, "
          f"{args.parity} parity volumes (one group), median of {args.runs} runs\n")
    print(f"{'':30} {'with parity':>14} {'without':>14} {'ratio':>6} {'target':>7}       "
          f"CPU s (with, without)")
    met = True
    for name, ours, reference, target, ours_cpu, reference_cpu in rows:
        ratio = reference / ours
        met &= ratio >= target
        print(f"{name:30} {args.size / ours / MB:>9.0f} MB/s {args.size / reference / MB:>9.0f} MB/s "
              f"{ratio:>6.2f} {'>= ' + str(target):>7} {'ok' if ratio >= target else 'MISSED':>6} "
              f"{ours_cpu:>6.2f} {reference_cpu:>6.2f}")
    for name, rss in (("peak RSS, split with parity", split_rss), ("peak RSS, rebuild", rebuild_rss)):
        met &= rss <= MAX_RSS
        print(f"{name:30} {rss / MB:>9.0f} MB {'':>17} {'<= 300 MB':>15} {'ok' if rss <= MAX_RSS else 'MISSED'}")
    print("\n(CPU s: user + system seconds of every process of the pipeline, median over the runs; "
          "the machine's load decides how much of it overlaps)")
    return 0 if met else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="stream size (default 1G)")
    parser.add_argument("--volume-size", type=parse_size, default=128 << 20, help="volume size (default 128M)")
    parser.add_argument("--parity", type=int, default=2, help="parity volumes (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per side (default 3)")
    parser.add_argument("--workdir", default="/var/tmp/mirrorpipe-bench-parity",
                        help="where the stream and the volumes go (needs 3.5x the stream size)")
    return bench(parser.parse_args())


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"bench_parity: {exc}")

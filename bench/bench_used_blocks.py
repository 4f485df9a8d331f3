#!/usr/bin/env python3
"""Benchmark read-disk --used-only against partclone (what Clonezilla runs) and plain read-disk.

On sample disks made by tools/make-sample-disk (one ext4 file system filling the image, and a GPT
disk of two ext4 partitions; each at the default used share and at --used 32), side by side in one
run, medians of --runs:
  A  read-disk --used-only IMG | compress > A.zst
  B  partclone.ext4 -c -s IMG -o - | zstd -3 -T0 > B.zst      (Clonezilla's save of a partition)
  C  read-disk IMG | compress > C.zst
with the peak RSS and CPU time of every process. On a partitioned disk B is what Clonezilla's
savedisk does, one step after the other: dd of the table area before the first partition and of
the backup GPT, sfdisk -d, then partclone.ext4 | zstd per partition, each partition reached
through a read-only loop device (losetup -r -o OFFSET --sizelimit SIZE, set up untimed).
A's output is checked once per image: stock zstd -d gives exactly the image's length, equal to
the image everywhere but in the free blocks dumpe2fs lists, which hold zeros.
Prints a table per image, writes JSON to the work directory, exits 0 when every target is met
and every check passes, 1 otherwise. Run it as root (loop devices) with a Python that has
mirrorpipe's dependencies (e.g. .venv/bin/python bench/bench_used_blocks.py).
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from bench_core import (BIN, CHECKOUT, MAX_RSS, MB, RSS_GROWTH_ALLOWANCE, TIME, BenchError, Results,  # noqa: E402
                        fresh_dir, measurements, remove, sh, size_label, time_side_by_side, tool_versions,
                        warm_cache)
from bench_volumes import measured  # noqa: E402
from mirrorpipe.stream.streams import is_zero  # noqa: E402 - bench_core put the checkout on sys.path
from mirrorpipe.units import format_size, parse_size  # noqa: E402

# Targets (issue 12): A at least 1.3x as fast as partclone | zstd with an output at most 1.05x
# its size, at least 2x as fast as read-disk without --used-only; memory as in bench_core.
MIN_SPEED_VS_PARTCLONE = 1.3
MAX_SIZE_VS_PARTCLONE = 1.05
MIN_SPEED_VS_FULL = 2.0
OURS = {"read-disk", "compress"}
SIDES = {"A": "read-disk --used-only | compress", "B": "partclone.ext4 | zstd -3 -T0 (Clonezilla)",
         "C": "read-disk | compress"}
GPT_BACKUP = 33 * 512  # the backup GPT at the disk's end: header and 128 entries (Clonezilla's gpt-2nd)
CHUNK = 4 << 20


def sample_disk(workdir, size, seed, used, partitions):
    """The cached sample disk, made by tools/make-sample-disk when missing. used=None and
    partitions=1 is make-sample-disk's default, the image bench_core uses (same name)."""
    options = ([] if used is None else ["--used", str(used)]) + (
        [] if partitions == 1 else ["--partitions", str(partitions)])
    name = (f"sample-{size_label(size)}-seed{seed}" + ("" if used is None else f"-used{used}")
            + ("" if partitions == 1 else f"-{partitions}parts") + ".img")
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        print(f"bench: building {path} (cached for later runs)", file=sys.stderr)
        partial = path + ".part"
        subprocess.run([os.path.join(CHECKOUT, "tools", "make-sample-disk"), "--size", str(size),
                        "--seed", str(seed), *options, partial], stdout=sys.stderr, check=True)
        os.rename(partial, path)
    return path


def file_systems(image):
    """[(partition number, start, size)] in bytes: the partitions sfdisk finds, or
    [(None, 0, image size)] for an image that holds one file system and no table."""
    listed = subprocess.run(["sfdisk", "-J", image], capture_output=True, text=True, check=False)
    if listed.returncode:
        return [(None, 0, os.path.getsize(image))]
    table = json.loads(listed.stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [(int(part["node"][len(image):]), part["start"] * sector, part["size"] * sector)
            for part in table["partitions"]]


@contextlib.contextmanager
def partition_devices(image, systems):
    """{partition number: a read-only loop device on just that partition} (the image itself for
    a bare file system); detached on the way out."""
    devices = {}
    try:
        for number, start, size in systems:
            devices[number] = image if number is None else subprocess.run(
                ["losetup", "-r", "-f", "--show", "-o", str(start), "--sizelimit", str(size), image],
                capture_output=True, text=True, check=True).stdout.strip()
        yield devices
    finally:
        for number, device in devices.items():
            if number is not None:
                subprocess.run(["losetup", "-d", device], check=False)


def free_ranges(device, start):
    """The free blocks of the ext4 file system on device as sorted (first byte, end byte) ranges
    of the disk it starts on at byte `start`, from dumpe2fs's per-group lists."""
    out = subprocess.run(["dumpe2fs", device], capture_output=True, text=True, check=True).stdout
    block = next(int(line.split(":")[1]) for line in out.splitlines() if line.startswith("Block size:"))
    ranges = []
    for line in out.splitlines():
        if line.startswith("  Free blocks: "):
            for item in filter(None, line.split(":", 1)[1].replace(" ", "").split(",")):
                first, _, last = item.partition("-")
                ranges.append((start + int(first) * block, start + (int(last or first) + 1) * block))
    return sorted(ranges)


def check_used_only(image, compressed, free):
    """None when stock zstd -d turns compressed into exactly the image's length, equal to the
    image everywhere but in the free ranges, which hold zeros; else what is wrong."""
    decoder = subprocess.Popen(["zstd", "-d", "-q", "-c", compressed], stdout=subprocess.PIPE)
    problem = None
    offset = 0
    next_free = 0
    with open(image, "rb") as original, decoder:
        while problem is None:
            got = decoder.stdout.read(CHUNK)
            if not got:
                break
            want = original.read(len(got))
            end = offset + len(got)
            if len(want) < len(got):
                problem = f"longer than the image ({os.path.getsize(image)} bytes)"
            position = offset
            while problem is None and position < end:
                while next_free < len(free) and free[next_free][1] <= position:
                    next_free += 1
                in_free = next_free < len(free) and free[next_free][0] <= position
                stop = min(end, free[next_free][1 if in_free else 0] if next_free < len(free) else end)
                a, b = position - offset, stop - offset
                if in_free and not is_zero(got, a, b - a):
                    problem = f"free blocks at bytes {position}-{stop - 1} are not zeros"
                elif not in_free and got[a:b] != want[a:b]:
                    problem = f"bytes {position}-{stop - 1} (used blocks or table) differ from the image"
                position = stop
            offset = end
        decoder.stdout.close()
    if decoder.returncode and problem is None:
        problem = f"zstd -d failed (status {decoder.returncode})"
    if problem is None and offset != os.path.getsize(image):
        problem = f"{offset} bytes, the image has {os.path.getsize(image)}"
    return problem


class Sides:
    """Shell text of pipelines A, B and C on one image, every process under /usr/bin/time
    (measure_dir/<key>-<side>.<run>.<process>), and where each writes its output."""

    def __init__(self, image, key, systems, devices, measure_dir):
        self.image, self.key, self.systems, self.devices, self.measure_dir = image, key, systems, devices, measure_dir
        self.stem = os.path.splitext(image)[0]
        self.outputs = {"A": [self.stem + ".A.zst"], "C": [self.stem + ".C.zst"]}

    def _pipeline(self, side, stages):
        return " | ".join(measured(self.measure_dir, f"{self.key}-{side}", process, command)
                          for process, command in stages)

    def ours(self, side, *options):
        return self._pipeline(side, [
            ("read-disk", sh(f"{BIN}/read-disk", "-q", *options, self.image)),
            ("compress", sh(f"{BIN}/compress", "-q") + " > " + sh(self.outputs[side][0]))])

    def partclone(self, suffix, device):
        output = f"{self.stem}.B{suffix}.zst"
        self.outputs["B"].append(output)
        tag = suffix.lstrip(".") or "fs"
        return self._pipeline("B", [
            (f"partclone-{tag}", sh("partclone.ext4", "-q", "-L", os.path.join(self.measure_dir, "partclone.log"),
                                    "-c", "-s", device, "-o", "-")),
            (f"zstd-{tag}", "zstd -3 -T0 -q > " + sh(output))])

    def clonezilla(self):
        """B: partclone | zstd of the file system, or Clonezilla's savedisk steps on a table."""
        self.outputs["B"] = []
        if self.systems[0][0] is None:
            return self.partclone("", self.image)
        table_end = min(start for _, start, _ in self.systems)
        steps = [self._pipeline("B", [("dd-table", sh("dd", f"if={self.image}", f"of={self.stem}.B.table",
                                                      f"count={table_end}", "iflag=count_bytes",
                                                      "bs=1M", "status=none"))]),
                 self._pipeline("B", [("dd-gpt2", sh("dd", f"if={self.image}", f"of={self.stem}.B.gpt2",
                                                     f"skip={os.path.getsize(self.image) - GPT_BACKUP}",
                                                     "iflag=skip_bytes", "bs=1M", "status=none"))]),
                 self._pipeline("B", [("sfdisk", sh("sfdisk", "-d", self.image) + " > " + sh(f"{self.stem}.B.sf"))])]
        self.outputs["B"] += [f"{self.stem}.B.table", f"{self.stem}.B.gpt2", f"{self.stem}.B.sf"]
        steps += [self.partclone(f".p{number}", self.devices[number]) for number, _, _ in self.systems]
        return " && ".join(f"{{ {step}; }}" for step in steps)

    def pipelines(self):
        return {"A": self.ours("A", "--used-only"), "B": self.clonezilla(), "C": self.ours("C")}

    def profile(self, runs, env):
        """Where A's time goes: its reading alone, through a pipe, and compress alone on its output
        (decoded once, untimed, to a sparse file), beside stock zstd on the same data.
        {what: {median_s, cpu_s}}."""
        raw = self.stem + ".A.raw"
        subprocess.run(["zstd", "-d", "-q", "-f", self.outputs["A"][0], "-o", raw], check=True)
        read_disk = ("read-disk", sh(f"{BIN}/read-disk", "-q", "--used-only", self.image))
        cat_raw = ("cat", sh("cat", raw))
        stages = {"read-disk --used-only > /dev/null": [(read_disk[0], read_disk[1] + " > /dev/null")],
                  "read-disk --used-only | cat > /dev/null": [read_disk, ("cat", "cat > /dev/null")],
                  "cat A-output | compress > /dev/null": [cat_raw, ("compress", sh(f"{BIN}/compress", "-q")
                                                                    + " > /dev/null")],
                  "cat A-output | zstd -3 -T0 > /dev/null": [cat_raw, ("zstd", "zstd -3 -T0 -q > /dev/null")],
                  "cat A-output > /dev/null": [(cat_raw[0], cat_raw[1] + " > /dev/null")]}
        sides = {f"P{number}": what for number, what in enumerate(stages)}
        try:
            warm_cache(raw)
            timed = time_side_by_side({side: self._pipeline(side, stages[what]) for side, what in sides.items()},
                                      runs, env)
        finally:
            remove(raw)
        return {what: {"median_s": timed[side][0], "cpu_s": measurements(self.measure_dir, f"{self.key}-{side}")[1]}
                for side, what in sides.items()}

    def output_bytes(self, side):
        return sum(os.path.getsize(path) for path in self.outputs[side])


def partclone_version():
    banner = subprocess.run(["partclone.ext4", "-v"], capture_output=True, text=True, check=False)
    return (banner.stdout or banner.stderr).strip().splitlines()[-1]


def describe(image, systems, used):
    kind = "one ext4 file system" if systems[0][0] is None else f"GPT, {len(systems)} ext4 partitions"
    shares = ", ".join(f"{format_size(u)} of {format_size(size)} ({100 * u / size:.0f}%)"
                       for (_, _, size), u in zip(systems, used))
    return f"{os.path.basename(image)}: {format_size(os.path.getsize(image))}, {kind}; used (dumpe2fs): {shares}"


def bench_image(image, runs, env, workdir, force_profile):
    """Time A, B and C on one image; check A's output. Returns the image's result dict."""
    systems = file_systems(image)
    key = os.path.splitext(os.path.basename(image))[0]
    measure_dir = fresh_dir(os.path.join(workdir, "measure-used-" + key))
    with partition_devices(image, systems) as devices:
        free = sorted(r for number, start, _ in systems for r in free_ranges(devices[number], start))
        used = [size - sum(e - s for s, e in free if start <= s < start + size) for _, start, size in systems]
        sides = Sides(image, key, systems, devices, measure_dir)
        print(f"bench: {describe(image, systems, used)}; {runs} runs per side", file=sys.stderr)
        warm_cache(image)
        timed = time_side_by_side(sides.pipelines(), runs, env)
    result = {"image": image, "image_bytes": os.path.getsize(image), "description": describe(image, systems, used),
              "file_systems": [{"number": n, "start": s, "size": z, "used_bytes": u}
                               for (n, s, z), u in zip(systems, used)], "sides": {}}
    for side in "ABC":
        peaks, cpu = measurements(measure_dir, f"{key}-{side}")
        result["sides"][side] = {"pipeline": SIDES[side], "median_s": timed[side][0], "runs_s": timed[side][1],
                                 "cpu_s": cpu, "output_bytes": sides.output_bytes(side), "peak_rss_bytes": peaks}
    a, b, c = (result["sides"][side] for side in "ABC")
    speed_b, speed_c = b["median_s"] / a["median_s"], c["median_s"] / a["median_s"]
    size_b = a["output_bytes"] / b["output_bytes"]
    result["targets"] = {
        f"A vs B speed {speed_b:.2f}x >= {MIN_SPEED_VS_PARTCLONE}": speed_b >= MIN_SPEED_VS_PARTCLONE,
        f"A / B output size {size_b:.3f} <= {MAX_SIZE_VS_PARTCLONE}": size_b <= MAX_SIZE_VS_PARTCLONE,
        f"A vs C speed {speed_c:.2f}x >= {MIN_SPEED_VS_FULL}": speed_c >= MIN_SPEED_VS_FULL}
    result["targets"].update({f"{side}/{process} peak RSS <= 200 MB": value <= MAX_RSS
                              for side in "AC" for process, value in result["sides"][side]["peak_rss_bytes"].items()
                              if process in OURS})
    problem = check_used_only(image, sides.outputs["A"][0], free)
    result["check"] = {"A decodes (zstd -d) to the image's length, equal in every used block and table, "
                       "zeros in free blocks": problem is None}
    result["check_problem"] = problem
    if force_profile or not all(result["targets"].values()):
        print(f"bench: profiling A on {os.path.basename(image)}", file=sys.stderr)
        result["profile"] = sides.profile(runs, env)
    for side in "ABC":
        for path in sides.outputs[side]:
            remove(path)
    return result


def memory_checks(results):
    """A's and C's processes: the peak at the largest size at most RSS_GROWTH_ALLOWANCE above the
    peak at the smallest, per layout (the same disk kind and used share at each size)."""
    checks = {}
    by_layout = {}
    for result in results:
        layout = result["layout"]
        by_layout.setdefault(layout, []).append(result)
    for layout, group in by_layout.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda r: r["image_bytes"])
        for side in "AC":
            for process, base in group[0]["sides"][side]["peak_rss_bytes"].items():
                if process in OURS:
                    top = max(r["sides"][side]["peak_rss_bytes"].get(process, 0) for r in group)
                    sizes = ", ".join(format_size(r["image_bytes"]) for r in group)
                    checks[f"{layout} {side}/{process} peak RSS the same at {sizes}"] = (
                        top <= base * (1 + RSS_GROWTH_ALLOWANCE))
    return checks


def print_image(result):
    print(f"\n{result['description']}")
    print(f"  {'pipeline':44} {'median':>8} {'MB/s':>6} {'CPU':>7} {'output MB':>10}  runs")
    for side, figures in result["sides"].items():
        print(f"  {side} {figures['pipeline']:42} {figures['median_s']:7.2f}s "
              f"{result['image_bytes'] / figures['median_s'] / MB:6.0f} {figures['cpu_s']:6.2f}s "
              f"{figures['output_bytes'] / MB:10.1f}  " + " ".join(f"{t:.2f}" for t in figures["runs_s"]))
    print("  peak RSS (MB): " + "; ".join(
        f"{side}: " + ", ".join(f"{p} {v / MB:.1f}" for p, v in sorted(figures["peak_rss_bytes"].items()))
        for side, figures in result["sides"].items()))
    for name, ok in list(result["targets"].items()) + list(result["check"].items()):
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if result["check_problem"]:
        print(f"        A's output: {result['check_problem']}")
    if "profile" in result:
        print("  profile of A (medians, wall and CPU): " + "; ".join(
            f"{what} {t['median_s']:.2f}s (CPU {t['cpu_s']:.2f}s)" for what, t in result["profile"].items()))
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=[2 << 30], metavar="SIZE,SIZE",
                        type=lambda text: [parse_size(s) for s in text.split(",")],
                        help="sample disk sizes (default 2G; 2G,8G also checks that memory stays the same)")
    parser.add_argument("--used", default=[None, 32], metavar="PERCENT,...",
                        type=lambda text: [None if s == "default" else int(s) for s in text.split(",")],
                        help="used shares of the sample disks, 'default' for make-sample-disk's own "
                             "(about 50%%, bench_core's image) (default: default,32)")
    parser.add_argument("--partitions", default=[1, 2], metavar="N,...",
                        type=lambda text: [int(s) for s in text.split(",")],
                        help="1: one file system filling the image; N: a GPT disk of N (default 1,2)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per side (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="make-sample-disk seed (default 1)")
    parser.add_argument("--profile", action="store_true",
                        help="profile A on every image (by default only where A misses a target)")
    parser.add_argument("--workdir", default="/var/tmp/mirrorpipe-bench",
                        help="images (cached), outputs and JSON results (default /var/tmp/mirrorpipe-bench)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for tool in (TIME, "zstd", "partclone.ext4", "dumpe2fs", "sfdisk", "losetup", "dd"):
        if not shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin:/sbin"):
            sys.exit(f"bench: error: {tool} is missing (Debian packages: time zstd partclone e2fsprogs fdisk "
                     "mount coreutils)")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    help_text = subprocess.run([f"{BIN}/read-disk", "--help"], capture_output=True, text=True, env=env).stdout
    if "--used-only" not in help_text:
        sys.exit("bench: error: this read-disk has no --used-only")
    os.makedirs(args.workdir, exist_ok=True)

    saved = Results(args.workdir, "results-used-only")
    tools = dict(tool_versions(), partclone=partclone_version())
    results = []
    memory = {}

    def save():
        """The JSON so far: rewritten after every image, so a run cut short keeps what it measured."""
        saved.save(runs=args.runs, tools=tools, images=results, memory_checks=memory)

    print(f"{args.runs} runs per side, alternating A B C, medians; page cache warmed first; sync before every run")
    try:
        for size in args.sizes:
            for used in args.used:
                for partitions in args.partitions:
                    image = sample_disk(args.workdir, size, args.seed, used, partitions)
                    result = bench_image(image, args.runs, env, args.workdir, args.profile)
                    result["layout"] = ("default" if used is None else f"{used}%") + " used, " + (
                        "one file system" if partitions == 1 else f"{partitions} partitions")
                    results.append(result)
                    print_image(result)
                    save()
    except (BenchError, subprocess.CalledProcessError) as exc:
        sys.exit(f"bench: error: {exc}")
    memory = memory_checks(results)
    save()
    if memory:
        print("\nmemory across sizes:")
        for name, ok in memory.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print("\nMB/s: image bytes (10^6) per second of the whole pipeline; CPU: user + system seconds of all "
          "its processes (median); speed ratios: other side's median / A's")
    print(f"\nresults: {saved.path}")
    passed = all(all(r["targets"].values()) and all(r["check"].values()) for r in results) and all(memory.values())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark mount-image against ratarmount, side by side, on the compressed sample disk.

On the sample disk of tools/make-sample-disk with one 50 MiB file of real data added (an ext4
image, see bench/README.md), compressed to one file by compress, and the same stream cut into
volumes by split-span --size 128M (4 volumes: reads cross volume boundaries):
  seq        dd if=MNT/DISK of=/dev/null bs=1M                mount-image X.zst  vs  ratarmount X.zst
  rand 4K    1,000 preads of 4 KiB at random offsets, the same offsets on both sides
  copy       cp the 50 MiB file out of the ext4 loop-mounted read-only from the mount (mount-image
             on X.zst and on the set), and the same with mount-image and the loop mount timed too
             vs  reassemble SET | compress -d > disk.img (a full restore)
  memory     peak RSS (VmHWM) of each server, mount-image with its default cache
Each run is on fresh mounts with the page cache dropped first (when it cannot be, both sides read
the compressed file from the cache, and the report says so). Sides alternate, medians of --runs.
Every byte read is checked: the random reads against the image, each side's whole disk file once
(cmp), the copied file and the restored disk. Prints a table, writes JSON to the work directory,
exits 0 when every target is met and every check passes, 1 otherwise.

Run it as root (FUSE, loop mounts, drop_caches) with a Python that has mirrorpipe's dependencies
and mfusepy (e.g. .venv/bin/python bench/bench_mount.py); ratarmount lives in a venv of its own:
    python3 -m venv /tmp/ratar && /tmp/ratar/bin/pip install ratarmount indexed_zstd
"""

import argparse
import contextlib
import importlib.metadata
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from bench_core import (BIN, MAX_RSS, MB, BenchError, Results, remove, sample_image, sh, size_label,  # noqa: E402
                        time_side_by_side, tool_versions)
from mirrorpipe.stream.frames import DEFAULT_FRAME_SIZE  # noqa: E402 - bench_core put the checkout on sys.path
from mirrorpipe.units import format_size, parse_size  # noqa: E402

# Targets (issue 13): sequential throughput at least ratarmount's, a median random 4 KiB read no
# slower than ratarmount's, a 50 MiB file copied out at least 10x as fast as a full restore, and
# mount-image's server at most 200 MB (bench_core's MAX_RSS) with its default cache.
MIN_SEQ_RATIO = 1.0
MIN_LATENCY_RATIO = 1.0
MIN_COPY_RATIO = 10.0
BIG_FILE = "big.bin"
READ_SIZE = 4096
MOUNT_TIMEOUT = 60       # ratarmount's first mount of a 2 GiB file indexes it (about 6 s here)
DEFAULT_RATARMOUNT = "/tmp/ratar/bin/ratarmount"
REAL_DATA_ROOT = "/usr/lib"


# --- the inputs, cached in the work directory ---

def real_data(path, size):
    """size bytes of the system's libraries and programs, files in sorted order, cut at size:
    data that compresses as a real file does (about 2.9x with zstd -3), the same on every run."""
    written = 0
    with open(path, "wb") as out:
        for directory, subdirectories, files in os.walk(REAL_DATA_ROOT):
            subdirectories.sort()
            for name in sorted(files):
                source = os.path.join(directory, name)
                if os.path.islink(source) or not os.path.isfile(source):
                    continue
                with open(source, "rb") as f:
                    written += out.write(f.read(size - written))
                if written == size:
                    return
    raise BenchError(f"{REAL_DATA_ROOT} holds less than {format_size(size)} to fill {path}")


def cached(path, make):
    """path, made by make(partial path) and renamed into place when missing."""
    if not os.path.exists(path):
        print(f"bench: building {path} (cached for later runs)", file=sys.stderr)
        partial = path + ".part"
        shutil.rmtree(partial, ignore_errors=True)
        remove(partial)
        make(partial)
        os.rename(partial, path)
    return path


def inputs(workdir, size, seed, file_size, volume_size, frame_size, env):
    """(the sample disk with BIG_FILE added, BIG_FILE's content, the disk compressed by
    compress --frame-size frame_size, the same stream cut into a set of volumes), each cached."""
    base = sample_image(workdir, size, seed)
    stem = os.path.splitext(base)[0] + f"-big{size_label(file_size)}"
    big = cached(stem + ".bin", lambda partial: real_data(partial, file_size))

    def add_big_file(partial):
        subprocess.run(["cp", "--sparse=always", base, partial], check=True)
        subprocess.run(["debugfs", "-w", "-R", f"write {big} /{BIG_FILE}", partial],
                       capture_output=True, check=True)
        subprocess.run(["e2fsck", "-fn", partial], capture_output=True, check=True)

    image = cached(stem + ".img", add_big_file)
    compressed_stem = stem + f"-frames{size_label(frame_size)}"
    compressed = cached(compressed_stem + ".img.zst", lambda partial: subprocess.run(
        f"{sh(BIN + '/compress', '-q', '--frame-size', frame_size)} < {sh(image)} > {sh(partial)}",
        shell=True, env=env, check=True))
    volumes = cached(f"{compressed_stem}.set-{size_label(volume_size)}", lambda partial: subprocess.run(
        f"{sh(BIN + '/split-span', '-q', '--size', volume_size, partial)} < {sh(compressed)}",
        shell=True, env=env, check=True))
    return image, big, compressed, volumes


# --- mounts, and their servers ---

def drop_caches():
    """True when the page cache was dropped; False when refused (a container's read-only
    /proc/sys): then both sides find the compressed file in the cache from earlier runs."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def server_pid(mountpoint):
    """The process serving mountpoint: the one whose command line names it (both mount-image and
    ratarmount keep theirs when they go to the background)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if mountpoint.encode() in argv and int(entry) != os.getpid():
                return int(entry)
    raise BenchError(f"no process serves {mountpoint}")


def server_usage(pid):
    """{peak_rss_bytes (VmHWM), cpu_s (user + system)} of a running process."""
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"peak_rss_bytes": hwm, "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}


def wait_until(condition, what):
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(what)
        time.sleep(0.05)


def exited(pid):
    """Gone, or a zombie (its parent, init or a subreaper, reaps it when it gets to it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def unmount(mountpoint):
    """fusermount3 -u, then wait for the server (pid) to have exited; its usage before that."""
    pid = server_pid(mountpoint)
    usage = server_usage(pid)
    subprocess.run(["fusermount3", "-u", mountpoint], check=True)
    wait_until(lambda: exited(pid),
               f"the server of {mountpoint} (pid {pid}) still runs {MOUNT_TIMEOUT} s after fusermount3 -u")
    return usage


class Sides:
    """The commands of each side: mount-image (ours) and ratarmount on the compressed file."""

    def __init__(self, ratarmount, compressed, env, workdir):
        self.commands = {"mount-image": [f"{BIN}/mount-image", compressed],
                         "ratarmount": [ratarmount, compressed]}
        self.disk_name = os.path.basename(compressed)[:-len(".zst")]   # both name it so
        self.env = env
        self.workdir = workdir

    @contextlib.contextmanager
    def mounted(self, side, usages):
        """A fresh mount point with side's server on it: yields the disk file's path; after
        unmounting, the server's usage is appended to the list usages."""
        mountpoint = tempfile.mkdtemp(prefix=f"mnt-{side}-", dir=self.workdir)
        try:
            mounting = subprocess.run(self.commands[side] + [mountpoint], env=self.env, check=False,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if mounting.returncode:
                raise BenchError(f"{side} could not mount: {mounting.stderr.strip()}")
            path = os.path.join(mountpoint, self.disk_name)
            wait_until(lambda: os.path.exists(path), f"{side} did not show {path}")
            yield path
        finally:
            if os.path.ismount(mountpoint):
                usages.append(unmount(mountpoint))
            os.rmdir(mountpoint)


def alternate(phase, mounts, runs, measure, usages):
    """measure(disk file path) on fresh mounts, runs times per side, the sides alternating (and
    swapping which goes first each run), the page cache dropped before each.
    {side: [every run's figures]}; the servers' usages go to usages["PHASE SIDE"]."""
    results = {side: [] for side in mounts.commands}
    for run in range(runs):
        for side in (list(results) if run % 2 == 0 else list(results)[::-1]):
            with mounts.mounted(side, usages.setdefault(f"{phase} {side}", [])) as path:
                drop_caches()
                results[side].append(measure(path))
    return results


# --- the measurements ---

def sequential(path):
    """Seconds of dd reading the whole file with 1 MiB reads."""
    began = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True)
    return time.perf_counter() - began


def random_reads(offsets, image):
    """measure(path): seconds of each pread of READ_SIZE at offsets (POSIX_FADV_RANDOM, so that
    each is one read request and no read-ahead), each compared (untimed) with the image."""
    def measure(path):
        fd = os.open(path, os.O_RDONLY)
        seconds = []
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            with open(image, "rb") as original:
                for offset in offsets:
                    began = time.perf_counter()
                    data = os.pread(fd, READ_SIZE, offset)
                    seconds.append(time.perf_counter() - began)
                    original.seek(offset)
                    if data != original.read(READ_SIZE):
                        raise BenchError(f"{path}: a 4 KiB read at byte {offset} differs from the image")
        finally:
            os.close(fd)
        return seconds
    return measure


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


COPY_SIDES = ("mount-image X.zst", "mount-image set")


def copy_pipelines(compressed, volumes, disk_name, workdir):
    """({side: shell text} of the copy comparison, the paths they use). Each source has two
    sides: "copy ..." times cp out of the ext4 mounted (untimed) before it, as the issue puts it;
    "mount + copy ..." times mount-image, the loop mount and cp, a user's whole way to the file.
    The hooks around each run mount, unmount and check."""
    paths = {"copy": os.path.join(workdir, "copied-" + BIG_FILE),
             "restored": os.path.join(workdir, "restored-disk.img"),
             "mount": os.path.join(workdir, "mnt-copy"), "ext4": os.path.join(workdir, "mnt-copy-ext4")}
    sources = dict(zip(COPY_SIDES, [(compressed, disk_name), (volumes, "image")]))
    mount_steps = {}
    texts = {}
    for side, (source, name) in sources.items():
        mount_steps[side] = [sh(f"{BIN}/mount-image", "-q", source, paths["mount"]),
                             sh("mount", "-o", "loop,ro", os.path.join(paths["mount"], name), paths["ext4"])]
        copy = sh("cp", os.path.join(paths["ext4"], BIG_FILE), paths["copy"])
        texts[f"copy via {side}"] = copy
        texts[f"mount + copy via {side}"] = " && ".join(mount_steps[side] + [copy])
    texts["restore"] = (sh(f"{BIN}/reassemble", "-q", volumes) + " | " + sh(f"{BIN}/compress", "-d", "-q")
                        + " > " + sh(paths["restored"]))
    return texts, paths, mount_steps


def compare_copy(compressed, volumes, disk_name, image, big, runs, env, workdir, usages):
    """Medians of the copy comparison and its checks (the copied file and the restored disk)."""
    texts, paths, mount_steps = copy_pipelines(compressed, volumes, disk_name, workdir)
    for directory in (paths["mount"], paths["ext4"]):
        os.makedirs(directory, exist_ok=True)
    checks = {"copied": [], "restored": []}

    def before(name):
        remove(paths["copy"])
        remove(paths["restored"])
        if name.startswith("copy via "):
            subprocess.run(["bash", "-c", " && ".join(mount_steps[name[len("copy via "):]])], env=env, check=True)
        drop_caches()

    def after(name):
        if name == "restore":
            checks["restored"].append(same_file(paths["restored"], image))
            remove(paths["restored"])
            return
        checks["copied"].append(same_file(paths["copy"], big))
        subprocess.run(["umount", paths["ext4"]], check=True)
        usages.setdefault(name, []).append(unmount(paths["mount"]))

    try:
        timed = time_side_by_side(texts, runs, env, before=before, after=after)
    finally:
        if os.path.ismount(paths["ext4"]):
            subprocess.run(["umount", paths["ext4"]], check=False)
        if os.path.ismount(paths["mount"]):
            subprocess.run(["fusermount3", "-u", paths["mount"]], check=False)
        for directory in (paths["mount"], paths["ext4"]):
            os.rmdir(directory)
        remove(paths["copy"])
        remove(paths["restored"])
    return timed, texts, {
        f"the copied {BIG_FILE} equals the file put in the image (every mounted run)": all(checks["copied"]),
        "every restored disk equals the image": all(checks["restored"])}


def same_file(a, b):
    return subprocess.run(["cmp", "-s", a, b], check=False).returncode == 0


def whole_disk_checks(mounts, image, usages):
    """Each side's whole disk file compared with the image once (cmp, untimed)."""
    checks = {}
    for side in mounts.commands:
        with mounts.mounted(side, usages.setdefault(f"cmp {side}", [])) as path:
            checks[f"{side}: the whole disk file equals the image (cmp)"] = same_file(path, image)
    return checks


# --- the report ---

def rows_and_checks(seq, rand, copy, image_size, usages):
    rows = []
    seq_median = {side: statistics.median(runs) for side, runs in seq.items()}
    ratio = seq_median["ratarmount"] / seq_median["mount-image"]
    rows.append({"comparison": "sequential read, dd bs=1M (MB/s)",
                 "ours": image_size / seq_median["mount-image"] / MB,
                 "theirs": image_size / seq_median["ratarmount"] / MB,
                 "ours_runs_s": seq["mount-image"], "theirs_runs_s": seq["ratarmount"],
                 "ratio": ratio, "target": f">= {MIN_SEQ_RATIO:.1f}", "pass": ratio >= MIN_SEQ_RATIO})
    medians = {side: statistics.median(statistics.median(run) for run in runs) for side, runs in rand.items()}
    p95 = {side: statistics.median(percentile(run, 0.95) for run in runs) for side, runs in rand.items()}
    ratio = medians["ratarmount"] / medians["mount-image"]
    rows.append({"comparison": "random 4 KiB read, median (ms)", "ours": medians["mount-image"] * 1e3,
                 "theirs": medians["ratarmount"] * 1e3, "ratio": ratio,
                 "target": f">= {MIN_LATENCY_RATIO:.1f}", "pass": ratio >= MIN_LATENCY_RATIO})
    rows.append({"comparison": "random 4 KiB read, p95 (ms)", "ours": p95["mount-image"] * 1e3,
                 "theirs": p95["ratarmount"] * 1e3, "ratio": p95["ratarmount"] / p95["mount-image"],
                 "target": "", "pass": True})
    restore = copy["restore"][0]
    # The target is the "copying one 50 MiB file out of the mounted ext4"; the whole way
    # from the backup to the file (mount-image and the loop mount too) is shown beside it.
    for side in COPY_SIDES:
        for what, target in ((f"copy via {side}", MIN_COPY_RATIO), (f"mount + copy via {side}", None)):
            ratio = restore / copy[what][0]
            rows.append({"comparison": f"{what} vs restore (s)", "ours": copy[what][0], "theirs": restore,
                         "ours_runs_s": copy[what][1], "theirs_runs_s": copy["restore"][1], "ratio": ratio,
                         "target": "" if target is None else f">= {target:.0f}",
                         "pass": target is None or ratio >= target})
    peaks = {name: max(usage["peak_rss_bytes"] for usage in runs) for name, runs in usages.items()}
    ours_peak = max(value for name, value in peaks.items() if "mount-image" in name)
    rows.append({"comparison": "peak RSS of the server (MB)", "ours": ours_peak / MB,
                 "theirs": max(value for name, value in peaks.items() if "ratarmount" in name) / MB, "ratio": None, "target": f"<= {MAX_RSS / MB:.0f} MB",
                 "pass": ours_peak <= MAX_RSS})
    return rows, peaks


def print_report(image, compressed, runs, reads, cache_dropped, rows, peaks, usages, checks):
    print(f"\ndisk {image}: {format_size(os.path.getsize(image))}, compressed {compressed}: "
          f"{os.path.getsize(compressed) / MB:.1f} MB; {runs} runs per side, alternating, medians; "
          f"{reads} random reads per run; page cache "
          + ("dropped before every run" if cache_dropped else "NOT dropped (not root): both sides "
             "read the compressed file from the cache"))
    print(f"{'comparison':52} {'mount-image':>11} {'other':>10} {'ratio':>6} {'target':>10}  result")
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:6.2f}"
        print(f"{row['comparison']:52} {row['ours']:11.2f} {row['theirs']:10.2f} {ratio:>6} "
              f"{row['target']:>10}  {'PASS' if row['pass'] else 'FAIL'}")
    print("ratio: other / ours for times and latencies, ours / other for MB/s: above 1.0 we are "
          "faster; 'other' is ratarmount, or the full restore for the copy rows; MB = 10^6 bytes")
    print("\nservers by phase: peak RSS (MB), median CPU seconds per mount:")
    for name, runs in usages.items():
        print(f"  {name:30} peak {peaks[name] / MB:6.1f}   CPU {statistics.median(u['cpu_s'] for u in runs):6.2f} s"
              f"   ({len(runs)} mounts)")
    print("\nchecks:")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def versions(ratarmount):
    python = os.path.join(os.path.dirname(os.path.realpath(ratarmount)), "python3")
    if not os.path.exists(python):
        python = os.path.join(os.path.dirname(ratarmount), "python3")
    found = subprocess.run([python, "-c", "import importlib.metadata as m; print(*(m.version(n) for n in "
                            "('ratarmount', 'ratarmountcore', 'indexed_zstd')))"],
                           capture_output=True, text=True, check=False).stdout.split()
    return dict(tool_versions(), **dict(zip(("ratarmount", "ratarmountcore", "indexed_zstd"), found)),
                mfusepy=importlib.metadata.version("mfusepy"), kernel=os.uname().release,
                zstandard=importlib.metadata.version("zstandard"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=2 << 30, help="sample disk size (default 2G)")
    parser.add_argument("--seed", type=int, default=1, help="make-sample-disk seed (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per side (default 3)")
    parser.add_argument("--reads", type=int, default=1000, help="random 4 KiB reads per run (default 1000)")
    parser.add_argument("--file-size", type=parse_size, default=50 << 20,
                        help="the file put in the disk and copied out (default 50M)")
    # 128M: the 2 GiB sample compresses to 483 MB, which 512M volumes would hold in one volume.
    parser.add_argument("--volume-size", type=parse_size, default=128 << 20,
                        help="volume size of the set (default 128M)")
    parser.add_argument("--frame-size", type=parse_size, default=DEFAULT_FRAME_SIZE,
                        help="compress --frame-size for the compressed file and the set (default: "
                             f"compress's own, {size_label(DEFAULT_FRAME_SIZE)})")
    parser.add_argument("--ratarmount", default=DEFAULT_RATARMOUNT if os.path.exists(DEFAULT_RATARMOUNT)
                        else shutil.which("ratarmount"),
                        help=f"the ratarmount to compare with (default {DEFAULT_RATARMOUNT}, else PATH's)")
    parser.add_argument("--workdir", default="/var/tmp/mirrorpipe-bench",
                        help="images (cached), mount points and JSON results (default /var/tmp/mirrorpipe-bench)")
    args = parser.parse_args()
    if args.runs < 1 or args.reads < 1:
        parser.error("--runs and --reads must be at least 1")
    if not args.ratarmount:
        parser.error("ratarmount not found: python3 -m venv /tmp/ratar && /tmp/ratar/bin/pip install "
                     "ratarmount indexed_zstd, or give --ratarmount PATH")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        sys.exit("bench: error: needs root (loop mounts), /dev/fuse and fusermount3 (package fuse3)")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    os.makedirs(args.workdir, exist_ok=True)

    results = Results(args.workdir, "results-mount")
    image, big, compressed, volumes = inputs(args.workdir, args.size, args.seed, args.file_size,
                                             args.volume_size, args.frame_size, env)
    mounts = Sides(args.ratarmount, compressed, env, args.workdir)
    usages = {}    # "PHASE SIDE" -> [each mount's server usage]
    cache_dropped = drop_caches()
    offsets = [slot * READ_SIZE for slot in
               random.Random(args.seed).sample(range(os.path.getsize(image) // READ_SIZE), args.reads)]
    try:
        # ratarmount's first mount writes its index beside the file (X.zst.index.sqlite); later
        # mounts read it, as a user's would: made here, untimed.
        with mounts.mounted("ratarmount", []):
            pass
        print(f"bench: sequential read, {args.runs} runs per side", file=sys.stderr)
        seq = alternate("seq", mounts, args.runs, sequential, usages)
        print(f"bench: {args.reads} random 4 KiB reads, {args.runs} runs per side", file=sys.stderr)
        rand = alternate("rand", mounts, args.runs, random_reads(offsets, image), usages)
        print(f"bench: copy {BIG_FILE} out against a full restore, {args.runs} runs per side", file=sys.stderr)
        copy, copy_texts, checks = compare_copy(compressed, volumes, mounts.disk_name, image, big, args.runs,
                                                env, args.workdir, usages)
        checks.update(whole_disk_checks(mounts, image, usages))
    except (BenchError, subprocess.CalledProcessError) as exc:
        sys.exit(f"bench: error: {exc}")
    checks["every random read equals the image's bytes (both sides)"] = True   # else BenchError above
    rows, peaks = rows_and_checks(seq, rand, copy, os.path.getsize(image), usages)
    print_report(image, compressed, args.runs, args.reads, cache_dropped, rows, peaks, usages, checks)

    results.save(image=image, image_bytes=os.path.getsize(image), compressed=compressed,
                 compressed_bytes=os.path.getsize(compressed), volumes=volumes,
                 page_cache_dropped=cache_dropped, runs=args.runs, random_reads=args.reads,
                 tools=versions(args.ratarmount), copy_pipelines=copy_texts, comparisons=rows,
                 random_read_seconds=rand, servers=usages, checks=checks)
    print(f"\nresults: {results.path}")
    return 0 if all(row["pass"] for row in rows) and all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

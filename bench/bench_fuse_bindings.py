#!/usr/bin/env python3
"""Choose mount-image's FUSE binding by measurement: mfusepy against pyfuse3, side by side.

Each binding serves the same minimal read-only file system: one file, `disk`, of --size bytes
(1 GiB) whose bytes are an 8 MiB block of random bytes repeated, so that a read costs a slice and
nothing else and the figures are the binding's and the kernel's. Each binding runs multi-threaded
as far as it lets: mfusepy on libfuse's multi-threaded loop (nothreads=False), pyfuse3 with trio
tasks answering requests concurrently. Both mount `ro` with an fsname; mfusepy also with
max_read=1048576 (pyfuse3 cannot set it; the kernel's limit of 1 MiB requests holds for both).

Phases (every one on a fresh mount, so the page cache never answers for the server; bindings
alternate within each run, --runs runs, medians reported):

  seq           dd if=MNT/disk of=/dev/null bs=1M: MB/s, and the server's CPU seconds
  seq ra=1M     the same after raising the mount's read_ahead_kb (/sys/class/bdi) to 1024
  rand 4K       2000 preads of 4 KiB at distinct random offsets from one client
                (POSIX_FADV_RANDOM, so each read is one request): median and p95 latency
  4x64K         4 client processes, 500 preads of 64 KiB each at distinct random offsets:
                total MB/s
  4x64K 2ms     the same with read() sleeping 2 ms first (a decompression that releases the GIL:
                mfusepy sleeps in its libfuse thread, pyfuse3 in trio.to_thread, as a real
                decoder would run there); 4 clients served in parallel give about 4x one client
  1x64K 2ms     one client, 2000 preads, the 2 ms server: the base of that ratio

Every read a client makes is compared with the bytes it must return (untimed). The server's
peak RSS and CPU come from wait4() after `fusermount3 -u`; the read request sizes the server saw
are in the JSON, to show what the kernel sends. Needs root (read_ahead_kb), /dev/fuse, fuse3, and
a Python with both bindings (not mirrorpipe's .venv: they are not its dependencies yet):

    python3 -m venv /tmp/fusebench && /tmp/fusebench/bin/pip install mfusepy pyfuse3 trio
    /tmp/fusebench/bin/python bench/bench_fuse_bindings.py            # 5 runs, 1 GiB
    /tmp/fusebench/bin/python bench/bench_fuse_bindings.py --runs 3 --size 256M

Results: a table, and /var/tmp/mirrorpipe-bench/fuse-bindings-<UTC time>.json.
"""

import argparse
import collections
import errno
import importlib.metadata
import json
import multiprocessing
import os
import platform
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time

BINDINGS = ("mfusepy", "pyfuse3")
FILE_NAME = "disk"
BLOCK_SIZE = 8 << 20
SEED = 13
MAX_READ = 1 << 20
MOUNT_TIMEOUT = 10
RANDOM_READS = 2000
CLIENTS = 4
CLIENT_READS = 500
DELAY_MS = 2


def random_block():
    """The 8 MiB the file repeats, twice in a row: any slice of up to 8 MiB is contiguous."""
    block = random.Random(SEED).randbytes(BLOCK_SIZE)
    return block + block


def expected(doubled, offset, size, file_size):
    size = max(0, min(size, file_size - offset))
    start = offset % BLOCK_SIZE
    return doubled[start:start + size]


# --- the servers (run as `--serve BINDING`, in a process of their own) ---

def serve_mfusepy(mountpoint, file_size, delay, request_sizes):
    import mfusepy

    doubled = random_block()
    file_path = "/" + FILE_NAME

    class ImageOperations(mfusepy.Operations):
        use_ns = True

        def getattr(self, path, fh=None):
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path == file_path:
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": file_size}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", "..", FILE_NAME]

        def open(self, path, flags):
            return 0

        def init_with_config(self, connection, config):
            # libfuse 3.14 refuses the mount ("init() and fuse_session_new() requested different
            # maximum read size") unless init repeats the max_read of the mount options
            connection.max_read = MAX_READ

        def read(self, path, size, offset, fh):
            request_sizes[size] += 1
            if delay:
                time.sleep(delay)  # releases the GIL, as zstd's decompression does
            return expected(doubled, offset, size, file_size)

    # max_idle_threads: without it libfuse 3.14 prints "Ignoring invalid max threads value
    # 4294967295 > max (100000)." on every mount
    mfusepy.FUSE(ImageOperations(), mountpoint, foreground=True, nothreads=False, ro=True,
                 fsname="bench-mfusepy", max_read=MAX_READ, max_idle_threads=10)


def serve_pyfuse3(mountpoint, file_size, delay, request_sizes):
    import pyfuse3
    import trio

    doubled = memoryview(random_block())
    file_inode = pyfuse3.ROOT_INODE + 1

    class ImageOperations(pyfuse3.Operations):
        def attributes(self, inode):
            attributes = pyfuse3.EntryAttributes()
            attributes.st_ino = inode
            if inode == pyfuse3.ROOT_INODE:
                attributes.st_mode, attributes.st_nlink = stat.S_IFDIR | 0o555, 2
            else:
                attributes.st_mode, attributes.st_nlink = stat.S_IFREG | 0o444, 1
                attributes.st_size = file_size
            attributes.attr_timeout = attributes.entry_timeout = 3600
            return attributes

        async def getattr(self, inode, ctx=None):
            if inode not in (pyfuse3.ROOT_INODE, file_inode):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attributes(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME.encode():
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attributes(file_inode)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            if start_id == 0:
                pyfuse3.readdir_reply(token, FILE_NAME.encode(), self.attributes(file_inode), 1)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode)

        async def read(self, fh, offset, size):
            request_sizes[size] += 1
            if delay:
                # a decoder blocking the trio thread would stall every other request
                await trio.to_thread.run_sync(time.sleep, delay)
            return expected(doubled, offset, size, file_size)

    # no max_read: pyfuse3 cannot repeat it in init as libfuse 3.14 requires (the mount fails);
    # the kernel's own limit is 1 MiB requests (max_pages 256) all the same
    options = set(pyfuse3.default_options) | {"ro", "fsname=bench-pyfuse3"}
    pyfuse3.init(ImageOperations(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)  # fusermount3 -u has unmounted it


def serve(binding, mountpoint, file_size, delay, stats_path):
    request_sizes = collections.Counter()
    {"mfusepy": serve_mfusepy, "pyfuse3": serve_pyfuse3}[binding](
        mountpoint, file_size, delay, request_sizes)
    with open(stats_path, "w") as f:
        json.dump({str(size): count for size, count in sorted(request_sizes.items())}, f)


# --- the clients ---

def random_offsets(count, read_size, file_size, rng):
    """count distinct read_size-aligned offsets: no read finds another's pages in the cache."""
    return [slot * read_size for slot in rng.sample(range(file_size // read_size), count)]


def timed_preads(path, offsets, read_size, file_size):
    """Seconds per pread, each read checked (untimed) against the bytes it must return."""
    doubled = random_block()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        seconds = []
        for offset in offsets:
            began = time.perf_counter()
            data = os.pread(fd, read_size, offset)
            seconds.append(time.perf_counter() - began)
            if data != expected(doubled, offset, read_size, file_size):
                raise SystemExit(f"{path}: wrong bytes at offset {offset}")
        return seconds
    finally:
        os.close(fd)


def client(path, offsets, read_size, file_size, start, results):
    start.wait()
    results.put(sum(timed_preads(path, offsets, read_size, file_size)))


def concurrent_throughput(path, clients, reads, read_size, file_size, rng):
    """MB/s of clients processes reading at once, each its own distinct offsets."""
    offsets = random_offsets(clients * reads, read_size, file_size, rng)
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=client, args=(
        path, offsets[i::clients], read_size, file_size, start, results)) for i in range(clients)]
    for process in processes:
        process.start()
    began = time.perf_counter()
    start.set()
    for process in processes:
        process.join()
    seconds = time.perf_counter() - began
    if any(process.exitcode for process in processes):
        raise SystemExit(f"a client of {path} failed")
    return clients * reads * read_size / seconds / 1e6


# --- mounting ---

class Mount:
    """A server process of one binding at a fresh mount point; unmounted with fusermount3 -u,
    after which wait4() gives its peak RSS and CPU time."""

    def __init__(self, binding, file_size, delay, workdir):
        self.binding = binding
        self.mountpoint = tempfile.mkdtemp(prefix=f"{binding}-", dir=workdir)
        self.stats_path = self.mountpoint + ".stats.json"
        self.path = os.path.join(self.mountpoint, FILE_NAME)
        self.process = subprocess.Popen([
            sys.executable, os.path.abspath(__file__), "--serve", binding,
            "--mountpoint", self.mountpoint, "--size", str(file_size), "--delay", str(delay),
            "--stats", self.stats_path])
        self.exit = None  # (status, resource usage) once reaped
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not (os.path.ismount(self.mountpoint) and os.path.exists(self.path)):
            if self.reaped() or time.monotonic() > deadline:
                self.unmount()
                raise SystemExit(f"{binding} did not mount at {self.mountpoint}")
            time.sleep(0.02)

    def reaped(self):
        """Whether the server has exited; reaped with wait4, which gives its rusage."""
        if self.exit is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.exit = status, usage
                self.process.returncode = os.waitstatus_to_exitcode(status)
        return self.exit is not None

    def bdi(self):
        device = os.stat(self.mountpoint).st_dev
        return f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}"

    def read_ahead_kb(self):
        with open(self.bdi() + "/read_ahead_kb") as f:
            return int(f.read())

    def set_read_ahead_kb(self, kilobytes):
        with open(self.bdi() + "/read_ahead_kb", "w") as f:
            f.write(str(kilobytes))

    def unmount(self):
        """{cpu_seconds, peak_rss_mb, request_sizes}; fails when the server outlives fusermount."""
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", self.mountpoint], check=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not self.reaped():
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise SystemExit(f"{self.binding}'s server was still running after unmounting")
            time.sleep(0.02)
        usage = self.exit[1]
        if os.path.ismount(self.mountpoint):  # a server that died left its mount behind
            subprocess.run(["fusermount3", "-u", self.mountpoint], check=True)
        os.rmdir(self.mountpoint)
        request_sizes = {}
        if os.path.exists(self.stats_path):
            with open(self.stats_path) as f:
                request_sizes = json.load(f)
            os.unlink(self.stats_path)
        if self.process.returncode:
            raise SystemExit(f"{self.binding}'s server exited with {self.process.returncode}")
        return {"cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024, "request_sizes": request_sizes}


# --- the phases: each returns its figures, and the server's once unmounted ---

def phase_sequential(binding, file_size, workdir, rng, read_ahead_kb=None):
    mount = Mount(binding, file_size, 0, workdir)
    try:
        if read_ahead_kb:
            mount.set_read_ahead_kb(read_ahead_kb)
        figures = {"read_ahead_kb": mount.read_ahead_kb()}
        began = time.perf_counter()
        subprocess.run(["dd", f"if={mount.path}", "of=/dev/null", "bs=1M", "status=none"],
                       check=True)
        figures["mb_per_s"] = file_size / (time.perf_counter() - began) / 1e6
    finally:
        server = mount.unmount()
    return figures, server


def phase_sequential_large_readahead(binding, file_size, workdir, rng):
    return phase_sequential(binding, file_size, workdir, rng, read_ahead_kb=1024)


def phase_random_4k(binding, file_size, workdir, rng):
    mount = Mount(binding, file_size, 0, workdir)
    try:
        offsets = random_offsets(RANDOM_READS, 4096, file_size, rng)
        seconds = sorted(timed_preads(mount.path, offsets, 4096, file_size))
    finally:
        server = mount.unmount()
    return {"median_us": statistics.median(seconds) * 1e6,
            "p95_us": seconds[int(len(seconds) * 0.95)] * 1e6}, server


def concurrent_phase(clients, reads, delay):
    def phase(binding, file_size, workdir, rng):
        mount = Mount(binding, file_size, delay, workdir)
        try:
            figures = {"mb_per_s": concurrent_throughput(
                mount.path, clients, reads, 64 << 10, file_size, rng)}
        finally:
            server = mount.unmount()
        return figures, server
    return phase


PHASES = {
    "seq": phase_sequential,
    "seq ra=1M": phase_sequential_large_readahead,
    "rand 4K": phase_random_4k,
    f"{CLIENTS}x64K": concurrent_phase(CLIENTS, CLIENT_READS, 0),
    f"{CLIENTS}x64K {DELAY_MS}ms": concurrent_phase(CLIENTS, CLIENT_READS, DELAY_MS / 1000),
    f"1x64K {DELAY_MS}ms": concurrent_phase(1, CLIENTS * CLIENT_READS, DELAY_MS / 1000),
}


def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


def report(results):
    """The table: medians per binding and phase, and what the JSON holds besides."""
    rows = []
    for binding in BINDINGS:
        phases = results[binding]
        seq = phases["seq"]
        seq_ra = phases["seq ra=1M"]
        parallel = (median_of(phases[f"{CLIENTS}x64K {DELAY_MS}ms"], "mb_per_s")
                    / median_of(phases[f"1x64K {DELAY_MS}ms"], "mb_per_s"))
        rows.append([
            binding,
            f"{median_of(seq, 'mb_per_s'):.0f}",
            f"{median_of([run['server'] for run in seq], 'cpu_seconds'):.2f}",
            f"{median_of(seq_ra, 'mb_per_s'):.0f}",
            f"{median_of([run['server'] for run in seq_ra], 'cpu_seconds'):.2f}",
            f"{median_of(phases['rand 4K'], 'median_us'):.0f}",
            f"{median_of(phases['rand 4K'], 'p95_us'):.0f}",
            f"{median_of(phases[f'{CLIENTS}x64K'], 'mb_per_s'):.0f}",
            f"{median_of(phases[f'1x64K {DELAY_MS}ms'], 'mb_per_s'):.1f}",
            f"{median_of(phases[f'{CLIENTS}x64K {DELAY_MS}ms'], 'mb_per_s'):.1f}",
            f"{parallel:.2f}x",
            f"{max(run['server']['peak_rss_mb'] for runs in phases.values() for run in runs):.0f}",
        ])
    header = ["binding", "seq MB/s", "seq CPU s", "ra=1M MB/s", "ra=1M CPU s", "4K med us",
              "4K p95 us", f"{CLIENTS}x64K MB/s", f"1x64K {DELAY_MS}ms",
              f"{CLIENTS}x64K {DELAY_MS}ms", "parallel", "peak RSS MB"]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    for binding in BINDINGS:
        for name, runs in results[binding].items():
            largest = max(int(size) for run in runs for size in run["server"]["request_sizes"])
            print(f"{binding} {name}: largest read request {largest >> 10} KiB"
                  + (f", read_ahead_kb {runs[0]['read_ahead_kb']}"
                     if "read_ahead_kb" in runs[0] else ""))


def versions():
    found = {name: importlib.metadata.version(name) for name in ("mfusepy", "pyfuse3", "trio")}
    found["libfuse3"] = subprocess.run(["pkg-config", "--modversion", "fuse3"],
                                       capture_output=True, text=True).stdout.strip()
    found["kernel"] = platform.release()
    found["python"] = platform.python_version()
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", default="1G", help="file size, K M G suffixes (default 1G)")
    parser.add_argument("--workdir", default="/var/tmp/mirrorpipe-bench")
    parser.add_argument("--serve", choices=BINDINGS, help=argparse.SUPPRESS)
    parser.add_argument("--mountpoint", help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    file_size = (int(args.size[:-1]) * units[args.size[-1]] if args.size[-1] in units
                 else int(args.size))
    if args.serve:
        serve(args.serve, args.mountpoint, file_size, args.delay, args.stats)
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        sys.exit("bench_fuse_bindings: needs root, /dev/fuse and fusermount3 (package fuse3)")

    os.makedirs(args.workdir, exist_ok=True)
    rng = random.Random(SEED)
    results = {binding: {name: [] for name in PHASES} for binding in BINDINGS}
    load_before = os.getloadavg()
    for run in range(args.runs):
        order = BINDINGS if run % 2 == 0 else BINDINGS[::-1]  # neither always goes first
        for name, phase in PHASES.items():
            for binding in order:
                figures, server = phase(binding, file_size, args.workdir, rng)
                results[binding][name].append({**figures, "server": server})
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    report(results)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(args.workdir, f"fuse-bindings-{stamp}.json")
    commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse",
                             "HEAD"], capture_output=True, text=True).stdout.strip()
    with open(path, "w") as f:
        json.dump({"file_size": file_size, "runs": args.runs, "clients": CLIENTS,
                   "client_reads": CLIENT_READS, "random_reads": RANDOM_READS,
                   "delay_ms": DELAY_MS, "max_read": MAX_READ, "versions": versions(),
                   "cpus": os.cpu_count(), "load_before": load_before,
                   "load_after": os.getloadavg(), "commit": commit, "results": results},
                  f, indent=1)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

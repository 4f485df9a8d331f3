"""How the mirrorpipe commands of one pipeline tell each other that a stream is complete.

A pipe has no end marker: a command that reads end of input cannot tell the end of the stream
from the death of the command feeding it (`read-disk` killed at 40% leaves `compress` a valid,
short stream). Three things close that gap; doc/design.md says what each covers and its limits.

1. Hand-off records. A command whose standard output is a pipe (or FIFO) keeps a small record
   named after that pipe and its pid in RECORDS_DIR: its name and its state, "running" from its
   start, "done" once everything it wrote is written, or "failed" with the reason. It writes the
   final state before it exits, and so before the reader can see end of input; a command that is
   killed never gets past "running". A reader that reaches end of input judges the writers of
   its pipe by their records: all done, or the input is incomplete and it fails naming the
   writer. A failed writer passes on the first cause, so the last command of a long pipeline
   still names the one that ended early.
2. Through other programs (pv, mbuffer, dd, tee) on the same machine: at its start a reader looks
   in /proc for the processes that write its standard input; those that are not mirrorpipe
   commands are followed upstream through their own standard input. At end of input the nearest
   pipe along that chain with records is judged.
3. A cut connection (ssh): see cut_connection().

Beside these, the compressed stream carries its own end marker: compress's seek table closes
every stream (frames.check_stream_end), and compress marks a stream it could not finish so that
`zstd -d` and `compress -d` both fail on it.
"""

import collections
import json
import os
import select
import stat
import threading
import time

from .. import processes
from ..errors import Error

# /dev/shm is a memory file system every user may write: records cost no disk and vanish at boot.
RECORDS_DIR = "/dev/shm/mirrorpipe-streams" if os.path.isdir("/dev/shm") else "/tmp/mirrorpipe-streams"
# How far upstream to follow other programs: pipelines longer than this are not seen.
MAX_CHAIN = 8

RUNNING, DONE, FAILED = "running", "done", "failed"


class IncompleteInput(Error):
    """The input ended before its stream did; `origin` names the first command that ended early,
    so that every command downstream repeats the same cause."""

    def __init__(self, origin, consequence=""):
        super().__init__(f"its input is incomplete: {origin}" + (f"; {consequence}" if consequence else ""))
        self.origin = origin

    def with_consequence(self, consequence):
        """The same cause, saying what this command left behind."""
        return IncompleteInput(self.origin, consequence)


def pipe_identity(fd_or_path):
    """'DEV-INO' of the pipe or FIFO at a descriptor or path (/proc/PID/fd/N), None for anything
    else (files, terminals, sockets) or when it cannot be looked at."""
    try:
        st = os.stat(fd_or_path)
    except OSError:
        return None
    return f"{st.st_dev}-{st.st_ino}" if stat.S_ISFIFO(st.st_mode) else None


def _records_dir():
    """The shared directory of records, made if missing; None when it cannot be trusted (another
    user could then forge or remove records, so the mechanism stays off)."""
    try:
        os.makedirs(RECORDS_DIR, exist_ok=True)
        st = os.lstat(RECORDS_DIR)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o1777:
            os.chmod(RECORDS_DIR, 0o1777)   # makedirs applies the umask
            st = os.lstat(RECORDS_DIR)
    except OSError:
        return None
    if st.st_uid not in (0, os.geteuid()) or not stat.S_ISDIR(st.st_mode) or not st.st_mode & stat.S_ISVTX:
        return None
    return RECORDS_DIR


class Stage:
    """This command's place in a pipeline: its record as a writer, its view upstream as a reader."""

    def __init__(self, command):
        self.command = command
        self.directory = _records_dir()
        self.output = pipe_identity(1)
        self.input = pipe_identity(0)
        self.record = None
        if self.directory and self.output:
            self.record = os.path.join(self.directory, f"{self.output}.{os.getpid()}")
            _sweep(self.directory)
            self._write_record(RUNNING)
        # The chain upstream is found while the command starts: by its end of input the
        # processes that fed it may be gone.
        self.upstream = [self.input] if self.input else []
        self.writers = {}       # pipe -> [Writer] found at the start
        self._walk = None
        if self.directory and self.input:
            self._walk = threading.Thread(target=self._follow_upstream, name="upstream", daemon=True)
            self._walk.start()

    # -- as a writer ---------------------------------------------------------------------------

    def _write_record(self, state, reason=None):
        record = {"command": self.command, "pid": os.getpid(), "state": state}
        if reason:
            record["reason"] = reason
        partial = self.record + ".tmp"
        try:
            with open(partial, "w") as f:
                json.dump(record, f)
            os.replace(partial, self.record)
        except OSError:
            pass  # /dev/shm full or gone: downstream then cannot tell, as with a foreign writer

    def finished(self):
        """Everything this command writes has been written: say so before exiting."""
        if self.record:
            self._write_record(DONE)

    def failed(self, exc):
        """This command stops with an error (after writing what it wrote)."""
        if self.record:
            origin = exc.origin if isinstance(exc, IncompleteInput) else \
                f"{self.command} (pid {os.getpid()}) failed: {exc}"
            self._write_record(FAILED, origin)

    # -- as a reader ---------------------------------------------------------------------------

    def _follow_upstream(self):
        pipe = self.input
        seen = {pipe}
        for _ in range(MAX_CHAIN):
            writers = [w for w in _writers_of(pipe) if w.pid != os.getpid()]
            if not writers:
                return
            self.writers[pipe] = writers
            upstream = {w.source for w in writers if w.source and w.source not in seen}
            if len(upstream) != 1:
                return  # nothing further up, or a fan-in this simple chain cannot follow
            pipe = upstream.pop()
            seen.add(pipe)
            self.upstream.append(pipe)

    def confirm_input_end(self, received=None):
        """At end of standard input, after `received` bytes: raise IncompleteInput when the
        stream did not really end."""
        if self._walk:
            self._walk.join()
        for depth, pipe in enumerate(self.upstream):
            records = _records_of(self.directory, pipe)
            # A mirrorpipe command killed before it could write its record wrote nothing either.
            unrecorded = [w for w in self.writers.get(pipe, []) if w.ours and w.pid not in records]
            if not records and not unrecorded:
                continue
            try:
                self._judge(depth, records, unrecorded)
            finally:
                if depth == 0:
                    for path, _ in records.values():
                        _remove(path)
            return
        problem = cut_connection(self.command)
        if problem:
            raise IncompleteInput(problem)
        if received == 0 and self.input:
            # Its writer was gone before this command could look. A mirrorpipe command killed
            # before it began looks like that, and so does a program that wrote nothing; an
            # empty stream is never a backup, so both are refused.
            raise IncompleteInput("no data arrived, and the program feeding it was gone before it "
                                  "could say that it finished (killed as it started?)")

    def _judge(self, depth, records, unrecorded):
        via = self._via(depth)
        for pid, (_, record) in sorted(records.items()):
            name = f"{record.get('command', 'a command')} (pid {pid}){via}"
            if record.get("state") == FAILED:
                raise IncompleteInput(record.get("reason") or f"{name} failed")
            if record.get("state") != DONE:
                raise IncompleteInput(f"{name} ended before the end of its stream "
                                      "(it was killed or crashed)")
        for writer in unrecorded:
            raise IncompleteInput(f"{writer.name} (pid {writer.pid}){via} ended before it began its "
                                  "stream (it was killed or crashed)")

    def _via(self, depth):
        names = [w.name for pipe in self.upstream[:depth] for w in self.writers.get(pipe, [])]
        return f", which fed this command through {', '.join(names)}," if names else ""


def _records_of(directory, pipe):
    """{pid: (path, record)} of the writers of pipe that left a record."""
    found = {}
    if not directory:
        return found
    prefix = pipe + "."
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            path = os.path.join(directory, name)
            try:
                with open(path) as f:
                    found[int(name[len(prefix):])] = (path, json.load(f))
            except (OSError, ValueError):
                continue
    return found


# The mirrorpipe commands, as their launchers are named (bin/NAME, console scripts).
COMMAND_NAMES = frozenset(name.removesuffix(".py").replace("_", "-") for name in
                          os.listdir(os.path.join(os.path.dirname(os.path.dirname(__file__)), "commands"))
                          if name.endswith(".py") and not name.startswith("_"))


# A process that held a pipe open for writing when this command started: its name is a mirrorpipe
# command's (ours: it must leave a record) or the program's; source: the pipe on its stdin.
Writer = collections.namedtuple("Writer", "pid name ours source")


def _writers_of(pipe):
    """[Writer] of the processes that hold pipe open for writing."""
    writers = []
    for pid in processes.others():
        for fd, path in processes.descriptors(pid):
            try:
                if pipe_identity(path) != pipe or processes.open_mode(pid, fd) == os.O_RDONLY:
                    continue
                name = processes.program_name(pid)
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            writers.append(Writer(pid, name, name in COMMAND_NAMES, pipe_identity(f"/proc/{pid}/fd/0")))
            break
    return writers


# Records of writers that died with no mirrorpipe reader (`read-disk | dd`) stay behind; they are
# removed once nothing holds their pipe any more. A sweep looks at /proc (a few ms here, more on a
# desktop with thousands of descriptors), so the commands take turns: one sweep a minute.
SWEEP_AGE = 60
SWEPT_MARKER = "swept"   # its modification time is the last sweep's


def _sweep(directory):
    marker = os.path.join(directory, SWEPT_MARKER)
    now = time.time()
    try:
        if now - os.stat(marker).st_mtime < SWEEP_AGE:
            return
    except OSError:
        pass
    try:
        with open(marker, "a"):
            os.utime(marker)
        names = os.listdir(directory)
    except OSError:
        return
    stale = []
    for name in names:
        pipe, _, pid = name.partition(".")
        path = os.path.join(directory, name)
        if name == SWEPT_MARKER:
            continue
        if not pid.isdigit():
            try:
                if now - os.lstat(path).st_mtime > SWEEP_AGE:
                    _remove(path)   # a .tmp left by a writer killed in mid-update
            except OSError:
                pass
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            if now - os.lstat(path).st_mtime > SWEEP_AGE:
                stale.append((pipe, path))
        except OSError:
            continue
    if stale:
        open_pipes = _open_pipes()
        for pipe, path in stale:
            if pipe not in open_pipes:
                _remove(path)


def _open_pipes():
    """Identities of every pipe some process (that we may look at) holds open."""
    return {pipe_identity(path) for pid in processes.others()
            for _, path in processes.descriptors(pid)} - {None}


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def cut_connection(command, wait=0.05):
    """At end of input, tell a cut connection from the stream's end; the reason, or None.

    When the ssh session that feeds `ssh host 'split-span ...'` dies, the command just sees end of
    input. But sshd then also closes the reading ends of the session's stdout and stderr pipes,
    which a clean end of the stream never does while we run. So if stdout or stderr is a pipe or
    socket whose reader is gone (or goes within `wait` seconds, as sshd closes its descriptors one
    by one), the input was cut."""
    watched = []
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            watched.append(fd)
    if not watched:
        return None
    poller = select.poll()
    for fd in watched:
        poller.register(fd, 0)  # no events asked: poll reports POLLERR/POLLHUP only
    if poller.poll(wait * 1000):
        return (f"the connection or session that fed {command} closed before the end of the "
                "stream (the process feeding it went away)")
    return None


_stage = None


def start(command):
    """Join the pipeline as COMMAND, once per process: the launcher does it as early as it can
    (mirrorpipe.commands), Command.main makes sure of it."""
    global _stage
    if _stage is None or _stage.command != command:
        _stage = Stage(command)
    return _stage


def confirm_input_end(received=None):
    """Called by a command that read its standard input to the end (`received` bytes, when
    counted), before it finishes anything on the strength of it: raises IncompleteInput naming the
    command that fed it when that command ended early (killed, failed) or its connection was cut;
    returns when the input is known complete or nothing says otherwise (a writer that is not a
    mirrorpipe command)."""
    if _stage is None:
        problem = cut_connection("this command")
        if problem:
            raise IncompleteInput(problem)
        return
    _stage.confirm_input_end(received)

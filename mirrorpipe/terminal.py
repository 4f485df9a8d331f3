"""The terminal that the commands of one pipeline share: messages and the one progress line on
stderr, questions on /dev/tty asked one at a time, and a quiet end on SIGPIPE.

Data goes through stdin and stdout; nothing here touches them except to notice that the reader of
stdout went away while a question waits.
"""

import atexit
import contextlib
import errno
import fcntl
import io
import os
import select
import shutil
import signal
import stat
import tempfile
import threading
import time

from .progress import NoProgress
from .units import format_duration, format_size

def open_terminal():
    """The controlling terminal for prompts (stdin and stdout carry data), or None without one."""
    try:
        # Unbuffered bytes under the text layer: open(..., "r+") wants a seekable file (BufferedRandom)
        # and fails on every terminal.
        raw = open("/dev/tty", "r+b", buffering=0)
    except OSError:
        return None
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", line_buffering=True)


class Prompter:
    """Questions on the terminal, for the engine to be handed: reading a set disc by disc and
    burning disc after disc ask through one, knowing nothing of terminals."""

    def __init__(self, tty):
        self.tty = tty

    @classmethod
    def open(cls):
        """A Prompter on the controlling terminal, or None without one."""
        tty = open_terminal()
        return cls(tty) if tty else None

    def ask(self, question):
        """The answer line, or None when the terminal is gone."""
        return ask(question, tty=self.tty)

    def close(self):
        self.tty.close()


def ask(question, tty=None):
    """Ask a question on /dev/tty and return the answer line, or None when there is no terminal.

    The commands of a pipeline ask one at a time (reassemble's 'insert disc 2' waits while
    write-disk's 'type yes' is open), so that each question is shown whole and the line typed
    reaches the command that asked.
    """
    own = tty is None
    tty = tty or open_terminal()
    if tty is None:
        return None
    try:
        with _TerminalLine.prompt(question, tty):
            answer = _answer_line(tty)
        return answer.rstrip("\n") if answer else None
    finally:
        if own:
            tty.close()


def _answer_line(tty):
    """The line typed on tty; SIGPIPE, as the next write would meet, when meanwhile the reader of
    standard output goes away: reassemble waiting for disc 2 ends with the pipeline when
    write-disk is refused its 'yes' and compress -d, blocked writing to it, dies. (Only here:
    a command that lost its reader but has nothing left to write must not die of it, as
    `compress -d | cmp --bytes=N` shows.)"""
    watch = select.poll()
    watch.register(tty.fileno(), select.POLLIN)
    try:
        if stat.S_ISFIFO(os.fstat(1).st_mode):
            watch.register(1, 0)   # a pipe's writer gets POLLERR once its last reader is gone
    except OSError:
        pass
    if any(fd == 1 for fd, _ in watch.poll()):
        signal.raise_signal(signal.SIGPIPE)   # Command.main's handler ends the command here
        raise BrokenPipeError(errno.EPIPE, "standard output has no reader")
    return tty.readline()


class _TerminalLine:
    """Coordinates writers of stderr among the mirrorpipe commands of one pipeline.

    The commands of a pipeline share a process group. Each one that shows progress writes its
    status to a small file in a directory named for the group; the live process with the lowest
    pid draws all statuses as one line. Every write to the terminal happens under one lock, so a
    message or a final summary never lands in the middle of another command's line. A question
    (ask) holds a second lock from the moment it is shown until it is answered; meanwhile no
    progress is drawn and messages are written above the question, which is shown again below
    them.
    """

    _dir = None

    @classmethod
    def directory(cls):
        if cls._dir is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            prefix = f"mirrorpipe-progress-{os.getuid()}-"
            cls._dir = os.path.join(base, f"{prefix}{os.getpgrp()}")
            cls._sweep(base, prefix)
            atexit.register(cls._clean_up)
        # Made again on every use: the last command of a pipeline to exit removes it.
        os.makedirs(cls._dir, mode=0o700, exist_ok=True)
        return cls._dir

    @classmethod
    def lock(cls, patience=None):
        return _FileLock(os.path.join(cls.directory(), "lock"), patience)

    @classmethod
    def publish(cls, text):
        path = os.path.join(cls.directory(), str(os.getpid()))
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    @classmethod
    def withdraw(cls):
        try:
            os.unlink(os.path.join(cls.directory(), str(os.getpid())))
        except OSError:
            pass

    @staticmethod
    def _sweep(base, prefix):
        """Remove the directories of pipelines whose processes are all gone: a command killed by
        SIGPIPE or SIGKILL never runs its clean-up."""
        for name in os.listdir(base):
            if not name.startswith(prefix) or not name[len(prefix):].isdigit():
                continue
            try:
                os.killpg(int(name[len(prefix):]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            except OSError:
                pass

    @classmethod
    def _clean_up(cls):
        cls.withdraw()
        try:
            if not cls.statuses():
                for name in ("lock", "question.lock"):
                    if os.path.exists(os.path.join(cls._dir, name)):
                        os.unlink(os.path.join(cls._dir, name))
                os.rmdir(cls._dir)
        except OSError:
            pass  # another command of the pipeline is still using it

    @classmethod
    @contextlib.contextmanager
    def prompt(cls, question, tty):
        """Show question on tty and keep the terminal for its answer, read within the block.

        Only the user can end a question, so whoever waits for one waits for the user, never for
        another command: a command asks from its main thread holding no other lock, and the
        terminal lock (taken inside this one, never the other way round) is held only for writes.
        """
        marker = os.path.join(cls.directory(), "question")
        with _FileLock(os.path.join(cls.directory(), "question.lock")):
            with cls.lock():
                with open(marker, "w") as f:
                    f.write(f"{os.getpid()}\n{question}")
                tty.write("\r\x1b[K" + question)
                tty.flush()
            try:
                yield
            finally:
                try:
                    os.unlink(marker)
                except OSError:
                    pass

    @classmethod
    def open_question(cls):
        """(pid, text) of the question a live command of the pipeline waits to have answered,
        or None."""
        try:
            with open(os.path.join(cls.directory(), "question")) as f:
                pid, text = f.read().split("\n", 1)
            # The asker may have been killed (SIGKILL leaves the file) and its pid reused.
            if os.getpgid(int(pid)) == os.getpgrp():
                return int(pid), text
        except (OSError, ValueError):
            pass
        return None

    @classmethod
    def end_line(cls):
        """Erase the shared progress line (this command dies without a closing message, of
        SIGPIPE), so that the shell's prompt does not follow it; another command's open question
        stays. Called from a signal handler, which may interrupt this very process while it
        holds the terminal lock: after waiting a moment it writes without the lock."""
        if cls._dir is None or not os.isatty(2):
            return   # this command never wrote to the shared line
        try:
            with cls.lock(patience=0.5):
                question = cls.open_question()
                if question is None or question[0] == os.getpid():
                    os.write(2, b"\r\x1b[K")
        except OSError:
            pass  # the shared directory or the terminal is gone: nothing left to tidy

    @classmethod
    def statuses(cls):
        """[(pid, text)] of the live publishers, lowest pid first; files of dead ones are removed."""
        found = []
        for name in os.listdir(cls.directory()):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                try:
                    os.unlink(os.path.join(cls.directory(), name))
                except OSError:
                    pass
                continue
            except PermissionError:
                pass
            try:
                with open(os.path.join(cls.directory(), name)) as f:
                    found.append((pid, f.read()))
            except OSError:
                continue
        return sorted(found)


class _FileLock:
    """An exclusive flock on path, shared by the processes of a pipeline. With patience (seconds)
    the block runs after that long even when the lock is still taken: the terminal lock is held
    for one write at a time, so a lock still taken after half a second is held by the very
    thread a signal handler interrupted."""

    def __init__(self, path, patience=None):
        self.path = path
        self.patience = patience

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if self.patience is None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            return self
        deadline = time.monotonic() + self.patience
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return self
                time.sleep(0.01)

    def __exit__(self, *exc):
        os.close(self.fd)


class Messages:
    """stderr output of one command: warnings, notes, the live progress line and its summary."""

    def __init__(self, prog, quiet=False, progress=None):
        self.prog = prog
        self.quiet = quiet
        self.interactive = os.isatty(2)
        self.show_progress = (not quiet) and (self.interactive if progress is None else progress)
        # What each line on stderr starts with: on a terminal (and on one this command cannot
        # see, _remote_terminal), back to column 0 over an erased line, so that a message never
        # lands in the middle of a progress line.
        self.line_start = b"\r\x1b[K" if self.interactive or _remote_terminal() else b""

    def _emit(self, line):
        data = self.line_start + (line + "\n").encode("utf-8", "replace")
        try:
            if self.interactive:
                with _TerminalLine.lock():
                    # The drawing process repaints the progress line on its next tick; a question
                    # waiting for its answer is shown again at once, below the message.
                    question = _TerminalLine.open_question()
                    os.write(2, data + (question[1].encode("utf-8", "replace") if question else b""))
                return
        except OSError:
            pass  # no shared lock to be had: the message matters more than tidiness
        try:
            os.write(2, data)
        except OSError:
            pass

    def error(self, text):
        self._emit(f"{self.prog}: error: {text}")

    def warn(self, text):
        if not self.quiet:
            self._emit(f"{self.prog}: warning: {text}")

    def note(self, text):
        if not self.quiet:
            self._emit(f"{self.prog}: {text}")

    def progress(self, total=None):
        """A Progress meter, live on stderr when progress is shown, silent otherwise."""
        return Progress(self, total) if self.show_progress else NoProgress()


class Progress(NoProgress):
    """Bytes done, rate and (with a known total) ETA, redrawn twice a second on a terminal; to
    a log file (-P with stderr redirected) a plain line every ten seconds."""

    TERMINAL_INTERVAL = 0.5
    LOG_INTERVAL = 10

    def __init__(self, messages, total=None):
        self.messages = messages
        self.total = total
        self.detail = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._thread.start()

    def set_detail(self, text):
        self.detail = text

    def set_total(self, total):
        self.total = total

    def status(self):
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        parts = [f"{self.messages.prog} {format_size(self.done)}"]
        if self.total:
            parts[0] += f"/{format_size(self.total)} {100 * self.done / self.total:.0f}%"
        if self.output:
            parts[0] += f" -> {format_size(self.output)}"
        parts.append(f"{format_size(rate)}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts)

    def _tick(self):
        interval = self.TERMINAL_INTERVAL if self.messages.interactive else self.LOG_INTERVAL
        while not self._stop.wait(interval):
            try:
                self._draw()
            except OSError:
                return  # /dev/shm or stderr went away; progress is a courtesy, never a failure

    def _draw(self):
        if not self.messages.interactive:
            os.write(2, self.messages.line_start + (self.status() + "\n").encode())
            return
        _TerminalLine.publish(self.status())
        with _TerminalLine.lock():
            statuses = _TerminalLine.statuses()
            if statuses and statuses[0][0] == os.getpid() and _TerminalLine.open_question() is None:
                width = _terminal_width()
                line = " | ".join(text for _, text in statuses)
                if len(line) >= width:
                    line = line[:width - 2] + "…"
                os.write(2, ("\r" + line + "\x1b[K").encode("utf-8", "replace"))

    def finish(self, summary=None):
        """Stop drawing and leave one summary line (or nothing) in place of the live line."""
        self._stop.set()
        self._thread.join()
        if self.messages.interactive:
            _TerminalLine.withdraw()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = summary or f"{format_size(self.done)} in {elapsed:.1f} s ({format_size(self.done / elapsed)}/s)"
        self.messages.note(text)


def _terminal_width():
    try:
        # A terminal whose size was never set (a fresh pty, a serial line) says 0 columns.
        return os.get_terminal_size(2).columns or 80
    except OSError:
        return 80


def _remote_terminal():
    """True for a command that sshd runs without a terminal (`... | ssh host split-span -P`) with
    stderr a pipe or socket: the ssh client copies that stderr to the local terminal, where the
    local commands of the pipeline draw their progress line out of this command's sight. (On a
    pty, a remote error without the erase followed the local progress text on the same row.)
    The cost: `ssh host COMMAND 2> log` gets the two control sequences in each line too."""
    if "SSH_CONNECTION" not in os.environ:
        return False
    try:
        mode = os.fstat(2).st_mode
    except OSError:
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False   # a file (2> log) keeps plain lines
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        return True    # no controlling terminal: run by sshd for `ssh host COMMAND`, not by a user logged in
    return False


def end_quietly_on_sigpipe():
    """A closed downstream pipe (`| head`) ends the command quietly with the status a shell
    expects (141), as it ends cat or dd, but first erases the progress line, which no closing
    message will end. A handler, not SIG_IGN: EPIPE never reaches code that would report it, and
    programs we start (xorriso, sh for --exec) get the default action back when they exec.

    Python runs handlers in the main thread only, once it runs Python code again; the SIGPIPE
    of a write in another thread (compress's writer) could wait for ever behind a main thread
    blocked in read() (compress -d fed by reassemble waiting for a disc). The wakeup fd tells a
    thread of its own, which sends the signal on to the main thread, interrupting that read."""
    signal.signal(signal.SIGPIPE, _die_of_sigpipe)
    wakeup_read, wakeup_write = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    # A forked child (a parity worker) has no such thread and may reuse the descriptor's number:
    # its signals must not be written into whatever file then has it.
    os.register_at_fork(after_in_child=lambda: signal.set_wakeup_fd(-1))
    threading.Thread(target=_hand_sigpipe_to_main_thread, args=(wakeup_read,), name="sigpipe",
                     daemon=True).start()


def _hand_sigpipe_to_main_thread(wakeup_read):
    while signal.SIGPIPE not in os.read(wakeup_read, 64):
        pass   # another signal (SIGINT): the main thread gets those itself
    # Once: the signal sent on would come back through the wakeup fd, and the handler ends us.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGPIPE)


def _die_of_sigpipe(signum, frame):
    _TerminalLine.end_line()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)

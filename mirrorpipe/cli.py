"""What every mirrorpipe command shares: sizes, errors and exit codes, progress, SIGPIPE, terminals.

A command subclasses Command, declares its own options in add_arguments() and does its work in
run(); Command.main() supplies the common flags (-h, --version, -q, -P, --debug), turns engine
errors into one-line messages with the documented exit status, and sets up the standard streams.
"""

import argparse
import atexit
import errno
import fcntl
import os
import stat
import sys

from . import __version__, terminal
from .stream import pipeline, streams
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Error, UsageError,
                     describe_os_error)
from .units import parse_size

F_SETPIPE_SZ = 1031
PIPE_BUFFER_SIZE = 1 << 20

# ---------------------------------------------------------------------------------------------
# Argument types

def size_argument(text):
    """argparse type for sizes; argparse turns the ValueError into a usage error."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def range_argument(text):
    """argparse type for OFFSET:LENGTH, each a size (1M:4096)."""
    offset, colon, length = text.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"{text!r}: give OFFSET:LENGTH, e.g. 1M:4096")
    return size_argument(offset), size_argument(length)


def bounded_int(text, low, high, what):
    """argparse type: a whole number from low to high, counting `what` (for the message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r} of {what}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} {what}: choose {low} to {high}")
    return value


# ---------------------------------------------------------------------------------------------
# Standard streams

def enlarge_pipe(fd):
    """Give a pipe 1 MiB of kernel buffer: with the default 64 KiB a Python filter spends its time
    in context switches. Anything that is not a pipe is left alone."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BUFFER_SIZE)
    except OSError:
        pass  # over the unprivileged limit, or a closed descriptor: the default still works


def refuse_terminal_output(fd=1):
    streams.refuse_binary_terminal(fd, "redirect the output to a file or pipe it into another command")


def refuse_terminal_input(fd=0):
    streams.refuse_binary_terminal(fd, "give a file or pipe data into this command", reading=True)


def open_input(path):
    """A readable descriptor for PATH, or standard input for '-' (refused when it is a terminal)."""
    if path == "-":
        refuse_closed_standard_stream(0)
        refuse_terminal_input(0)
        return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Error(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise Error(f"cannot read {path}: it is a directory; give a file")
    try:
        streams.refuse_binary_terminal(fd, "give a file or pipe data into this command",
                                       name=path, reading=True)
    except UsageError:
        os.close(fd)
        raise
    return fd


# Named outputs opened by open_output and not yet finished, by descriptor: what a failed run
# leaves of them (a .part) is removed when the command exits.
_open_outputs = {}


def open_output(path, binary=True):
    """A writable descriptor for PATH, or standard output for '-'; binary data is refused for a
    terminal. A named output is opened as streams.NamedOutput says (a regular file is written as
    PATH.part and takes PATH's place in finish_output; a device, FIFO or /dev/stdout is written in
    place)."""
    if path == "-":
        refuse_closed_standard_stream(1)
        if binary:
            refuse_terminal_output(1)
        return 1
    output = streams.NamedOutput(path, binary)
    if not _open_outputs:
        atexit.register(_abandon_outputs)
    _open_outputs[output.fd] = output
    return output.fd


def finish_output(fd):
    """Finish an output opened by open_output: flushed to stable storage, and a regular file put
    in its place; errors that surface only now are reported."""
    output = _open_outputs.pop(fd, None)
    if output:
        output.commit()


def _abandon_outputs():
    while _open_outputs:
        _open_outputs.popitem()[1].abandon()


def input_size(fd):
    """Bytes a regular file or block device holds from its current position; None for a stream."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
            here = os.lseek(fd, 0, os.SEEK_CUR)
            end = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, here, os.SEEK_SET)
            return end - here
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# Commands

class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error convention: 'CMD: error: what (see CMD --help)'."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


class Command:
    """Base of every command: subclasses set name and description and define the two hooks."""

    name = None
    description = None
    epilog = None
    # Exit statuses besides 0 after which everything the command wrote is complete (read-disk's
    # 3: unreadable sectors filled): the stream is then handed on as finished.
    complete_statuses = ()

    def add_arguments(self, parser):
        raise NotImplementedError

    def run(self, args):
        """Do the work; return an exit status (None means success)."""
        raise NotImplementedError

    def preprocess_argv(self, argv):
        """A chance to translate spellings argparse cannot express (compress's -1 … -19)."""
        return argv

    def make_parser(self):
        parser = _Parser(prog=self.name, description=self.description, epilog=self.epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_arguments(parser)
        common = parser.add_argument_group("common options")
        common.add_argument("-q", "--quiet", action="store_true",
                            help="print nothing on stderr but errors")
        common.add_argument("-P", "--progress", action="store_true", default=None,
                            help="show a live progress line on stderr (default: only when stderr is a terminal)")
        common.add_argument("--no-progress", dest="progress", action="store_false",
                            help="never show the progress line")
        common.add_argument("--debug", action="store_true",
                            help="show a Python traceback with errors")
        common.add_argument("--version", action="version", version=f"%(prog)s (mirrorpipe) {__version__}")
        return parser

    def main(self, argv=None):
        hold_closed_standard_streams()
        terminal.end_quietly_on_sigpipe()
        # Joined before the arguments are parsed, so that a usage error fails the stream too.
        stage = pipeline.start(self.name)
        try:
            argv = self.preprocess_argv(list(sys.argv[1:] if argv is None else argv))
            args = self.make_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code:
                stage.failed(Error(f"usage error (see {self.name} --help)"))
            else:
                stage.finished()   # --help, --version
            raise
        self.messages = terminal.Messages(self.name, quiet=args.quiet, progress=args.progress)
        for fd in (0, 1):
            enlarge_pipe(fd)
        status, failure = self._run(args, stage)
        if failure is None and status in (EXIT_OK,) + self.complete_statuses:
            stage.finished()
        else:
            stage.failed(failure or Error(f"exited with status {status}"))
        return status

    def _run(self, args, stage):
        """run() with its errors reported as one line: (exit status, the error or None). With
        --debug the traceback is shown instead, the stream still marked failed."""
        try:
            status = self.run(args)
            return (EXIT_OK if status is None else status), None
        except KeyboardInterrupt as exc:
            caught, failure, status = exc, Error("interrupted"), EXIT_INTERRUPTED
        except Error as exc:
            caught, failure, status = exc, exc, exc.status
        except OSError as exc:
            caught, failure, status = exc, Error(describe_closed_stream(exc) or describe_os_error(exc)), EXIT_FAILURE
        except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
            caught, failure, status = exc, Error(f"internal error: {exc!r} (run again with --debug "
                                                 "for details and report it)"), EXIT_FAILURE
        if args.debug and status != EXIT_INTERRUPTED:
            stage.failed(failure)
            raise caught
        self.messages.error(str(failure))
        return status, failure


# Standard streams the command was started without (`>&-`), by descriptor, and what they are.
_closed_standard_streams = {}
_STANDARD_STREAMS = {0: ("standard input", os.O_WRONLY, "<"), 1: ("standard output", os.O_RDONLY, ">"),
                     2: ("standard error", os.O_RDONLY, "2>")}


def hold_closed_standard_streams():
    """Put /dev/null, opened the wrong way round, on a closed descriptor 0, 1 or 2. Otherwise the
    next file opened takes its number and gets what was meant for the stream (`checksum -o SUMS
    >&-` would write the data into SUMS); this way using it still fails, with EBADF, which
    describe_closed_stream turns into a sentence."""
    for fd, (_, flags, _) in _STANDARD_STREAMS.items():
        try:
            os.fstat(fd)
        except OSError:
            placeholder = os.open(os.devnull, flags)
            if placeholder != fd:   # a lower one was closed too and took that number first
                os.dup2(placeholder, fd)
                os.close(placeholder)
            _closed_standard_streams[fd] = _STANDARD_STREAMS[fd]


def refuse_closed_standard_stream(fd):
    """Say so before any work when the stream the command is to read or write was closed at start
    (it would fail later with a bare "Bad file descriptor")."""
    if fd in _closed_standard_streams:
        name, _, redirection = _closed_standard_streams[fd]
        raise Error(f"{name} is closed (the command was started with {redirection}&-): "
                    "redirect it to a file, a pipe or /dev/null")


def describe_closed_stream(exc):
    """A sentence for EBADF on a standard stream the command was started without, else None."""
    closed = [_closed_standard_streams[fd] for fd in (0, 1) if fd in _closed_standard_streams]
    if exc.errno != errno.EBADF or not closed:
        return None
    names = " and ".join(name for name, _, _ in closed)
    redirections = " ".join(f"{redirection}&-" for _, _, redirection in closed)
    return (f"{names} {'are' if len(closed) > 1 else 'is'} closed (the command was started with "
            f"{redirections}): redirect {'them' if len(closed) > 1 else 'it'} to a file, a pipe or /dev/null")


def entry_point(command_class):
    """The console-script function for a command class."""
    def main(argv=None):
        return command_class().main(argv)
    return main


"""Exceptions the engine raises; mirrorpipe.cli turns them into one-line messages and exit codes."""

# Every exit status of the commands, named here once; each command's man page says which it uses.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# 3 is a command's own "done, but look": what it means depends on the command.
EXIT_SECTORS_FILLED = 3         # read-disk: complete, but unreadable sectors hold the fill pattern
EXIT_REBUILDABLE = 3            # reassemble --verify: restorable only by making up for damage
EXIT_SEEK_TABLE_DAMAGED = 3     # compress -d: the output is complete, the seek table damaged
EXIT_INTERRUPTED = 130          # Ctrl-C, as the shell reports a process killed by SIGINT


class Error(Exception):
    """A problem the user can act on; the message says what happened and what to do."""

    status = EXIT_FAILURE


class DamagedData(Error):
    """Bytes asked for at random (mount-image, reassemble --range) that cannot be served intact:
    damaged or missing, and not rebuildable. The message names them; `damage` names the damage
    itself (the same for every read it fails), to tell it once."""

    def __init__(self, message, damage=None):
        super().__init__(message)
        self.damage = damage or message


class UsageError(Error):
    """The command line asks for something that cannot work."""

    status = EXIT_USAGE


def describe_os_error(exc):
    """An OSError as one line: 'PATH: what happened'."""
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {text}"
    return text

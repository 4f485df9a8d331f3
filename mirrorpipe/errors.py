"""Exceptions the engine raises; mirrorpipe.cli turns them into one-line messages and exit codes."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class Error(Exception):
    """A problem the user can act on; the message says what happened and what to do."""

    status = EXIT_FAILURE


class UsageError(Error):
    """The command line asks for something that cannot work."""

    status = EXIT_USAGE


def describe_os_error(exc):
    """An OSError as one line: 'PATH: what happened'."""
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {text}"
    return text

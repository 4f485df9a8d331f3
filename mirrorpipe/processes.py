"""The other processes of this machine as /proc shows them: what the pipeline mechanism follows
upstream and what write-disk checks for its own input. Processes of other users are seen only by
root; a process that is gone meanwhile is simply not listed."""

import os
import re

# A script is named by its own name, not its interpreter's ('compress', not 'python3').
_INTERPRETER = re.compile(rb"python[0-9.]*|[a-z]*sh")


def others():
    """Pids of every process but this one."""
    me = os.getpid()
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != me]


def descriptors(pid):
    """[(fd, /proc path)] of the open descriptors of process pid; [] when it cannot be looked at."""
    base = f"/proc/{pid}/fd"
    try:
        return [(int(fd), f"{base}/{fd}") for fd in os.listdir(base)]
    except OSError:
        return []


def open_files(pid):
    """os.stat_result of what each descriptor of process pid leads to (those /proc shows)."""
    for _, path in descriptors(pid):
        try:
            yield os.stat(path)
        except OSError:
            continue   # closed meanwhile


def open_mode(pid, fd):
    """The access mode (os.O_RDONLY, O_WRONLY, O_RDWR) of descriptor fd of process pid."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return int(f.read().split("flags:")[1].split()[0], 8) & os.O_ACCMODE


def program_name(pid):
    """The name a user knows the process by: a script's own name, else its program's."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    if len(argv) > 1 and _INTERPRETER.fullmatch(os.path.basename(argv[0])):
        argv = argv[1:]
    if argv[0]:
        return os.path.basename(argv[0]).decode("utf-8", "replace")
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def process_group(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        line = f.read()
    # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
    return int(line[line.rindex(b")") + 2:].split()[2])

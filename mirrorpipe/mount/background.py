"""Running a mount in the background once it is ready, as sshfs does: the command returns when
the mount can be used, with exit status 0, or with the reason it could not be made."""

import os
import stat
import sys


def detach():
    """Fork. In the parent, wait for the child's report and return (None, exit status): 0 when
    the mount is ready, 1 (the child has said why) when not, None when the child ended without
    a word (killed). In the child, return (report, None):
    report(problem) tells the parent, problem None meaning ready. The child runs in a session of
    its own with stdin and stdout on /dev/null. Until it reports, the child's stderr
    is the command's (libfuse's own errors reach the user); after, it keeps stderr only when that
    is a terminal or a file, so that a caller reading a pipe from it is not held open."""
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        report = b""
        while chunk := os.read(read_end, 4096):
            report += chunk
        os.close(read_end)
        return None, {b"ready": 0, b"failed": 1}.get(report)
    os.close(read_end)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)

    reported = []

    def report(problem):
        if reported:
            return      # the parent has its answer and is gone
        reported.append(problem)
        if problem is None:
            try:
                mode = os.fstat(2).st_mode
                keep = os.isatty(2) or stat.S_ISREG(mode) or stat.S_ISCHR(mode)
            except OSError:
                keep = False
            if not keep:
                sys.stderr.flush()
                os.dup2(null, 2)
        os.write(write_end, b"ready" if problem is None else b"failed")
        os.close(write_end)
    return report, None

"""The progress interface that engine loops report to. The command line's terminal.Progress draws
it; NoProgress, for callers that show nothing, still counts, so engine code always has a meter to
call and never tests for one."""

class NoProgress:
    """The progress interface with nothing shown: engine code always has a meter to call."""

    done = 0
    output = 0

    def advance(self, count):
        self.done += count

    def advance_output(self, count):
        """Bytes written when they differ from bytes read (compress shows both)."""
        self.output += count

    def set_detail(self, text):
        pass

    def set_total(self, total):
        pass

    def finish(self, summary=None):
        pass

"""Restoring a set: Restore writes the stream a set holds to a file descriptor, every chunk
checked before it is written, each volume's hash at the volume's end and the stream hash at the
stream's (walk.SetWalk reads it).

check_before_reading() says what must stop a restore before the first byte (missing, foreign,
truncated volumes; losses beyond what parity can rebuild) and files volume files that hold
another volume's data under that volume.
"""

from ..errors import Error
from ..stream.streams import write_all
from .finder import leftovers_note, rereadable, scan
from .names import PARITY_PREFIX
from .volumeset import gather
from .walk import SetWalk


class SetReader(SetWalk):
    """Writes a set's stream to out_fd; the first problem stops it."""

    stream_mismatch_consequence = "; the stream written is not a good image: do not use it"

    def __init__(self, volume_set, found, out_fd, **kwargs):
        super().__init__(volume_set, found, **kwargs)
        self.out_fd = out_fd

    def _write(self, piece):
        write_all(self.out_fd, piece)


class Restore:
    """A restore of the set some sources hold (directories, volume files, manifests, ISO images,
    drives): made, it has checked all that can be checked before the first byte (errors.Error
    naming what is wrong otherwise); run() writes the stream. The command and the tests both
    restore through it."""

    def __init__(self, sources, open_prompter=None):
        """open_prompter() gives a terminal.Prompter (or None) to ask for discs on; it is called
        when the sources can hold other discs (directories, drives) and do not hold the whole set
        now."""
        self.found = scan(sources)
        self.set = gather(self.found)
        self.directories = discs_in(sources)
        self.prompter = open_prompter() if open_prompter and self.directories and not self.set.restorable() \
            else None
        problem = check_before_reading(self.set, self.found, disc_by_disc=self.prompter is not None)
        if problem:
            raise Error(problem)

    @property
    def notes(self):
        """What to tell before the first byte: volume files read as the volume whose data they hold."""
        return [f"{note}; reading it as the volume it holds" for note in self.set.notes]

    def run(self, out_fd, progress=None, say=None):
        """Write the stream to out_fd, every chunk checked before it is written; the manifest that
        says where the stream ends. say(text): warning lines (rebuilds, what a copy made up for)."""
        reader = SetReader(self.set, self.found, out_fd, progress=progress, directories=self.directories,
                           prompter=self.prompter, say=say)
        try:
            reader.run()
        finally:
            reader.close()
        return self.set.end


def discs_in(sources):
    """The sources when disc after disc can be read from them (directories and drives can be
    read again, holding another disc), else None."""
    return sources if all(rereadable(source) for source in sources) else None


def check_before_reading(volume_set, found, disc_by_disc):
    """Problems that must stop reassemble before the first byte, as one message, or None.

    Without disc-by-disc reading, a set must be complete, or its losses within what its parity
    volumes can rebuild; either way it must be one set."""
    problems = list(volume_set.problems)
    if not disc_by_disc:
        missing = volume_set.describe_missing()
        if missing and not volume_set.has_parity():
            note = leftovers_note(found)
            if volume_set.scheme and not volume_set.parity:
                note = "; ".join(filter(None, [note, parity_note(volume_set)]))
            problems.append(missing + (f" ({note})" if note else ""))
        else:
            # Check every file up front, so that a truncated last volume or swapped volume files
            # are reported (or set right) in seconds.
            volume_set.place_data()
            volume_set.open_all()
            unrebuildable = volume_set.unrebuildable() if volume_set.has_parity() else []
            if unrebuildable or not volume_set.has_parity():
                problems += [missing] if missing else []
                problems += list(volume_set.lost.values()) + unrebuildable
    return "; ".join(problems) or None


def parity_note(volume_set):
    scheme = volume_set.scheme
    return (f"the set has {scheme.count} parity volume{'s' if scheme.count > 1 else ''} per group of "
            f"{scheme.group_size} ({volume_set.reference.set_name}.{PARITY_PREFIX}001-1 ...), which "
            "can rebuild lost volumes: give them too")

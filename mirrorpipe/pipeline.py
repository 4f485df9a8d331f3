"""How the mirrorpipe commands of one pipeline tell each other that a stream is complete.

A pipe has no end marker: a command that reads end of input cannot tell the end of the stream
from the death of the command feeding it. (Being written: see doc/design.md.)
"""


def confirm_input_end():
    """Called by a command that read its standard input to the end, before it finishes anything
    on the strength of it: raises errors.Error naming the command that fed it when that command
    ended early (killed, failed) or its connection was cut; returns when the input is known
    complete or nothing says otherwise."""

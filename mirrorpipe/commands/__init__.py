"""One module per command: argument parsing and wiring of engine pieces only."""

import os as _os
import sys as _sys

from ..stream import pipeline as _pipeline

# A command joins its pipeline before its other imports (60 ms of them): one killed while it
# starts then still leaves the record that names it, and sees the processes feeding it early.
if _os.path.basename(_sys.argv[0]) in _pipeline.COMMAND_NAMES:
    _pipeline.start(_os.path.basename(_sys.argv[0]))

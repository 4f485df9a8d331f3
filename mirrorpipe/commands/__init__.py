"""One module per command: argument parsing and wiring of engine pieces only."""

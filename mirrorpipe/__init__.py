"""mirrorpipe: mirror image backups as small Unix filters joined by pipes."""

__version__ = "0.1.0"

"""Serving a backup's disk as read-only files (mount-image): what a source is, the FUSE file
system, running it in the background."""

"""Disks and image files: block device facts (blockdev), reading a source (source) past
unreadable sectors (badsectors, mapfile), and writing a target (target)."""

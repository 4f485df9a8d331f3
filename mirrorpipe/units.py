"""Sizes and durations as people type and read them: parse_size('4K') -> 4096, format_size(1536)
-> '1.5 KiB'. Pure functions, shared by the engine and the command line."""

import re

_SIZE_UNITS = {"": 1, "B": 1}
for _power, _letter in enumerate("KMGTPE", start=1):
    _SIZE_UNITS[_letter] = 1024 ** _power
    _SIZE_UNITS[_letter + "IB"] = 1024 ** _power
    _SIZE_UNITS[_letter + "B"] = 1000 ** _power


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text):
    """'512' -> 512, '4K'/'4KiB' -> 4096 (powers of 1024), '1KB' -> 1000 (powers of 1000)."""
    match = _SIZE_RE.match(text)
    unit = match and _SIZE_UNITS.get(match.group(2).upper())
    if not unit:
        raise ValueError(
            f"invalid size {text!r}: use a number with an optional suffix, e.g. 512, 4K, 1M, 1G "
            "(powers of 1024) or 1KB, 1MB, 1GB (powers of 1000)")
    value = float(match.group(1)) * unit if "." in match.group(1) else int(match.group(1)) * unit
    if value != int(value):
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_size(count):
    """Bytes in the largest binary unit that keeps a number ≥ 1: 1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds):
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"

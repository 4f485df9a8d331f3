"""Optical drives through xorriso: what medium is in the drive, burning an image, ejecting.

A drive is what xorriso calls one: /dev/sr0, or a pseudo-drive stdio:PATH (a regular file or a
block device such as a loop device or USB stick). For a pseudo-drive xorriso judges "blank" by
the first 64 KiB: a missing, empty or zeroed file or device is blank; anything else is written
(and overwritable). Its capacity is what xorriso reports: a block device's size, and for a
regular file the free space of its file system.
"""

import os
import re
import subprocess
from dataclasses import dataclass

from ..errors import Error
from .iso import burned_sectors

XORRISO = "xorriso"
# Media that can be written again from the start without blanking a whole disc.
OVERWRITABLE_KINDS = ("DVD+RW", "DVD-RAM", "BD-RE", "DVD-RW restricted overwrite")
# "xorriso : UPDATE :  151 of  400 MB written (fifo 99%) [buf  50%]  61.8x." (MB: MiB)
_WRITTEN_RE = re.compile(r"UPDATE :\s+(\d+) of\s+\d+ MB written")
_FIELD_RE = re.compile(r"^(Media current|Media status|Media space)\s*:\s*(.*?)\s*$", re.MULTILINE)


@dataclass
class Medium:
    device: str
    kind: str           # 'CD-R', 'DVD+RW', 'BD-R sequential recording', 'stdio file, overwriteable'
    status: str         # 'is blank', 'is written , is appendable', 'is written , is closed', ...
    free_sectors: int   # what a burn may use now

    @property
    def present(self):
        return bool(self.kind) and "is not present" not in self.kind and "no media" not in self.kind

    @property
    def blank(self):
        return self.present and "is blank" in self.status

    @property
    def overwritable(self):
        return "overwriteable" in self.kind or self.kind.startswith(OVERWRITABLE_KINDS)

    def unsuitable(self, image_length, overwrite):
        """Why this medium cannot take an image of IMAGE_LENGTH bytes, or None when it can."""
        if not self.present:
            return f"there is no disc in {self.device}"
        if not self.blank and not (overwrite and self.overwritable):
            how = " (an overwritable disc: give --overwrite to reuse it)" if self.overwritable else ""
            status = " ".join(self.status.split()).replace(" ,", ",")
            return f"the disc in {self.device} is not blank ({self.kind}, {status}){how}"
        need = burned_sectors(image_length)
        if self.blank and self.free_sectors < need:
            return (f"the disc in {self.device} is too small: {self.free_sectors} free sectors, the image "
                    f"needs {need} ({image_length} bytes and the burner's padding)")
        return None


def _start(arguments):
    """xorriso running with ARGUMENTS, its messages (stdout and stderr) on process.stdout."""
    try:
        return subprocess.Popen([XORRISO, *arguments], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
    except FileNotFoundError:
        raise Error("xorriso is not installed; install it (Debian: apt install xorriso)") from None


def _run(arguments):
    """xorriso's messages after running it with ARGUMENTS."""
    with _start(arguments) as process:
        return process.stdout.read()


def inspect(device):
    """The medium in DEVICE as xorriso sees it."""
    output = _run(["-outdev", device, "-tell_media_space"])
    fields = dict(_FIELD_RE.findall(output))
    if "Media current" not in fields:
        raise Error(f"cannot use drive {device}: {_last_problem(output)}")
    space = re.match(r"(\d+)s", fields.get("Media space", ""))
    return Medium(device, fields["Media current"], fields.get("Media status", ""),
                  int(space.group(1)) if space else 0)


def blank(device):
    """Make a written overwritable medium blank (xorriso's quickest way for the medium)."""
    output = _run(["-outdev", device, "-blank", "as_needed"])
    if not inspect(device).blank:
        raise Error(f"cannot blank the disc in {device}: {_last_problem(output)}")


def burn(device, image_path, progress=None):
    """Burn IMAGE_PATH to DEVICE with `xorriso -as cdrecord`; errors.Error with xorriso's reason
    on failure."""
    process = _start(["-as", "cdrecord", "-v", f"dev={device}", image_path])
    output = []
    written = 0
    with process:
        for line in process.stdout:
            output.append(line)
            del output[:-50]
            match = _WRITTEN_RE.search(line)
            if match and progress:
                now = int(match.group(1)) << 20
                progress.advance(max(0, now - written))
                written = max(written, now)
    if process.returncode:
        raise Error(f"xorriso could not burn {os.path.basename(image_path)} to {device}: "
                    f"{_last_problem(''.join(output))}")


def eject(device):
    """Open the tray of a real drive; a pseudo-drive has none."""
    if not device.startswith("stdio:"):
        _run(["-outdev", device, "-eject", "all"])


def _last_problem(output):
    """xorriso's most telling line: the last FATAL, FAILURE or SORRY message, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in (": FATAL :", ": FAILURE :", ": SORRY :")):
            return line.split(" : ", 2)[-1]
    return lines[-1] if lines else "no output"


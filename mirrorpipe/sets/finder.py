"""Finding a set: the manifests and volumes (data and parity) that directories, volume files,
ISO images and drives hold, given in any order (scan), and the volume file of a manifest
(VolumeFile). volumeset.py orders and checks what is found.
"""

import os
import stat
from dataclasses import dataclass, field

from . import manifests
from ..disc import iso
from ..errors import Error
from .manifests import Manifest
from .names import IMAGE_SUFFIX, PART_SUFFIX, looks_like_volume


@dataclass
class VolumeFile:
    """A manifest and the volume file beside it, or data_path: the file found to hold this
    manifest's volume under another volume's name (VolumeSet.place_data)."""
    manifest: Manifest
    manifest_path: str
    data_path: str = None

    @property
    def path(self):
        return self.data_path or manifests.volume_path(self.manifest_path)

    @property
    def label(self):
        return self.manifest.key.describe_at(self.path)

    def open_file(self):
        """The volume as a file object (seek, readinto), checked as open_checked() does."""
        return open(self.open_checked(), "rb", buffering=0)

    def open_checked(self):
        """A descriptor of the volume file after checking it is there, regular and of the length
        its manifest says; errors.Error naming the problem otherwise."""
        name = self.label
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise Error(f"{name} is missing: its manifest {self.manifest_path} is there but not the "
                        "volume file beside it; copy it there (a renamed volume keeps its "
                        "manifest's name without '.manifest')") from None
        except OSError as exc:
            raise Error(f"cannot read {name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Error(f"{name} is not a regular file")
            if info.st_size != self.manifest.length:
                what = "truncated" if info.st_size < self.manifest.length else "longer than its manifest says"
                raise Error(f"{name} is {what}: {info.st_size} bytes, its manifest says "
                            f"{self.manifest.length}; copy it again from the original")
        except BaseException:
            os.close(fd)
            raise
        return fd


@dataclass
class Scan:
    """What some directories and files hold."""
    volumes: list = field(default_factory=list)
    parity: list = field(default_factory=list)        # parity volumes (VolumeFile, DiscVolume)
    unfinished: list = field(default_factory=list)    # .part files of an interrupted split-span
    orphans: list = field(default_factory=list)       # volume-like files without a manifest


def scan(sources):
    """Find manifests (with their volumes), .part leftovers and volumes without manifest in the
    directories and files given. Directories are read one level deep."""
    found = Scan()
    seen = set()

    def take(volume):
        (found.parity if volume.manifest.key.is_parity else found.volumes).append(volume)

    def take_manifest(path):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            take(VolumeFile(manifests.read(path), path))

    def take_disc(path):
        """An ISO image or a disc in a drive: its volume is read straight out of the image."""
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            take(iso.disc_volume(path))

    for source in sources:
        if os.path.isdir(source):
            try:
                names = sorted(os.listdir(source))
            except OSError as exc:
                raise Error(f"cannot read directory {source}: {exc.strerror}") from None
            present = set(names)
            for name in names:
                path = os.path.join(source, name)
                if name.endswith(PART_SUFFIX):
                    found.unfinished.append(path)
                elif name.endswith(manifests.SUFFIX):
                    take_manifest(path)
                elif name.endswith(IMAGE_SUFFIX):
                    take_disc(path)
                elif looks_like_volume(name) and name + manifests.SUFFIX not in present:
                    found.orphans.append(path)
        elif os.path.exists(source):
            if _is_disc(source):
                take_disc(source)
            elif source.endswith(PART_SUFFIX):
                found.unfinished.append(source)
            elif source.endswith(manifests.SUFFIX):
                take_manifest(source)
            elif os.path.exists(manifests.manifest_path(source)):
                take_manifest(manifests.manifest_path(source))
            else:
                found.orphans.append(source)
        else:
            raise Error(f"{source} does not exist; give directories, volume files or manifests")
    return found


def _is_disc(path):
    """A block device (an optical drive, a USB stick holding an image) or a file that is an ISO
    image, whatever its name (a burned disc copied off with dd has none)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISBLK(mode):
        return True
    return stat.S_ISREG(mode) and not path.endswith(manifests.SUFFIX) and iso.is_image(path)


def rereadable(source):
    """A source that can hold another disc when asked again: a directory (a mount point) or a
    drive."""
    return os.path.isdir(source) or (os.path.exists(source) and stat.S_ISBLK(os.stat(source).st_mode))


def leftovers_note(found):
    """What else the sources hold that explains a missing volume, or ''."""
    notes = []
    if found.unfinished:
        notes.append(f"{', '.join(found.unfinished)} unfinished (left by an interrupted split-span)")
    if found.orphans:
        notes.append(f"{', '.join(found.orphans)} without manifest")
    return "; ".join(notes)

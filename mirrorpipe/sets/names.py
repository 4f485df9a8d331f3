"""Names of a set's files, and a volume's identity (VolumeKey) with the names it goes by.

Numbering: 3 digits, 001 to 899; larger sets widen the number like GNU split's suffixes, so
names still sort in stream order: 900 is 90000 ... 9899 is 98999, then 9900000 ... (each tier
adds a leading 9 and one more digit). Parity volumes are NAME.parity-GGG-P (GGG numbered like a
volume): they never match `NAME.???`, so the stock restore `cat NAME.??? | zstd -d` ignores them.
"""

import functools
import re
from dataclasses import dataclass

PART_SUFFIX = ".part"       # a file still being written; it never counts
IMAGE_SUFFIX = ".iso"
PARITY_PREFIX = "parity-"
TIER0_VOLUMES = 900         # volumes numbered with 3 digits; each tier after it holds 10 times more

_SUFFIX_RE = re.compile(r"(9*)([0-8]\d*)")
_PARITY_SUFFIX_RE = re.compile(r"parity-(9*[0-8]\d*)-(\d{1,2})")


def volume_suffix(index):
    """1 -> '001', 899 -> '899', 900 -> '90000', 9899 -> '98999', 9900 -> '9900000', ..."""
    if index < 1:
        raise ValueError(f"volume index {index} is not 1 or more")
    number, nines, tier_size = index, 0, TIER0_VOLUMES
    while number >= tier_size:
        number -= tier_size
        nines += 1
        tier_size *= 10
    return "9" * nines + f"{number:0{3 + nines}d}"


def suffix_index(suffix):
    """The index a volume suffix stands for (inverse of volume_suffix), None if it is not one."""
    match = _SUFFIX_RE.fullmatch(suffix)
    if not match or len(match.group(2)) != 3 + len(match.group(1)) or suffix == "000":
        return None
    nines = len(match.group(1))
    return sum(TIER0_VOLUMES * 10 ** tier for tier in range(nines)) + int(match.group(2))


def volume_patterns(set_name, last_index):
    """Shell patterns that match the volumes 1 to last_index of a set and no other file of it
    (manifests, parity volumes, .part, .iso), tier by tier, so that they expand in stream order:
    'image.???', then ' image.9????', ' image.99?????' ... as the tiers reach that far."""
    tiers = (len(volume_suffix(last_index)) - 3) // 2
    return " ".join(f"{set_name}.{'9' * tier}{'?' * (3 + tier)}" for tier in range(tiers + 1))


def tier_end(index):
    """The last index numbered in the same tier as `index`: 899, 9899, 99899, ..."""
    nines = (len(volume_suffix(index)) - 3) // 2
    return suffix_index("9" * nines + "8" + "9" * (2 + nines))


def volume_name(set_name, index):
    return f"{set_name}.{volume_suffix(index)}"


def parity_name(set_name, group, parity_index):
    """'image.parity-001-2': parity volume 2 of group 1."""
    return f"{set_name}.{PARITY_PREFIX}{volume_suffix(group)}-{parity_index}"


def is_parity_suffix(suffix):
    """Whether a file name's part after the set name ('parity-001-2') names a parity volume."""
    match = _PARITY_SUFFIX_RE.fullmatch(suffix)
    return bool(match and suffix_index(match.group(1)) and match.group(2) != "0")


def looks_like_volume(file_name):
    """True for names split-span gives volumes (NAME.NNN, NAME.parity-GGG-P), whatever the set
    name."""
    stem, dot, suffix = file_name.rpartition(".")
    return bool(dot and stem and (suffix_index(suffix) or is_parity_suffix(suffix)))


def describe_indices(indices):
    """[1, 2, 3, 5] -> '1-3, 5'."""
    ranges = []
    for index in sorted(indices):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


@functools.total_ordering
@dataclass(frozen=True)
class VolumeKey:
    """How a set knows a volume: data volume `index`, or parity volume `index` of parity group
    `group`. Keys sort as the volumes are written: data volumes by index, then parity volumes by
    group and parity index."""
    index: int
    group: int = None       # None for a data volume

    @classmethod
    def parity(cls, group, parity_index):
        return cls(parity_index, group)

    @property
    def is_parity(self):
        return self.group is not None

    def __lt__(self, other):
        return (self.is_parity, self.group or 0, self.index) < (other.is_parity, other.group or 0, other.index)

    def describe(self):
        """'volume 3' or 'parity volume 1 of group 2', for messages."""
        return f"parity volume {self.index} of group {self.group}" if self.is_parity else f"volume {self.index}"

    def describe_at(self, path):
        """'volume 3 (out/image.003)', 'parity volume 1 of group 2 (out/image.parity-002-1)'."""
        return f"{self.describe()} ({path})"

    def file_name(self, set_name):
        """'image.003' or 'image.parity-002-1'."""
        return parity_name(set_name, self.group, self.index) if self.is_parity else volume_name(set_name, self.index)

    def disc_title(self):
        """What the disc holding this volume is called: 'disc 3', 'parity disc 1 of group 2'."""
        return f"parity disc {self.index} of group {self.group}" if self.is_parity else f"disc {self.index}"

    def label_number(self):
        """The number a disc label ends with: '003', 'P002_1'."""
        return f"P{self.group:03d}_{self.index}" if self.is_parity else f"{self.index:03d}"

    def label_title(self):
        """The disc label's words after the set name: 'disc 3', 'parity 2-1'."""
        return f"parity {self.group}-{self.index}" if self.is_parity else f"disc {self.index}"

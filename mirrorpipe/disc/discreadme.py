"""README.TXT of a disc: which set and disc this is, and the exact commands to restore the set.

The stock-tools commands are written to be run as they stand (tests do): the only things a user
changes are the two placeholders, the mount point /media/cdrom and the target disk /dev/sdX.
"""

import shlex

from .. import units
from ..sets import manifests, names

DISC_PLACEHOLDER = "/media/cdrom"
TARGET_PLACEHOLDER = "/dev/sdX"

# First bytes of a zstd stream: a zstd frame, or a skippable frame (0x184D2A50-5F, little endian),
# which is how a compress stream starts (frames.STREAM_HEADER_MAGIC).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def looks_compressed(first_bytes):
    """Whether a stream starting with FIRST_BYTES is zstd (was made with compress in the pipe)."""
    return first_bytes[:4] == ZSTD_MAGIC or (
        len(first_bytes) >= 4 and first_bytes[1:4] == b"\x2a\x4d\x18" and first_bytes[0] & 0xF0 == 0x50)


def readme_text(manifest, volume_name, compressed=None):
    """The README.TXT of the disc holding VOLUME_NAME, described by MANIFEST (a manifests.Manifest,
    or a ParityManifest for a parity disc).

    COMPRESSED: True or False when known (from volume 1's first bytes), None when this disc
    cannot tell, in which case both ways are given."""
    if isinstance(manifest, manifests.ParityManifest):
        return _parity_readme_text(manifest, volume_name, compressed)
    prefix = volume_name.rpartition(".")[0]
    count = manifest.volume_count if manifest.last else None
    # A disc before the last cannot know how far the set's numbering reaches: its command covers
    # the tiers up to its own, and the last disc's covers the whole set.
    pattern = names.volume_patterns(shlex.quote(prefix), count or manifest.index)
    single = count == 1
    lines = [
        "MIRRORPIPE BACKUP DISC",
        "",
        f"This is disc {manifest.index}{f' of {count}' if count else ''} of the set "
        f"'{manifest.set_name}', set id {manifest.set_id}.",
    ]
    if manifest.last:
        lines.append("It is the last disc of the set." if not single else "The set fits on this one disc.")
    else:
        lines.append("The last disc of the set says how many discs there are.")
    lines += [
        f"It holds {volume_name}, bytes {manifest.offset:,} to {manifest.offset + manifest.length:,} "
        f"({units.format_size(manifest.length)}) of the backup stream,",
        f"and {volume_name}.manifest, the xxh3-128 hashes of the volume and of every "
        f"{units.format_size(manifest.chunk_size)} chunk of it.",
        f"Made {manifest.created or 'at an unknown time'}"
        f"{f' on {manifest.host}' if manifest.host else ''}"
        f"{f' for {manifest.media} discs' if manifest.media else ''}.",
        "",
        "The volumes of all discs, joined in name order, are the backup stream: a zstd stream when",
        "the backup was made with compress in the pipe, else the raw disk image.",
    ]
    if compressed is None:
        lines += ["This disc cannot tell which: disc 1's volume starts with the bytes 5b 2a 4d 18 (compress)",
                  "or 28 b5 2f fd (stock zstd) when it is zstd (see its README.TXT, or run:",
                  f"head -c 4 {names.volume_name(shlex.quote(prefix), 1)} | od -An -tx1)."]
    else:
        lines.append("This set's stream is " + ("zstd-compressed." if compressed else "not compressed."))
    lines += [
        "",
        f"Everywhere below, replace {DISC_PLACEHOLDER} with where the disc is mounted (mount each disc",
        f"there, e.g. as root: mount -o ro /dev/sr0 {DISC_PLACEHOLDER}) and {TARGET_PLACEHOLDER} "
        "with the disk to restore to.",
        f"EVERYTHING ON {TARGET_PLACEHOLDER} IS OVERWRITTEN.",
        "",
        "RESTORE WITH MIRRORPIPE (asks for each disc and checks every byte before writing it)",
        "",
    ]
    variants = [True, False] if compressed is None else [compressed]
    for variant in variants:
        if compressed is None:
            lines.append("  if the stream is zstd-compressed:" if variant else "  if it is not compressed:")
        decompress = " | compress -d" if variant else ""
        lines.append(f"    reassemble {DISC_PLACEHOLDER}{decompress} | write-disk {TARGET_PLACEHOLDER}")
        lines.append(f"    reassemble /dev/sr0{decompress} | write-disk {TARGET_PLACEHOLDER}"
                     "      # or from the drive, unmounted")
    if manifest.parity:
        lines += [""] + _parity_paragraph(manifest.parity, manifest.set_name)
    lines += ["", "RESTORE WITH STOCK TOOLS ONLY (sh, cp, grep, cat, zstd, dd)", ""]
    if not single:
        lines += [
            "Copy each disc's volume into the current directory (it needs room for the whole set),",
            "then join, decompress and write them. In sh or bash:",
            "",
        ] + [f"    {line}" for line in _copy_loop(prefix, manifest.set_name)] + [""]
    source = f"{DISC_PLACEHOLDER}/{shlex.quote(volume_name)}" if single else pattern
    if not manifest.last:
        lines += [f"The cat below joins a set of up to {names.tier_end(manifest.index):,} discs; for a larger set, use the",
                  "one in README.TXT on the set's last disc.", ""]
    for variant in variants:
        if compressed is None:
            lines.append("  then, if the stream is zstd-compressed:" if variant else "  if it is not compressed:")
        decompress = " | zstd -d" if variant else ""
        lines += [f"    cat {source}{decompress} | dd of={TARGET_PLACEHOLDER} bs=4M conv=fsync", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _parity_paragraph(scheme, set_name):
    """What a data disc of a set with parity says about the parity discs."""
    return [
        f"PARITY DISCS: this set has {scheme.count} parity disc{'s' if scheme.count > 1 else ''} for every "
        f"{scheme.group_size} data discs",
        f"(labelled 'parity', holding {set_name}.parity-GGG-P). Up to {scheme.count} lost or unreadable "
        "discs of each group",
        "can be rebuilt from them. Restoring disc by disc as above, answer l when reassemble asks",
        "for a disc that is lost or unreadable: it asks for the discs that rebuild it and says how",
        "much scratch space it needs and where. Or copy the volume and manifest of every disc you",
        "have, data and parity discs, into one directory DIR and run:",
        "",
        f"    reassemble DIR | compress -d | write-disk {TARGET_PLACEHOLDER}",
        "",
        "reassemble says what it rebuilt. The stock-tools restore below cannot use parity discs.",
    ]


def _parity_readme_text(manifest, volume_name, compressed):
    first, last = manifest.data_volumes[0].index, manifest.data_volumes[-1].index
    lines = [
        "MIRRORPIPE BACKUP DISC: PARITY",
        "",
        f"This is parity disc {manifest.parity_index} of {manifest.parity_count} of group {manifest.group} "
        f"of the set '{manifest.set_name}', set id {manifest.set_id}.",
        f"It holds {volume_name} and its manifest. They are not part of the backup stream: with",
        f"the group's other discs they rebuild up to {manifest.parity_count} lost or unreadable discs "
        f"of the group,",
        f"data discs {first} to {last} and parity discs 1 to {manifest.parity_count} of group {manifest.group}.",
        f"Made {manifest.created or 'at an unknown time'}{f' on {manifest.host}' if manifest.host else ''}.",
        "",
        "TO RESTORE A SET THAT LOST DISCS (with mirrorpipe)",
        "",
        "Restore disc by disc as the README.TXT of any data disc says, and answer l when reassemble",
        "asks for a disc that is lost or unreadable: it asks for the discs that rebuild it, this one",
        "among them, and says how much scratch space it needs and where.",
        "",
        "Or copy the volume and manifest of every disc you have, data and parity discs, into one",
        "directory DIR (it needs room for the whole set), replace "
        f"{TARGET_PLACEHOLDER} with the disk to restore to",
        f"(EVERYTHING ON {TARGET_PLACEHOLDER} IS OVERWRITTEN) and run:",
        "",
    ]
    decompress = {True: " | compress -d", False: "", None: " | compress -d   # if compressed"}[compressed]
    lines += [f"    reassemble DIR{decompress} | write-disk {TARGET_PLACEHOLDER}",
              "",
              "reassemble checks every chunk, rebuilds what is missing or damaged and says what it",
              "rebuilt; `reassemble --verify DIR` first tells how much more the set can lose.",
              "With no disc lost, this disc is not needed: see README.TXT on any data disc."]
    return "\n".join(lines) + "\n"


def _copy_loop(prefix, set_name):
    """Shell lines asking for disc after disc and copying its volume and manifest, until the
    manifest of the last volume (`"last": true`) has been copied."""
    files = f"{shlex.quote(prefix)}.[0-9]*"
    return [
        "n=1",
        "while :; do",
        f"  printf 'Insert disc %d of set {set_name}, mount it at {DISC_PLACEHOLDER}, press Enter: ' \"$n\"",
        "  read -r answer",
        f"  cp {DISC_PLACEHOLDER}/{files} . || continue",
        f"  grep -q '\"last\": true' {files}.manifest && break",
        "  n=$((n + 1))",
        "done",
    ]

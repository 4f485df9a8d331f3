"""ISO packaging engine: images fit their discs, independent readers give the volume back, the
image reads back without mounting."""

import os
import re
import subprocess

import pytest
import xxhash

from conftest import REPO, need_tools, sh
from mirrorpipe.disc import discreadme, iso, media
from mirrorpipe.sets import manifests, names
from mirrorpipe.errors import Error

CHUNK = manifests.DEFAULT_CHUNK_SIZE
EXTENT = 4 * 1024 ** 3 - 2048          # largest ISO 9660 extent pycdlib writes
UDF_EXTENT = 1024 ** 3 - 2048          # largest UDF allocation descriptor pycdlib writes


def make_volume(directory, length, pieces=(), set_name="pc1-2026-11-25", index=1, last=True,
                media_name=None, volume_size=None, hashed=True, host="pc1"):
    """A sparse volume file of LENGTH bytes holding PIECES [(offset, bytes)], with its manifest
    beside it (real hashes unless hashed=False, for sizes too large to read in a test)."""
    volume_size = volume_size or max(length, manifests.MIN_VOLUME_SIZE)
    path = directory / f"{set_name}.{index:03d}"
    with open(path, "wb") as stream:
        stream.truncate(length)
        for offset, data in pieces:
            stream.seek(offset)
            stream.write(data)
    chunks = manifests.chunk_count(length, CHUNK)
    volume_hash = xxhash.xxh3_128()
    digests = bytearray()
    if hashed:
        with open(path, "rb") as stream:
            for _ in range(chunks):
                data = stream.read(CHUNK)
                digests += xxhash.xxh3_128(data).digest()
                volume_hash.update(data)
    else:
        digests = bytes(16 * chunks)
    offset = (index - 1) * volume_size
    manifest = manifests.Manifest(
        set_id="5e7" + "0" * 29, set_name=set_name, index=index, offset=offset, length=length,
        chunk_size=CHUNK, volume_size=volume_size, chunk_digests=bytes(digests),
        volume_digest=volume_hash.digest(), media=media_name, created="2026-11-25T09:00:00Z",
        host=host, last=last, total_length=offset + length if last else None,
        volume_count=index if last else None, stream_digest=bytes(16) if last else None)
    (directory / f"{path.name}.manifest").write_bytes(manifest.to_json())
    return path


def digest_of(path):
    digest = xxhash.xxh3_128()
    with open(path, "rb") as stream:
        while data := stream.read(1 << 22):
            digest.update(data)
    return digest.hexdigest()


def extract_with(reader, image, directory):
    """Extract IMAGE into DIRECTORY with one of the independent readers."""
    directory.mkdir()
    commands = {
        "xorriso": ["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/", str(directory)],
        "7z": ["7z", "x", f"-o{directory}", str(image)],
        "bsdtar": ["bsdtar", "-xf", str(image), "-C", str(directory)],
    }
    subprocess.run(commands[reader], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# ---------------------------------------------------------------------------------------------
# Fit

@pytest.mark.parametrize("preset", list(media.PRESETS.values()), ids=lambda p: p.name)
def test_image_of_a_full_volume_fits_its_disc(tmp_path, preset):
    length = media.volume_size_for(preset)
    # The longest set name and host a manifest may hold: the largest manifest and README.
    volume = make_volume(tmp_path, length, [(0, b"\x28\xb5\x2f\xfd"), (length - 5, b"end.\n")],
                         set_name="n" * 100, media_name=preset.name, hashed=False,
                         host="h" * manifests.MAX_HOST_LENGTH)
    image = tmp_path / "disc.iso"
    size = iso.package(str(volume), str(image))
    assert size == image.stat().st_size
    assert size <= preset.sectors * iso.SECTOR_SIZE
    assert iso.burned_sectors(size) <= preset.sectors, (
        f"{preset.name}: the image of a full volume needs {iso.burned_sectors(size)} sectors burned, "
        f"the disc has {preset.sectors}; media.volume_size_for must leave "
        f"{iso.burned_sectors(size) * 2048 - length} bytes, not {preset.capacity - length}")
    assert iso.burned_sectors(iso.image_size_bound(length, CHUNK)) <= preset.sectors


def test_largest_volume_is_the_most_that_fits():
    for preset in media.PRESETS.values():
        largest = iso.largest_volume(preset.sectors, CHUNK)
        assert iso.fits(iso.image_size_bound(largest, CHUNK), preset.sectors)
        assert not iso.fits(iso.image_size_bound(largest + iso.SECTOR_SIZE, CHUNK), preset.sectors)


def test_full_cd700_image_of_random_data(tmp_path):
    """A full --cd700 volume of incompressible data from split-span: the image fits the disc and
    every chunk reads back from it matching the manifest."""
    preset = media.PRESETS["cd700"]
    length = media.volume_size_for(preset)
    subprocess.run(f"head -c {length} /dev/urandom | split-span --cd700 --name cd {tmp_path}/set",
                   shell=True, check=True)
    volume = tmp_path / "set" / "cd.001"
    assert volume.stat().st_size == length
    image = tmp_path / "cd.001.iso"
    size = iso.package(str(volume), str(image))
    assert iso.fits(size, preset.sectors)
    with iso.Disc(str(image)) as disc:
        assert disc.volume_length == length
        iso.verify(disc)


# ---------------------------------------------------------------------------------------------
# Independent readers

@pytest.fixture
def small_image(tmp_path):
    pieces = [(0, os.urandom(3 << 20)), (5 << 20, b"middle" * 1000), ((6 << 20) - 7, b"the end")]
    volume = make_volume(tmp_path, 6 << 20, pieces)
    image = tmp_path / (volume.name + ".iso")
    iso.package(str(volume), str(image))
    return volume, image


@pytest.mark.parametrize("reader", ["xorriso", "7z", "bsdtar"])
def test_reader_gives_back_the_volume(small_image, tmp_path, reader):
    need_tools(reader)
    volume, image = small_image
    out = tmp_path / "out"
    extract_with(reader, image, out)
    names = sorted(os.listdir(out))
    assert names == sorted([volume.name, volume.name + ".manifest", "README.TXT"])
    assert (out / volume.name).read_bytes() == volume.read_bytes()
    assert (out / (volume.name + ".manifest")).read_bytes() == (tmp_path / (volume.name + ".manifest")).read_bytes()
    assert "disc 1 of 1 of the set 'pc1-2026-11-25'" in (out / "README.TXT").read_text()


def test_udfinfo_accepts_the_image_and_labels(small_image):
    need_tools("udfinfo", "xorriso")
    _, image = small_image
    info = subprocess.run(["udfinfo", str(image)], check=True, stdout=subprocess.PIPE, text=True).stdout
    assert "label=pc1-2026-11-25 disc 1\n" in info
    assert "numfiles=3\n" in info
    pvd = subprocess.run(["xorriso", "-indev", str(image), "-pvd_info"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    assert re.search(r"Volume Id\s*: PC1_2026_11_25_001\n", pvd), pvd


def test_burn_iso_man_page_names_the_udf_revision_the_images_have(small_image):
    need_tools("udfinfo")
    _, image = small_image
    info = subprocess.run(["udfinfo", str(image)], check=True, stdout=subprocess.PIPE, text=True).stdout
    revision = re.search(r"^udfrev=(\S+)$", info, re.M).group(1)
    page = re.sub(r"\s+", " ", (REPO / "man" / "burn-iso.1").read_text())
    assert re.findall(r"UDF (\d\.\d\d)", page) == [revision], "burn-iso.1 names another UDF revision"


@pytest.mark.large
def test_volume_over_4_gib(tmp_path):
    """Multi-extent ISO 9660 and several UDF extents: data at every extent boundary comes back
    byte for byte through every reader, and through iso.Disc."""
    need_tools("xorriso", "7z", "bsdtar", "udfinfo")
    length = EXTENT + (64 << 20)
    boundaries = [0, UDF_EXTENT, 2 * UDF_EXTENT, 3 * UDF_EXTENT, EXTENT, length]
    pieces = [(max(0, at - 4096), os.urandom(min(8192, length - max(0, at - 4096)))) for at in boundaries]
    volume = make_volume(tmp_path, length, pieces)
    image = tmp_path / "big.iso"
    size = iso.package(str(volume), str(image))
    assert size == iso.image_size(volume.name, length, (tmp_path / (volume.name + ".manifest")).stat().st_size,
                                  len(discreadme.readme_text(manifests.read(str(volume) + ".manifest"),
                                                             volume.name, False).encode()))
    assert image.stat().st_blocks * 512 < 64 << 20, "the image of a sparse volume should stay sparse"
    subprocess.run(["udfinfo", str(image)], check=True, stdout=subprocess.DEVNULL)
    iso_records = subprocess.run(["xorriso", "-indev", str(image), "-find", "/", "-exec", "report_lba"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    extents = [line for line in iso_records.splitlines() if line.endswith(f"'/{volume.name}'")]
    assert len(extents) == 2, iso_records   # a multi-extent file: two ISO 9660 records
    expected = digest_of(volume)
    with iso.Disc(str(image)) as disc:
        assert len(disc.extents) == 5
        iso.verify(disc)
    out = tmp_path / "xorriso"
    extract_with("xorriso", image, out)
    assert digest_of(out / volume.name) == expected, "xorriso gave back a different volume"
    (out / volume.name).unlink()
    # 7z and bsdtar write the volume to a pipe: the same decoders, half the disk traffic.
    for command in (["7z", "x", "-so", str(image), volume.name], ["bsdtar", "-xOf", str(image), volume.name]):
        reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        digest = xxhash.xxh3_128()
        while data := reader.stdout.read(1 << 22):
            digest.update(data)
        assert reader.wait() == 0 and digest.hexdigest() == expected, f"{command[0]} gave back a different volume"


# ---------------------------------------------------------------------------------------------
# Reading back, names, sizes

def test_disc_reads_volume_in_any_buffer_size(small_image):
    volume, image = small_image
    data = volume.read_bytes()
    with iso.Disc(str(image)) as disc:
        assert disc.volume_name == volume.name
        assert disc.manifest.index == 1
        assert disc.readme_text.startswith("MIRRORPIPE BACKUP DISC")
        reader = disc.open_volume()
        parts = []
        while chunk := reader.read(777_777):
            parts.append(chunk)
        assert b"".join(parts) == data
        reader.seek(5 << 20)
        assert reader.read(6) == b"middle"


def test_verify_names_the_corrupt_offset(small_image):
    volume, image = small_image
    with iso.Disc(str(image)) as disc:
        start = disc.extents[0][0]
    with open(image, "r+b") as stream:
        stream.seek(start + (2 << 20))
        stream.write(b"\xff")
    with iso.Disc(str(image)) as disc, pytest.raises(Error, match=r"corrupt at offset 0: "):
        iso.verify(disc)


def zero_sectors(image, *numbers):
    with open(image, "r+b") as stream:
        for number in numbers:
            stream.seek(number * iso.SECTOR_SIZE)
            stream.write(bytes(iso.SECTOR_SIZE))


def last_sector(image):
    return image.stat().st_size // iso.SECTOR_SIZE - 1


def test_damaged_iso9660_descriptor_is_read_through_udf(tmp_path):
    """Sector 16 (the primary volume descriptor) zeroed: 7z still gives the volume through UDF,
    and so does reassemble, whether the image is found in a directory or given by a name that
    does not end in .iso (a disc copied off with dd)."""
    need_tools("7z")
    raw = os.urandom(300_000)
    out = tmp_path / "out"
    sh(f"split-span --size 100K --iso --name d {out}", input=raw, check=True)
    images = sorted(out.iterdir())
    zero_sectors(images[1], 16)
    extract_with("7z", images[1], tmp_path / "7z")
    assert (tmp_path / "7z" / "d.002").read_bytes() == raw[100 * 1024:200 * 1024]
    with iso.Disc(str(images[1])) as disc:
        assert disc.file_system == "UDF" and disc.damage == ["ISO 9660: no primary volume descriptor"]
        assert disc.open_volume().read() == raw[100 * 1024:200 * 1024]
    assert sh(f"reassemble {out}", check=True).stdout == raw
    copied = tmp_path / "disc2.img"
    copied.write_bytes(images[1].read_bytes())
    given = " ".join([str(images[0]), str(copied), str(images[2])])
    assert sh(f"reassemble {given}", check=True).stdout == raw


@pytest.mark.parametrize("damaged, read_through", [
    ("udf", "ISO 9660"),          # both UDF anchors
    ("iso9660", "UDF"),           # the primary volume descriptor
    ("udf+iso9660", "Joliet"),    # only the Joliet tree is left
])
def test_disc_is_read_through_whichever_file_system_is_left(small_image, damaged, read_through):
    volume, image = small_image
    sectors = {"udf": [iso.UDF_ANCHOR_SECTOR, last_sector(image)], "iso9660": [16]}
    zero_sectors(image, *[number for name in damaged.split("+") for number in sectors[name]])
    with iso.Disc(str(image)) as disc:
        assert disc.file_system == read_through
        assert disc.open_volume().read() == volume.read_bytes()
        # A fresh burn with a damaged file system is a failed burn, even though the data is whole.
        with pytest.raises(Error, match=r"\.iso: a file system of the disc is damaged \(.*; its volume reads "
                                                    f"through {read_through}"):
            iso.verify(disc)
    assert iso.is_image(str(image))


def test_disc_without_any_readable_file_system_is_refused(small_image):
    _, image = small_image
    zero_sectors(image, 16, 17, iso.UDF_ANCHOR_SECTOR, last_sector(image))
    with pytest.raises(Error, match=r"not a readable ISO image \(no file system on it gives a volume: "
                                    r"UDF: .*; ISO 9660: .*; Joliet: .*\); is it a disc made by burn-iso\?"):
        iso.Disc(str(image))
    assert not iso.is_image(str(image))


def test_truncated_image_and_non_images_are_refused(small_image, tmp_path):
    volume, image = small_image
    with pytest.raises(Error, match="not a readable ISO image"):
        iso.Disc(str(volume))
    truncated = tmp_path / "truncated.iso"
    truncated.write_bytes(image.read_bytes()[:2 << 20])
    with pytest.raises(Error):
        with iso.Disc(str(truncated)) as disc:
            iso.verify(disc)
    assert iso.is_image(str(image)) and not iso.is_image(str(volume))


def test_image_is_written_as_part_then_renamed(tmp_path):
    volume = make_volume(tmp_path, 1 << 20, [(0, b"x" * 100)])
    with pytest.raises(Error, match="its manifest says"):
        with open(volume, "ab") as stream:
            stream.write(b"more")
        iso.package(str(volume), str(tmp_path / "x.iso"))
    assert not os.path.exists(tmp_path / "x.iso") and not os.path.exists(tmp_path / "x.iso.part")


def test_names_and_labels_follow_each_file_systems_rules():
    assert iso.iso9660_name("pc1-2026-11-25.001") == "PC1_2026_11_25.001;1"
    assert iso.iso9660_name("pc1-2026-11-25.001.manifest") == "PC1_2026_11_25_001.MANIFEST;1"
    long_name = "a" * 100 + ".90000.manifest"
    assert len(iso.iso9660_name(long_name)) <= 32
    assert len(iso.joliet_name(long_name)) == 64 and iso.joliet_name(long_name).endswith(".90000.manifest")
    labels = iso.disc_labels("pc1-2026-11-25", names.VolumeKey(3))
    assert labels == iso.Labels("PC1_2026_11_25_003", "PC1_2026_11_003", "pc1-2026-11-25 disc 3")
    long_labels = iso.disc_labels("x" * 100, names.VolumeKey(12345))
    assert len(long_labels.iso9660) <= 32 and re.fullmatch(r"[A-Z0-9_]+", long_labels.iso9660)
    assert len(long_labels.joliet) <= 16


def test_image_size_is_exact(tmp_path):
    for length in (0, 1, 2048, 10 ** 6 + 1):
        volume = make_volume(tmp_path, length, [] if length < 1 else [(0, b"x")])
        manifest = manifests.read(str(volume) + ".manifest")
        readme = discreadme.readme_text(manifest, volume.name, None)
        predicted = iso.image_size(volume.name, length, (tmp_path / (volume.name + ".manifest")).stat().st_size,
                                   len(readme.encode()))
        assert iso.package(str(volume), str(tmp_path / "x.iso")) == predicted


def test_disc_volume_reads_like_a_volume_file(small_image, tmp_path):
    volume, image = small_image
    found = iso.disc_volume(str(image))
    assert found.manifest.index == 1 and found.path == f"{image}:{volume.name}"
    fd = found.open_checked()
    try:
        assert os.read(fd, 1 << 20) == volume.read_bytes()[:1 << 20]
    finally:
        os.close(fd)
    with open(image, "r+b") as stream:
        stream.truncate(found.start + 1000)
    with pytest.raises(Error, match="is truncated"):
        found.open_checked()


def test_replace_with_image_leaves_only_the_image(tmp_path):
    volume = make_volume(tmp_path, 100_000, [(0, b"\x28\xb5\x2f\xfd")], index=2, last=False,
                         volume_size=100_000)
    image = iso.replace_with_image(str(volume), compressed=True)
    assert os.listdir(tmp_path) == [volume.name + ".iso"]
    with iso.Disc(image) as disc:
        assert "This set's stream is zstd-compressed." in disc.readme_text
        iso.verify(disc)


def test_image_hook_tells_every_disc_what_volume_1_starts_with(tmp_path):
    calls = []
    hook = iso.ImageHook(lambda manifest, path: calls.append((manifest.index, path)))
    for index, last in ((1, False), (2, True)):
        volume = make_volume(tmp_path, 100_000, [(0, b"\x28\xb5\x2f\xfd")], index=index, last=last,
                             volume_size=100_000)
        hook(manifests.read(str(volume) + ".manifest"), str(volume))
    assert calls == [(1, f"{tmp_path}/pc1-2026-11-25.001.iso"), (2, f"{tmp_path}/pc1-2026-11-25.002.iso")]
    assert sorted(os.listdir(tmp_path)) == ["pc1-2026-11-25.001.iso", "pc1-2026-11-25.002.iso"]
    with iso.Disc(calls[1][1]) as disc:
        assert "This set's stream is zstd-compressed." in disc.readme_text


def test_split_span_iso_keeps_an_image_set_and_clears_leftover_parts(tmp_path):
    """A second split-span --iso of the same name must not overwrite a finished set's images; a
    killed run's NAME.NNN.iso.part is removed by the next run."""
    out = tmp_path / "set"
    subprocess.run(f"head -c 200000 /dev/urandom | split-span --size 100K --iso --name a {out}",
                   shell=True, check=True)
    before = (out / "a.001.iso").read_bytes()
    again = subprocess.run(f"head -c 200000 /dev/urandom | split-span --size 100K --iso --name a {out}",
                           shell=True, stderr=subprocess.PIPE, text=True)
    assert again.returncode == 1 and "already holds a volume set named 'a' (a.001.iso" in again.stderr
    assert (out / "a.001.iso").read_bytes() == before
    for image in out.glob("a.*.iso"):
        image.unlink()
    (out / "a.009.iso.part").write_bytes(b"left by a killed run")
    subprocess.run(f"head -c 200000 /dev/urandom | split-span --size 100K --iso --name a {out}",
                   shell=True, check=True)
    assert sorted(os.listdir(out)) == ["a.001.iso", "a.002.iso"]


def test_a_complete_image_set_is_never_offered_for_removal(tmp_path):
    """split-span run again on a directory holding a complete --iso set: refused, and never told
    to remove a complete backup."""
    out = tmp_path / "set"
    sh(f"head -c 200000 /dev/urandom | split-span --size 100K --iso --name a {out}", check=True)
    again = sh(f"head -c 200000 /dev/urandom | split-span --size 100K --iso --name a {out}")
    assert again.returncode == 1 and "already holds a volume set named 'a'" in again.stderr_text
    assert "incomplete" not in again.stderr_text and "rm -f" not in again.stderr_text, again.stderr_text

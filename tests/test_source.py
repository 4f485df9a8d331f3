"""disk/source.py in-process: the byte range a Source reads, the holes of an image file taken as
holes, and how it reads past unreadable sectors (read-disk itself is test_read_disk.py; the
bad-sector reading, test_badsectors.py)."""

import os

from conftest import MIB
from mirrorpipe.disk.source import Source


def test_an_image_file_is_read_as_data_and_holes_in_its_range(tmp_path):
    image = tmp_path / "sparse.img"
    with open(image, "wb") as f:
        f.truncate(8 * MIB)
        f.seek(MIB)
        f.write(b"D" * MIB)
        f.seek(6 * MIB)
        f.write(b"E" * 4096)
    content = image.read_bytes()
    with Source(str(image), offset=512, length=7 * MIB) as source:
        extents = list(source.extents(512, 512 + 7 * MIB))
        # The ranges cover the range to read, in order, with nothing left out or read twice.
        assert extents[0][0] == 512 and extents[-1][1] == 512 + 7 * MIB
        assert all(end == start for (_, end, _), (start, _, _) in zip(extents, extents[1:]))
        data = [(start, end) for start, end, is_data in extents if is_data]
        assert any(start <= MIB and 2 * MIB <= end for start, end in data), extents
        assert any(start <= 6 * MIB and 6 * MIB + 4096 <= end for start, end in data), extents
        assert any(not is_data and start <= 3 * MIB and 5 * MIB <= end for start, end, is_data in extents), extents
        out = tmp_path / "out"
        with open(out, "wb") as f:
            assert source.copy_to(f.fileno()) == 7 * MIB
    assert out.read_bytes() == content[512:512 + 7 * MIB]


def test_the_source_chooses_how_unreadable_sectors_are_read(tmp_path, loop_device):
    """Source.bad_sector_reader: a block device in its logical sectors, an image file in 512-byte
    ones, a stream (nothing to go back to) plainly; the map is saved from the start."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    with Source(str(image)) as source, source.bad_sector_reader(str(tmp_path / "file.map")) as reader:
        assert reader.sector == 512
    assert (tmp_path / "file.map").read_text().startswith("# Mapfile.")
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(b"a stream")
    with Source(f"/proc/self/fd/{read_end}") as stream:
        assert stream.bad_sector_reader() is None
    os.close(read_end)
    device = loop_device(image, "--sector-size", "4096")
    with Source(device) as source, source.bad_sector_reader() as reader:
        assert reader.sector == 4096

"""sets/finder.py in-process: volumes found in any order and under any names, and a manifest never
leading to a file outside the sources."""

import json
import os

import pytest

from conftest import MIB, restore_set, write_set
from mirrorpipe.errors import Error


def test_sources_in_any_order_and_with_any_names(two_sets):
    tmp_path, data = two_sets
    # Renamed volumes keep working as long as each manifest is named after its volume.
    os.rename(tmp_path / "a" / "image.002", tmp_path / "a" / "zz")
    os.rename(tmp_path / "a" / "image.002.manifest", tmp_path / "a" / "zz.manifest")
    os.rename(tmp_path / "a" / "image.001", tmp_path / "a" / "yy")
    os.rename(tmp_path / "a" / "image.001.manifest", tmp_path / "a" / "yy.manifest")
    a = tmp_path / "a"
    assert restore_set(a / "image.004.manifest", a / "zz", a / "image.003", a / "yy.manifest") == data
    assert restore_set(a, a / "zz") == data        # the same volume twice is harmless


def test_a_manifest_never_leads_to_a_file_outside_the_sources(tmp_path):
    """Whatever a crafted manifest says, the volume read is the file beside it."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 100)
    write_set(tmp_path / "out", b"v" * 100, MIB)
    manifest = tmp_path / "out" / "image.001.manifest"
    doc = json.loads(manifest.read_text())
    doc.update(path="../secret", file="/etc/shadow", volume="../secret")
    manifest.write_text(json.dumps(doc))
    assert restore_set(tmp_path / "out") == b"v" * 100
    os.unlink(tmp_path / "out" / "image.001")
    with pytest.raises(Error) as caught:
        restore_set(tmp_path / "out")
    assert f"volume 1 ({tmp_path}/out/image.001) is missing" in str(caught.value)
    assert "secret" not in str(caught.value)

"""The manifest format: what split-span writes reads back, and hostile manifests are refused
with a one-line errors.Error (never another exception, a hang or an unbounded read)."""

import json
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrorpipe.sets import erasure, manifests
from mirrorpipe.errors import Error

CHUNK = 1 << 20


def make_manifest(index=3, length=4 * CHUNK, last=False, volume_size=4 * CHUNK, chunk_size=CHUNK):
    chunks = manifests.chunk_count(length, chunk_size)
    manifest = manifests.Manifest(
        set_id="0123456789abcdef0123456789abcdef", set_name="pc1-2026.11", index=index,
        offset=(index - 1) * volume_size, length=length, chunk_size=chunk_size,
        volume_size=volume_size, chunk_digests=bytes(range(16)) * chunks,
        volume_digest=b"\x01" * 16, media=None, created="2026-11-25T09:00:00Z", host="vm",
        last=last)
    if last:
        manifest.total_length = manifest.offset + length
        manifest.volume_count = index
        manifest.stream_digest = b"\x02" * 16
    return manifest


def document(**changes):
    doc = json.loads(make_manifest().to_json())
    doc.update(changes)
    return doc


def encode(doc):
    return json.dumps(doc).encode()


def test_round_trip_of_a_middle_and_a_last_volume():
    for manifest in (make_manifest(), make_manifest(index=5, length=CHUNK + 7, last=True)):
        parsed = manifests.parse(manifest.to_json())
        assert parsed.to_json() == manifest.to_json()
        assert parsed.chunks == manifests.chunk_count(manifest.length, CHUNK)


def test_the_file_is_readable_json_with_the_documented_fields():
    doc = json.loads(make_manifest(index=2, length=CHUNK + 1, last=True).to_json())
    assert doc["format"] == "mirrorpipe-volume" and doc["format_version"] == 1
    assert doc["hash_algorithm"] == "xxh3-128"
    for key in ("set_id", "set_name", "index", "offset", "length", "chunk_size", "chunk_hashes",
                "volume_hash", "media", "volume_size", "created", "host", "last",
                "total_length", "volume_count", "stream_hash"):
        assert key in doc
    assert len(doc["chunk_hashes"]) == 2 and all(len(h) == 32 for h in doc["chunk_hashes"])
    assert "total_length" not in json.loads(make_manifest().to_json())


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (encode(document(format="zip")), "'format'"),
    (encode(document(format_version=2)), "format_version 2 is not supported"),
    (encode(document(format_version=True)), "must be an integer"),
    (encode(document(hash_algorithm="md5")), "hash_algorithm"),
    (encode(document(index=0)), "'index' is 0"),
    (encode(document(index="3")), "must be an integer"),
    (encode(document(index=3.0)), "must be an integer"),
    (encode(document(offset=-1)), "'offset' is -1"),
    (encode(document(length=10 ** 30)), "'length'"),
    (encode(document(chunk_size=1)), "'chunk_size' is 1"),
    (encode(document(volume_size=1 << 60)), "'volume_size'"),
    (encode(document(offset=0)), "does not match volume 3"),
    (encode(document(length=3 * CHUNK)), "not full"),
    (encode(document(chunk_hashes=["00" * 16] * 5)), "5 chunk hashes for"),
    (encode(document(chunk_hashes=["zz" * 16] * 4)), "not 32 hex digits"),
    (encode(document(chunk_hashes="00" * 64)), "wrong type"),
    (encode(document(set_id="../../etc/passwd")), "'set_id'"),
    (encode(document(set_name="../x")), "'set_name'"),
    (encode(document(set_name="a\x1b[2Jb")), "'set_name'"),
    (encode(document(host="evil\x1b]0;title\x07")), "'host'"),
    (encode(document(last="yes")), "wrong type"),
    (encode(document(created="yesterday")), "'created'"),
    (encode(document(volume_hash=None)), "wrong type"),
    (encode({k: v for k, v in document().items() if k != "set_id"}), "'set_id' is missing"),
    (b'{"format": "mirrorpipe-volume", "format": "x"}', "appears twice"),
    (json.dumps(document()).replace('"index": 3', '"index": NaN').encode(), "NaN"),
])
def test_hostile_manifests_are_refused_in_one_line(data, reason):
    with pytest.raises(Error) as caught:
        manifests.parse(data, "disc/image.003.manifest")
    message = str(caught.value)
    assert reason in message
    assert message.startswith("disc/image.003.manifest is not a valid volume manifest")
    assert "\n" not in message


def test_a_last_volume_must_state_consistent_totals():
    doc = json.loads(make_manifest(index=2, length=100, last=True).to_json())
    doc["total_length"] += 1
    with pytest.raises(Error, match="total_length or volume_count"):
        manifests.parse(encode(doc))
    doc = json.loads(make_manifest(index=2, length=100, last=True).to_json())
    del doc["stream_hash"]
    with pytest.raises(Error, match="'stream_hash' is missing"):
        manifests.parse(encode(doc))


def test_only_the_first_volume_may_be_empty():
    assert manifests.parse(make_manifest(index=1, length=0, last=True).to_json()).chunks == 0
    doc = json.loads(make_manifest(index=2, length=0, last=True).to_json())
    with pytest.raises(Error, match="empty volume"):
        manifests.parse(encode(doc))


def test_unknown_fields_are_ignored_for_later_versions():
    assert manifests.parse(encode(document(burned_on="2027-01-01"))).index == 3


def test_read_refuses_oversized_files_before_reading_them(tmp_path):
    path = tmp_path / "big.manifest"
    with open(path, "wb") as f:
        f.truncate(1 << 40)          # sparse: reading it whole would take hours and a terabyte
    with pytest.raises(Error, match="more than the"):
        manifests.read(str(path))


def test_read_refuses_a_fifo_without_hanging(tmp_path):
    path = tmp_path / "image.001.manifest"
    os.mkfifo(path)
    result = []
    reader = threading.Thread(target=lambda: result.append(_error_of(manifests.read, str(path))))
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO manifest hung"
    assert "not a regular file" in result[0]


def _error_of(function, *args):
    try:
        function(*args)
    except Error as exc:
        return str(exc)
    return None


def test_largest_size_bounds_what_split_span_writes():
    for chunks in (0, 1, 300, 7000):
        manifest = make_manifest(index=1, length=chunks * CHUNK, volume_size=max(chunks, 1) * CHUNK,
                                 last=True)
        manifest.host = "h" * 255
        manifest.media = "bd128"
        assert len(manifest.to_json()) <= manifests.largest_size(chunks)
    assert manifests.largest_size(manifests.MAX_CHUNKS) < manifests.MAX_MANIFEST_SIZE


def test_volume_path_is_the_manifest_name_without_its_suffix():
    assert manifests.volume_path("/media/cdrom/renamed.manifest") == "/media/cdrom/renamed"
    assert manifests.manifest_path("out/image.001") == "out/image.001.manifest"


# ---------------------------------------------------------------------------------------------
# Property and fuzz tests: whatever the input, parse() returns a consistent Manifest or raises
# errors.Error; nothing else escapes.

def parse_or_error(data):
    try:
        manifest = manifests.parse(data)
    except Error as exc:
        assert "\n" not in str(exc)
        return None
    # Whatever is accepted is self-consistent: what reassemble relies on.
    assert manifest.chunks == manifests.chunk_count(manifest.length, manifest.chunk_size)
    assert manifest.offset == (manifest.index - 1) * manifest.volume_size
    assert 0 <= manifest.length <= manifest.volume_size <= manifests.MAX_VOLUME_SIZE
    assert manifest.chunks <= manifests.MAX_CHUNKS
    return manifest


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
FIELDS = list(document())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(data):
    parse_or_error(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5), st.sets(st.sampled_from(FIELDS), max_size=3))
def test_fuzz_valid_manifests_with_fields_replaced_or_removed(replaced, removed):
    doc = document(**replaced)
    for key in removed:
        doc.pop(key, None)
    manifest = parse_or_error(encode(doc))
    if manifest is not None:
        # Accepted only when every replaced value still is what the format allows.
        assert manifest.set_name == doc["set_name"] and manifest.index == doc["index"]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 10 ** 6), st.sampled_from([64 << 10, 1 << 20, 16 << 20]),
       st.booleans())
def test_property_valid_manifests_round_trip(index, extra, chunk_size, last):
    volume_size = chunk_size * 3 + 12345
    length = min(extra, volume_size) if last else volume_size
    if length == 0 and index != 1:
        length = 1
    manifest = make_manifest(index=index, length=length, last=last, volume_size=volume_size,
                             chunk_size=chunk_size)
    assert manifests.parse(manifest.to_json()) == manifest


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_byte_flips_of_a_valid_manifest(data):
    raw = bytearray(make_manifest(index=2, length=CHUNK + 5, last=True).to_json())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    parse_or_error(bytes(raw))


# ---------------------------------------------------------------------------------------------
# Parity manifests

def make_parity_manifest(group=2, group_size=3, parity_index=2, parity_count=2, last_group=False,
                         lengths=None):
    lengths = lengths or [4 * CHUNK] * group_size
    first = (group - 1) * group_size + 1
    length = max(lengths)
    manifest = manifests.ParityManifest(
        set_id="0123456789abcdef0123456789abcdef", set_name="pc1", group=group, group_size=group_size,
        parity_index=parity_index, parity_count=parity_count,
        coefficients=[erasure.coefficient(parity_index - 1, i) for i in range(len(lengths))],
        data_volumes=[manifests.DataVolumeEntry(first + i, n, bytes([i]) * 16) for i, n in enumerate(lengths)],
        length=length, chunk_size=CHUNK, volume_size=4 * CHUNK,
        chunk_digests=b"\x03" * 16 * manifests.chunk_count(length, CHUNK), volume_digest=b"\x04" * 16,
        created="2026-11-25T09:00:00Z", host="vm", last_group=last_group)
    if last_group:
        manifest.total_length = (first + len(lengths) - 2) * 4 * CHUNK + lengths[-1]
        manifest.volume_count = first + len(lengths) - 1
        manifest.stream_digest = b"\x05" * 16
    return manifest


def test_parity_manifests_round_trip():
    for manifest in (make_parity_manifest(),
                     make_parity_manifest(group=3, last_group=True, lengths=[4 * CHUNK, 5])):
        parsed = manifests.parse(manifest.to_json())
        assert isinstance(parsed, manifests.ParityManifest)
        assert parsed.to_json() == manifest.to_json()
        assert parsed.parity == manifests.ParityScheme(2, 3)
    data = make_manifest()
    data.parity = manifests.ParityScheme(2, 3)
    assert manifests.parse(data.to_json()).parity == manifests.ParityScheme(2, 3)


def parity_document(**changes):
    doc = json.loads(make_parity_manifest().to_json())
    doc.update(changes)
    return doc


@pytest.mark.parametrize("changes, reason", [
    ({"code": "rs-vandermonde"}, "parity code 'rs-vandermonde', which this mirrorpipe does not know"),
    ({"coefficients": [1, 2, 3]}, "its coefficients are not those of its code"),
    ({"parity_index": 3}, "field 'parity_index' is 3, outside 1-2"),
    ({"parity_count": 17}, "field 'parity_count' is 17, outside 1-16"),
    ({"group_size": 241}, "field 'group_size' is 241, outside 1-240"),
    ({"data_volumes": []}, "0 data volumes in a group of 3"),
    ({"data_volumes": "all"}, "field 'data_volumes' has the wrong type"),
    ({"data_volumes": [1, 2, 3]}, "a data volume entry is not a JSON object"),
    ({"length": 5}, "its length is not its group's longest data volume's"),
    ({"last_group": True}, "field 'total_length' is missing"),
])
def test_hostile_parity_manifests_are_refused(changes, reason):
    with pytest.raises(Error) as caught:
        manifests.parse(encode(parity_document(**changes)), "p.manifest")
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_parity_manifest_data_volumes_must_be_the_group_in_order():
    doc = parity_document()
    doc["data_volumes"][1]["index"] = 7
    assert "field 'index' is 7, outside 5-5" in _error_of(manifests.parse, encode(doc))
    doc = parity_document()
    doc["data_volumes"][0]["length"] = 5    # not the last: must be full
    assert "a data volume other than the set's last is not full" in _error_of(manifests.parse, encode(doc))
    doc = json.loads(make_parity_manifest(last_group=True, lengths=[4 * CHUNK, 5]).to_json())
    doc["volume_count"] = 9
    assert "total_length or volume_count does not match" in _error_of(manifests.parse, encode(doc))


def test_a_data_manifest_parity_scheme_is_checked():
    doc = document(parity={"count": 0, "group_size": 3})
    assert "field 'count' is 0, outside 1-16" in _error_of(manifests.parse, encode(doc))

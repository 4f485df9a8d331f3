"""units.py: sizes as people type them (parse_size) and sizes and durations as they read them."""

import pytest

from mirrorpipe import units


@pytest.mark.parametrize("text,value", [
    ("512", 512), ("4K", 4096), ("4k", 4096), ("1M", 1 << 20), ("1G", 1 << 30), ("2T", 2 << 40),
    ("1KiB", 1024), ("1KB", 1000), ("1MB", 10 ** 6), ("1GB", 10 ** 9), ("1.5M", 3 << 19), ("0", 0),
])
def test_sizes_accept_binary_and_decimal_suffixes(text, value):
    assert units.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1", "1X", "1.3B", "ten"])
def test_sizes_reject_nonsense(text):
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(text)


@pytest.mark.parametrize("count, shown", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), ((1 << 20) - 1, "1024.0 KiB"),
    (25 * 10 ** 9, "23.3 GiB"), (3 << 50, "3.0 PiB"), (5 << 60, "5120.0 PiB"),
])
def test_sizes_read_in_the_largest_binary_unit_that_keeps_a_number_of_at_least_one(count, shown):
    assert units.format_size(count) == shown


@pytest.mark.parametrize("text", ["4K", "1M", "1.5M", "2G"])
def test_a_formatted_binary_size_parses_back(text):
    assert units.parse_size(units.format_size(units.parse_size(text)).replace(" ", "").replace("iB", "")) \
        == units.parse_size(text)


@pytest.mark.parametrize("seconds, shown", [
    (0, "0:00"), (59.9, "0:59"), (61, "1:01"), (3599, "59:59"), (3600, "1:00:00"), (90061, "25:01:01"),
])
def test_durations_read_as_minutes_and_seconds_with_hours_when_there_are_any(seconds, shown):
    assert units.format_duration(seconds) == shown

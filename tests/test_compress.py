"""compress as a command: one-line errors on input that is no stream of ours or is damaged, and its
options' limits. The stream format itself (frames.py, through the engine and the command, with
stock zstd) is tested in test_frames.py."""

from conftest import MIB, assert_one_line_error, command, compressible_data, flipped, sh


def test_command_errors_on_corrupt_truncated_foreign_and_empty_input(tmp_path):
    data = compressible_data(3 * MIB)
    packed = command("compress", "--frame-size", "1M", input=data, check_status=0).stdout
    cases = {
        "corrupt": (flipped(packed, len(packed) // 2, 0xFF), "corrupt"),
        "truncated": (packed[:len(packed) // 2], "truncated input"),
        "cut-in-table": (packed[:-3], "truncated input"),
        "foreign": (b"PK\x03\x04" + data[:1000], "not zstd data"),
        "trailing-garbage": (packed + b"garbage!", "corrupt or foreign data at compressed offset"),
        "empty": (b"", "empty"),
    }
    for name, (blob, message) in cases.items():
        (tmp_path / name).write_bytes(blob)
        result = sh(f"compress -d < {tmp_path / name} > /dev/null")
        assert result.returncode == 1, name
        assert_one_line_error(result, "compress", message)


def test_frame_size_out_of_range_is_a_usage_error():
    for size in ("1K", "2G"):
        result = sh(f"compress --frame-size {size} < /dev/null > /dev/null")
        assert result.returncode == 2, result.stderr_text
        assert_one_line_error(result, "compress", f"--frame-size {cli_size(size)} is out of range: give 64K to 1G")


def cli_size(text):
    return int(text[:-1]) << {"K": 10, "G": 30}[text[-1]]

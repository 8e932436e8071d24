"""`pylog dump-log`: tables, JSON lines, records, exit status and the position of bad bytes,
on segments written by writers other than pylog (kafka-python's record builder, real clients)."""
import base64
import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka.record.default_records import DefaultRecordBatchBuilder

from pylog.cli import main

CLIENT_BATCHES = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "client-batches"


def kafka_python_log(batches=3, per_batch=5, codec=0) -> bytes:
    """A segment's bytes written by kafka-python's builder, offsets stamped as a broker would."""
    out = bytearray()
    offset = 0
    for b in range(batches):
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                            producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                            batch_size=1 << 20)
        for i in range(per_batch):
            builder.append(i, timestamp=1_700_000_000_000 + offset + i,
                           key=b"key-%d" % (offset + i), value=b"value-%d" % (offset + i),
                           headers=[("h", b"%d" % i)])
        batch = bytearray(builder.build())
        struct.pack_into(">q", batch, 0, offset)
        out += batch
        offset += per_batch
    return bytes(out)


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def json_lines(output):
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_table_of_a_foreign_segment(tmp_path):
    seg = tmp_path / "00000000000000000000.log"
    seg.write_bytes(kafka_python_log())
    result = run("dump-log", str(seg))
    assert result.exit_code == 0, result.output
    assert "base_offset" in result.output
    assert "3 batches, 15 records" in result.output


def test_json_fields(tmp_path):
    data = kafka_python_log(batches=2, per_batch=4, codec=DefaultRecordBatchBuilder.CODEC_GZIP)
    seg = tmp_path / "00000000000000000000.log"
    seg.write_bytes(data)
    result = run("dump-log", "--json", str(seg))
    assert result.exit_code == 0, result.output
    rows = json_lines(result.output)
    assert [r["base_offset"] for r in rows] == [0, 4]
    assert [r["last_offset"] for r in rows] == [3, 7]
    first = rows[0]
    for field in ("base_offset", "last_offset", "record_count", "size_bytes", "position",
                  "crc_valid", "leader_epoch", "max_timestamp", "compression", "producer_id"):
        assert field in first
    assert first["compression"] == "gzip"
    assert first["crc_valid"] is True
    assert rows[1]["position"] == first["size_bytes"]
    assert sum(r["size_bytes"] for r in rows) == len(data)
    assert first["max_timestamp"] == 1_700_000_000_003


def test_records_in_json_and_table(tmp_path):
    seg = tmp_path / "00000000000000000000.log"
    seg.write_bytes(kafka_python_log(batches=1, per_batch=3))
    rows = json_lines(run("dump-log", "--json", "--records", str(seg)).output)
    records = rows[0]["records"]
    assert [r["offset"] for r in records] == [0, 1, 2]
    assert records[1]["key"] == "key-1" and records[1]["value"] == "value-1"
    assert records[1]["headers"] == [{"key": "h", "value": "1", "value_encoding": "utf-8"}]
    table = run("dump-log", "--records", str(seg)).output
    assert "key: key-2 value: value-2" in table


def test_flipped_byte_gives_exit_1_and_position(tmp_path):
    data = bytearray(kafka_python_log())
    second = struct.unpack_from(">i", data, 8)[0] + 12
    data[second + 70] ^= 0xFF  # inside the second batch's records: the CRC no longer matches
    seg = tmp_path / "00000000000000000000.log"
    seg.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["dump-log", str(seg)])
    assert result.exit_code == 1
    assert f"byte {second}" in result.stderr
    rows = json_lines(run("dump-log", "--json", str(seg)).output)
    assert [r["crc_valid"] for r in rows if "crc_valid" in r] == [True, False, True]


def test_torn_tail_names_the_position(tmp_path):
    data = kafka_python_log()
    first = struct.unpack_from(">i", data, 8)[0] + 12
    last = first + struct.unpack_from(">i", data, first + 8)[0] + 12
    seg = tmp_path / "00000000000000000000.log"
    seg.write_bytes(data[:-7])
    result = CliRunner().invoke(main, ["dump-log", "--json", str(seg)])
    assert result.exit_code == 1
    errors = [r for r in json_lines(result.stdout) if "error" in r]
    assert errors and errors[0]["position"] == last and errors[0]["rest_unread"] is True
    assert len([r for r in json_lines(result.stdout) if "base_offset" in r]) == 2


def test_garbage_and_empty_files(tmp_path):
    garbage = tmp_path / "00000000000000000000.log"
    garbage.write_bytes(b"\x00\x01garbage" * 50)
    assert run("dump-log", str(garbage)).exit_code == 1
    empty = tmp_path / "00000000000000000100.log"
    empty.write_bytes(b"")
    result = run("dump-log", str(empty))
    assert result.exit_code == 0 and "0 batches" in result.output


def test_partition_directory_and_missing_path(tmp_path):
    part = tmp_path / "t-0"
    part.mkdir()
    (part / "00000000000000000000.log").write_bytes(kafka_python_log(batches=1))
    (part / "00000000000000000005.log").write_bytes(kafka_python_log(batches=1))
    result = run("dump-log", str(part))
    assert result.exit_code == 0
    assert result.output.count("Dumping") == 2
    missing = CliRunner().invoke(main, ["dump-log", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


@pytest.mark.skipif(not CLIENT_BATCHES.exists(), reason="shared client batches not present")
def test_real_client_logs_dump_with_every_record():
    for case in sorted(p for p in CLIENT_BATCHES.iterdir() if p.is_dir()):
        expected = json.loads((case / "records.json").read_text())
        offsets, keys = [], []
        for bin_file in sorted(case.glob("*.bin")):
            result = run("dump-log", "--json", "--records", str(bin_file))
            assert result.exit_code == 0, (case.name, result.output)
            for row in json_lines(result.output):
                for rec in row["records"]:
                    offsets.append(rec["offset"])
                    raw = rec["key"]
                    if raw is not None and rec["key_encoding"] == "utf-8":
                        raw = base64.b64encode(raw.encode()).decode()
                    keys.append(raw)
        assert offsets == [r["offset"] for r in expected], case.name
        assert keys == [r["key"] for r in expected], case.name

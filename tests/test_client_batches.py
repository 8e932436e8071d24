"""Real clients' RecordBatch v2 bytes (shared/testdata/client-batches): confluent-kafka and
kcat (librdkafka), kafka-python and aiokafka, every codec. Each batch must validate (lenient
and strict, compressed ones walked after decompression), the MANIFEST's header fields must
match what the C core reads, and decoding must give back exactly the records the clients sent.
"""
import base64
import json
from pathlib import Path

import pytest

from pylog import core
from pylog.records import (compression_name, decode_batch, iter_records,
                           validate_for_append)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "client-batches"
MANIFEST = DATA / "MANIFEST.json"

if not MANIFEST.exists():
    pytest.skip(f"client batch test data not found at {DATA} (it lives in ../shared next to "
                "the repository)", allow_module_level=True)

CASES = json.loads(MANIFEST.read_text())["cases"]


def test_all_fifteen_cases_are_present():
    assert len(CASES) == 15
    codecs = {h["codec"] for case in CASES.values() for h in case["batch_headers"]}
    assert codecs == {"none", "gzip", "snappy", "lz4", "zstd"}
    for name, case in CASES.items():
        assert len(list((DATA / name).glob("*.bin"))) == case["batches"], name


def _unb64(value):
    return None if value is None else base64.b64decode(value)


def _expected(name):
    return [(r["offset"], _unb64(r["key"]), _unb64(r["value"]),
             tuple((k, _unb64(v)) for k, v in r["headers"]), r["timestamp"])
            for r in json.loads((DATA / name / "records.json").read_text())]


def _batches(name):
    return [(h, (DATA / name / h["file"]).read_bytes()) for h in CASES[name]["batch_headers"]]


def _check_header(h, info):
    assert info.size == h["bytes"] == h["batchLength"] + 12
    assert (info.base_offset, info.partition_leader_epoch, info.crc, info.attributes) == \
        (h["baseOffset"], h["partitionLeaderEpoch"], int(h["crc"], 16), h["attributes"])
    assert (info.last_offset_delta, info.first_timestamp, info.max_timestamp) == \
        (h["lastOffsetDelta"], h["firstTimestamp"], h["maxTimestamp"])
    assert (info.producer_id, info.producer_epoch, info.base_sequence, info.record_count) == \
        (h["producerId"], h["producerEpoch"], h["baseSequence"], h["recordCount"])
    assert compression_name(info.compression) == h["codec"]
    assert info.timestamp_type == (h["timestampType"] == "LogAppendTime")
    assert (info.is_transactional, info.is_control) == (h["transactional"], h["control"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_batch_validates_and_matches_the_manifest(name):
    for h, data in _batches(name):
        assert h["magic"] == 2 and h["crcValid"]
        for strict in (False, True):
            (info,) = core.validate_batches(data, strict=strict)
            _check_header(h, info)
        (info,) = validate_for_append(data, strict=True)  # deep: compressed records walked
        _check_header(h, info)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_concatenation_validates_as_one_log(name):
    pieces = [data for _, data in _batches(name)]
    log = b"".join(pieces)
    infos = validate_for_append(log, strict=True)
    assert len(infos) == CASES[name]["batches"]
    assert [i.position for i in infos] == [sum(map(len, pieces[:k])) for k in range(len(pieces))]
    assert infos.end == len(log)
    assert infos.next_offset == CASES[name]["records"]
    # consecutive: each batch starts where the previous one's offsets end
    assert all(infos[k].base_offset == infos[k - 1].next_offset for k in range(1, len(infos)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_reproduces_the_records_sent(name):
    expected = _expected(name)
    got = [r for _, data in _batches(name) for r in decode_batch(data)]
    assert len(got) == len(expected) == CASES[name]["records"]
    for rec, (offset, key, value, headers, timestamp) in zip(got, expected):
        assert (rec.offset, rec.key, rec.value, rec.headers) == (offset, key, value, headers)
        if timestamp is not None:
            assert rec.timestamp == timestamp
    # and the same through the log-level iterator
    log = b"".join(data for _, data in _batches(name))
    assert list(iter_records(log)) == got


@pytest.mark.parametrize("name", sorted(CASES))
def test_damage_in_real_batches_is_caught(name):
    """A flipped byte anywhere under the CRC of any real batch is a CRC error there."""
    for h, data in _batches(name):
        for pos in range(21, len(data), max(1, len(data) // 97)):
            damaged = bytearray(data)
            damaged[pos] ^= 0x01
            with pytest.raises(core.CorruptBatchError) as info:
                core.validate_batches(bytes(damaged))
            assert (info.value.status, info.value.error_position) == (core.lib.PL_E_CRC, 17)

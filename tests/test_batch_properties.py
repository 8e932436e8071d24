"""Properties of RecordBatch v2 encode / validate / decode, over arbitrary records.

1. Round trip: any records (null, empty and binary keys and values, headers with null values,
   timestamps in any order) built with any codec validate strictly, deep-validate for append,
   and decode back to the same records; kafka-python (an independent reader) agrees for the
   codecs it can read here.
2. Prefixes: for any prefix of a valid multi-batch buffer, scan_batches returns exactly the
   whole batches inside it, and the error is PL_E_TRUNCATED at the cut (None at a boundary).
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylog import core
from pylog._core import lib
from pylog.records import (BatchBuilder, Compression, Record, build_batch, decode_batch,
                           iter_records, validate_for_append)

keys = st.none() | st.binary(max_size=64)
values = st.none() | st.binary(max_size=1500)
headers = st.lists(st.tuples(st.text(max_size=12), st.none() | st.binary(max_size=32)),
                   max_size=5)
timestamps = st.integers(-(2**40), 2**45)
records = st.lists(st.tuples(keys, values, headers, timestamps), min_size=1, max_size=40)
codecs = st.sampled_from(list(Compression))

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def expected_records(entries, base_offset):
    return [Record(base_offset + i, ts, k, v, tuple(h)) for i, (k, v, h, ts) in enumerate(entries)]


@SETTINGS
@given(records, codecs, st.integers(0, 2**40))
def test_round_trip(entries, codec, base_offset):
    batch = build_batch(entries, compression=codec, base_offset=base_offset)
    (info,) = core.validate_batches(batch, strict=True)
    assert (info.record_count, info.last_offset_delta, info.compression) == \
        (len(entries), len(entries) - 1, codec)
    assert info.first_timestamp == entries[0][3]
    assert info.max_timestamp == max(e[3] for e in entries)
    assert len(validate_for_append(batch, strict=True)) == 1
    assert decode_batch(batch) == expected_records(entries, base_offset)


@SETTINGS
@given(records, st.sampled_from([Compression.NONE, Compression.GZIP]))
def test_an_independent_reader_agrees(entries, codec):
    default_records = pytest.importorskip("kafka.record.default_records")
    batch = build_batch(entries, compression=codec)
    theirs = list(default_records.DefaultRecordBatch(bytearray(batch)))
    assert [(r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])
            for r in theirs] == [(i, ts, k, v, [tuple(x) for x in h])
                                 for i, (k, v, h, ts) in enumerate(entries)]


@SETTINGS
@given(st.lists(st.tuples(records, codecs), min_size=1, max_size=4), st.data())
def test_any_prefix_scans_to_its_whole_batches(batch_specs, data):
    batches, offset = [], 0
    for entries, codec in batch_specs:
        batches.append(build_batch(entries, compression=codec, base_offset=offset))
        offset += len(entries)
    buf = b"".join(batches)
    ends = [sum(map(len, batches[:k + 1])) for k in range(len(batches))]
    cut = data.draw(st.integers(0, len(buf)))
    good, error = core.scan_batches(buf[:cut], strict=True)
    inside = [e for e in ends if e <= cut]
    assert [b.end for b in good] == inside
    boundary = inside[-1] if inside else 0
    if cut == boundary:
        assert error is None
    else:
        assert isinstance(error, core.TruncatedBatchError)
        assert (error.status, error.batch_index, error.batch_position, error.error_position) == \
            (lib.PL_E_TRUNCATED, len(inside), boundary, cut)
    # the records a reader gets from the prefix are those of its whole batches
    whole = sum(len(e) for e, _ in batch_specs[:len(inside)])
    assert [r.offset for r in iter_records(buf[:cut])] == list(range(whole))


@SETTINGS
@given(records, st.integers(100, 5000))
def test_builder_respects_max_batch_bytes(entries, limit):
    b = BatchBuilder(max_batch_bytes=limit)
    taken = 0
    for key, value, hdrs, ts in entries:
        if not b.append(value, key, hdrs, ts):
            assert len(b) > 0
            break
        taken += 1
    assert len(b) == taken
    batch = b.build()
    assert len(batch) == b.size_estimate
    assert len(batch) <= limit or taken == 1
    assert decode_batch(batch) == expected_records(entries[:taken], 0)

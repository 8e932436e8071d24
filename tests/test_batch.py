"""RecordBatch v2 in the C core (csrc/batch.c) through pylog.core and pylog.records.

Good batches come from BatchBuilder and from kafka-python's DefaultRecordBatchBuilder (bytes
no one here wrote); bad ones are made by hand with an independent pure-Python record encoder
below, so every error kind is checked for its status and its exact position.
"""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylog import codecs, core
from pylog._core import ffi, lib
from pylog.records import (BatchBuilder, Compression, Record, build_batch, decode_batch,
                           iter_records, validate_for_append)

HEADER = struct.Struct(">qiibIhiqqqhii")  # the 61-byte batch header, as Kafka lays it out


# ---- an independent encoder, for hand-made (and hand-broken) batches ------------------------

def uvarint(u: int) -> bytes:
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def varint(n: int) -> bytes:
    return uvarint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


def field(data) -> bytes:
    return varint(-1) if data is None else varint(len(data)) + data


def record_body(offset_delta=0, ts_delta=0, key=b"k", value=b"v", headers=()) -> bytes:
    body = b"\x00" + varint(ts_delta) + varint(offset_delta) + field(key) + field(value)
    body += varint(len(headers)) + b"".join(field(k) + field(v) for k, v in headers)
    return body


def record(offset_delta=0, **kw) -> bytes:
    body = record_body(offset_delta, **kw)
    return varint(len(body)) + body


def raw_batch(section: bytes, *, count: int, lod: int, attributes: int = 0,
              base_offset: int = 0) -> bytes:
    """A batch around a records section, with a correct CRC (written by pl_batch_finish)."""
    buf = bytearray(61) + section
    core.finish_batch(buf, len(buf), base_offset=base_offset, partition_leader_epoch=0,
                      attributes=attributes, producer_id=-1, producer_epoch=-1,
                      base_sequence=-1, last_offset_delta=lod, record_count=count,
                      first_timestamp=1000, max_timestamp=1000)
    return bytes(buf)


def kafka_python_batch(entries, codec=0, producer=(-1, -1, -1)):
    """entries: (offset, timestamp, key, value, headers) written by kafka-python."""
    default_records = pytest.importorskip("kafka.record.default_records")
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False, producer_id=producer[0],
        producer_epoch=producer[1], base_sequence=producer[2], batch_size=1 << 30)
    for offset, timestamp, key, value, headers in entries:
        assert builder.append(offset, timestamp, key, value, list(headers)) is not None
    return bytes(builder.build())


def validate_raw(buf, flags=0, cap=64):
    """(status, n, infos, err) straight from pl_batches_validate."""
    infos = ffi.new("pl_batch_info[]", cap)
    n = ffi.new("size_t *")
    err = ffi.new("pl_error *")
    status = lib.pl_batches_validate(buf, len(buf), flags, infos, cap, n, err)
    return status, n[0], infos, err


def expect_error(buf, status, *, batch_index=0, batch_position=0, error_position=None,
                 record_index=None, strict=False, check_crc=True):
    with pytest.raises(core.CoreError) as info:
        core.validate_batches(buf, strict=strict, check_crc=check_crc)
    e = info.value
    assert (e.status, e.batch_index, e.batch_position) == (status, batch_index, batch_position), \
        e.message
    if error_position is not None:
        assert e.error_position == error_position, e.message
    if record_index is not None:
        assert e.record_index == record_index, e.message
    assert e.message.startswith(f"batch {batch_index} at byte {batch_position}: ")
    return e


def sample_records(n=5):
    return [(b"key-%d" % i if i % 3 else None, b"value-%d" % i * (i + 1),
             [("h%d" % i, b"x" * i)] if i % 2 else [], 1_700_000_000_000 + 7 * i)
            for i in range(n)]


# ---- header layout and encoding vectors --------------------------------------------------------

def test_record_encoding_vector():
    """One record, byte for byte, as Kafka's DefaultRecord.writeTo lays it out."""
    b = BatchBuilder()
    b.append(b"v", key=b"k", timestamp=5)
    b.append(None, key=None, headers=[("h", None)], timestamp=4)
    batch = b.build()
    assert batch[61:] == bytes.fromhex(
        "10" "00" "00" "00" "02 6b" "02 76" "00"          # len 8, attrs, ts 0, off 0, k, v, 0 hdrs
        "12" "00" "01" "02" "01" "01" "02" "02 68" "01")  # len 9, ts -1, off 1, null k/v, h=null


def test_header_fields_land_at_their_offsets():
    b = BatchBuilder(Compression.NONE, base_offset=1234, partition_leader_epoch=7,
                     producer_id=99, producer_epoch=3, base_sequence=41, timestamp_type=1)
    for i in range(3):
        b.append(b"v", timestamp=100 - i * 10)
    batch = b.build()
    fields = HEADER.unpack_from(batch)
    assert fields == (1234, len(batch) - 12, 7, 2, core.crc32c(batch[21:]), 0b1000, 2,
                      100, 100, 99, 3, 41, 3)
    info = core.validate_batches(batch, strict=True)[0]
    assert (info.base_offset, info.size, info.partition_leader_epoch, info.crc) == \
        (1234, len(batch), 7, fields[4])
    assert (info.last_offset, info.next_offset, info.timestamp_type, info.compression) == \
        (1236, 1237, 1, 0)
    assert (info.first_timestamp, info.max_timestamp, info.producer_id, info.producer_epoch,
            info.base_sequence, info.record_count) == (100, 100, 99, 3, 41, 3)
    assert not info.is_transactional and not info.is_control


def test_builder_matches_kafka_python_byte_for_byte():
    entries = [(i, 1_700_000_000_000 + (5 - i) * 3, None if i == 2 else b"k%d" % i,
                b"v" * (i * 40), [("a", b"1"), ("b", None)] if i == 3 else [])
               for i in range(6)]
    theirs = kafka_python_batch(entries)
    b = BatchBuilder(partition_leader_epoch=0)
    for _, ts, key, value, headers in entries:
        assert b.append(value, key=key, headers=headers, timestamp=ts)
    assert b.build() == theirs


def test_kafka_python_reads_what_we_build():
    default_records = pytest.importorskip("kafka.record.default_records")
    for codec in (Compression.NONE, Compression.GZIP):
        batch = build_batch(sample_records(), compression=codec, base_offset=50)
        theirs = list(default_records.DefaultRecordBatch(bytearray(batch)))
        assert [(r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])
                for r in theirs] == [
            (50 + i, ts, k, v, list(h)) for i, (k, v, h, ts) in enumerate(sample_records())]


# ---- good batches pass ---------------------------------------------------------------------

@pytest.mark.parametrize("codec", list(Compression))
def test_builder_batches_validate_both_modes(codec):
    batch = build_batch(sample_records(20), compression=codec)
    for strict in (False, True):
        infos = core.validate_batches(batch, strict=strict)
        assert len(infos) == 1 and infos[0].compression == codec and infos[0].record_count == 20
    assert len(validate_for_append(batch)) == 1


@pytest.mark.parametrize("codec", [0, 1])
def test_kafka_python_batches_validate(codec):
    entries = [(i, 1000 - i, b"k" if i % 2 else None, b"v" * i, [("h", b"x")] if i == 4 else [])
               for i in range(10)]
    batch = kafka_python_batch(entries, codec=codec, producer=(77, 0, 5))
    info = validate_for_append(batch)[0]
    assert (info.record_count, info.last_offset_delta, info.producer_id, info.base_sequence) == \
        (10, 9, 77, 5)
    got = decode_batch(batch)
    assert [(r.offset, r.timestamp, r.key, r.value) for r in got] == \
        [(o, t, k, v) for o, t, k, v, _ in entries]
    assert got[4].headers == (("h", b"x"),)


def test_empty_buffer_is_zero_batches():
    assert len(core.validate_batches(b"")) == 0
    good, error = core.scan_batches(b"")
    assert len(good) == 0 and good.end == 0 and error is None


# ---- strict vs lenient -------------------------------------------------------------------------

def compacted_batch():
    """What a log cleaner leaves: offsets 0, 2 and 5 of a batch that had 0..5."""
    return kafka_python_batch([(0, 10, b"a", b"1", []), (2, 11, b"b", b"2", []),
                               (5, 12, b"c", b"3", [])])


def test_compacted_batch_passes_lenient_fails_strict():
    batch = compacted_batch()
    info = core.validate_batches(batch)[0]
    assert (info.record_count, info.last_offset_delta) == (3, 5)
    assert [r.offset for r in decode_batch(batch)] == [0, 2, 5]
    e = expect_error(batch, lib.PL_E_COUNT, strict=True, error_position=57)
    assert "recordCount 3 is not lastOffsetDelta + 1 = 6" in e.message
    with pytest.raises(core.CorruptBatchError):
        validate_for_append(batch)


def test_strict_offset_deltas_must_be_their_index():
    # count == lod + 1 but deltas 0, 2: the header passes strict, the records do not
    section = record(0) + record(2)
    batch = raw_batch(section, count=2, lod=2)
    core.validate_batches(batch)  # lenient: increasing and <= lod
    batch = raw_batch(section, count=2, lod=1)
    e = expect_error(batch, lib.PL_E_RECORD, strict=True, record_index=1,
                     error_position=61 + len(record(0)))
    assert "offset delta 2 is not its index" in e.message


def test_lenient_offset_deltas_increase_and_stay_within_lod():
    r0 = record(0)
    expect_error(raw_batch(r0 + record(0), count=2, lod=3), lib.PL_E_RECORD, record_index=1,
                 error_position=61 + len(r0))
    expect_error(raw_batch(r0 + record(4), count=2, lod=3), lib.PL_E_RECORD, record_index=1)
    expect_error(raw_batch(record(-1), count=1, lod=3), lib.PL_E_RECORD, record_index=0)


def test_header_count_rules():
    expect_error(raw_batch(record(0), count=1, lod=-1), lib.PL_E_COUNT, error_position=57)
    expect_error(raw_batch(b"", count=-1, lod=0), lib.PL_E_COUNT, error_position=57)
    expect_error(raw_batch(record(0), count=2, lod=0), lib.PL_E_COUNT, error_position=57)
    # an empty (fully compacted) batch is fine when lenient
    assert core.validate_batches(raw_batch(b"", count=0, lod=4))[0].record_count == 0


def test_record_count_against_records_present():
    two = record(0) + record(1)
    e = expect_error(raw_batch(two, count=3, lod=2), lib.PL_E_COUNT,
                     error_position=61 + len(two))
    assert "records end after 2 of recordCount 3" in e.message
    e = expect_error(raw_batch(two, count=1, lod=1), lib.PL_E_COUNT,
                     error_position=61 + len(record(0)))
    assert "after the last of 1 records" in e.message


# ---- stamping ------------------------------------------------------------------------------

def test_stamp_assigns_offsets_and_epoch_and_keeps_crc():
    batches = [build_batch(sample_records(n)) for n in (3, 1, 7)]
    buf = bytearray(b"".join(batches))
    assert core.stamp_batches(buf, 1000, 12) == 1011
    infos = core.validate_batches(buf, strict=True)  # CRC still right
    assert [(i.base_offset, i.partition_leader_epoch) for i in infos] == \
        [(1000, 12), (1003, 12), (1004, 12)]
    assert [r.offset for r in iter_records(buf)] == list(range(1000, 1011))


def test_stamp_refuses_partial_buffers_without_writing():
    whole = build_batch(sample_records(2))
    buf = bytearray(whole + whole[:30])
    before = bytes(buf)
    with pytest.raises(core.TruncatedBatchError) as info:
        core.stamp_batches(buf, 5, 1)
    assert info.value.batch_index == 1 and info.value.batch_position == len(whole)
    assert bytes(buf) == before
    with pytest.raises(core.CoreArgumentError):
        core.stamp_batches(bytearray(whole), -1, 0)


def test_stamp_refuses_offsets_past_int64():
    buf = bytearray(build_batch(sample_records(3)))
    with pytest.raises(core.OffsetError):
        core.stamp_batches(buf, 2**63 - 2, 0)
    assert core.stamp_batches(buf, 2**63 - 4, 0) == 2**63 - 1


# ---- truncation and lengths --------------------------------------------------------------------

def test_every_prefix_of_two_batches():
    first = build_batch(sample_records(3))
    second = build_batch(sample_records(4), base_offset=3)
    buf = first + second
    for cut in range(len(buf) + 1):
        prefix = buf[:cut]
        if cut in (0, len(first), len(buf)):
            assert len(core.validate_batches(prefix)) == [0, len(first), len(buf)].index(cut)
            continue
        index, start = (0, 0) if cut < len(first) else (1, len(first))
        e = expect_error(prefix, lib.PL_E_TRUNCATED, batch_index=index, batch_position=start,
                         error_position=cut)
        assert isinstance(e, core.TruncatedBatchError)
        good, error = core.scan_batches(prefix)
        assert len(good) == index and error.status == lib.PL_E_TRUNCATED


@pytest.mark.parametrize("length,status", [
    (-1, lib.PL_E_LENGTH), (-(2**31), lib.PL_E_LENGTH), (0, lib.PL_E_LENGTH),
    (48, lib.PL_E_LENGTH), (2**31 - 1, lib.PL_E_LENGTH), (2**31 - 12, lib.PL_E_LENGTH),
    (2**31 - 13, lib.PL_E_TRUNCATED), (10**6, lib.PL_E_TRUNCATED)])
def test_bad_batch_length(length, status):
    first = build_batch(sample_records(2))
    second = bytearray(build_batch(sample_records(2)))
    struct.pack_into(">i", second, 8, length)
    e = expect_error(first + bytes(second), status, batch_index=1, batch_position=len(first),
                     error_position=len(first) + (8 if status == lib.PL_E_LENGTH
                                                  else len(second)))
    good, error = core.scan_batches(first + bytes(second))
    assert len(good) == 1 and good.end == len(first) and error.status == e.status


def test_batch_length_one_short_is_a_crc_error_then_a_torn_tail():
    batch = bytearray(build_batch(sample_records(2)))
    struct.pack_into(">i", batch, 8, len(batch) - 13)
    expect_error(bytes(batch), lib.PL_E_CRC, error_position=17)
    # without the CRC the records walk notices, at the record that now runs past the end
    e = expect_error(bytes(batch), lib.PL_E_LENGTH, check_crc=False, record_index=1)
    assert "runs past the records" in e.message


@pytest.mark.parametrize("magic", [0, 1, 3, -1])
def test_wrong_magic(magic):
    batch = bytearray(build_batch(sample_records(2)))
    batch[16] = magic & 0xFF
    e = expect_error(bytes(batch), lib.PL_E_MAGIC, error_position=16)
    assert f"magic {magic}, expected 2" in e.message
    # reported as wrong magic as soon as the byte is there, even if the rest is missing
    expect_error(bytes(batch[:17]), lib.PL_E_MAGIC, error_position=16)
    expect_error(bytes(batch[:16]), lib.PL_E_TRUNCATED, error_position=16)


# ---- CRC -----------------------------------------------------------------------------------------

def test_every_flipped_byte_under_the_crc_is_caught():
    batch = build_batch([(b"k", b"value", [("h", b"x")], 5)])
    for pos in list(range(17, len(batch))):
        damaged = bytearray(batch)
        damaged[pos] ^= 0x20
        e = expect_error(bytes(damaged), lib.PL_E_CRC, error_position=17)
        stored = int.from_bytes(damaged[17:21], "big")
        computed = core.crc32c(damaged[21:])
        assert e.message == (f"batch 0 at byte 0: crc mismatch (stored 0x{stored:08x}, "
                             f"computed 0x{computed:08x})")


def test_bytes_outside_the_crc_are_not_checked_by_it():
    batch = bytearray(build_batch(sample_records(2)))
    batch[0:8] = b"\xff" * 8    # baseOffset
    batch[12:16] = b"\x01" * 4  # partitionLeaderEpoch
    info = core.validate_batches(bytes(batch))[0]
    assert info.base_offset == -1 and info.partition_leader_epoch == 0x01010101


def test_crc_error_position_in_a_later_batch():
    first = build_batch(sample_records(2))
    second = bytearray(build_batch(sample_records(3)))
    second[-2] ^= 1  # a byte of the last value
    e = expect_error(first + bytes(second), lib.PL_E_CRC, batch_index=1,
                     batch_position=len(first), error_position=len(first) + 17)
    assert e.message.startswith(f"batch 1 at byte {len(first)}: crc mismatch (stored 0x")
    assert core.validate_batches(first + bytes(second), check_crc=False)


# ---- records: varints, lengths, headers ------------------------------------------------------

def test_overlong_but_fitting_varints_are_accepted():
    body = b"\x00" + b"\x80\x00" + b"\x80\x80\x00" + b"\x82\x00" + b"k" + varint(-1) + b"\x00"
    batch = raw_batch(varint(len(body)) + body, count=1, lod=0)
    (rec,) = decode_batch(batch)
    assert (rec.offset, rec.timestamp, rec.key, rec.value) == (0, 1000, b"k", None)


@pytest.mark.parametrize("name,section,status,where", [
    # length varint: 6 continuation bytes (more than 5)
    ("length too long", b"\xff" * 6 + b"\x00" * 8, lib.PL_E_RECORD, 0),
    # 5-byte varint whose last byte carries bits past 32
    ("length overflow", b"\xff\xff\xff\xff\x1f" + b"\x00" * 8, lib.PL_E_RECORD, 0),
    # a record length running past the section
    ("length past end", varint(50) + record_body(), lib.PL_E_LENGTH, 0),
    ("negative length", varint(-3) + record_body(), lib.PL_E_LENGTH, 0),
    ("zero length", varint(0), lib.PL_E_RECORD, 0),
    # timestamp delta varlong of 11 bytes
    ("ts varlong too long", None, lib.PL_E_RECORD, 2),
    # varint cut by the end of its record
    ("varint past record", varint(3) + b"\x00\x00\x80", lib.PL_E_RECORD, 3),
    ("key past record", None, lib.PL_E_LENGTH, 4),
    ("key length -2", None, lib.PL_E_LENGTH, 4),
    ("null header key", None, lib.PL_E_RECORD, 9),
    ("negative header count", None, lib.PL_E_RECORD, 8),
    ("stray bytes", None, lib.PL_E_RECORD, 9),
])
def test_malformed_records(name, section, status, where):
    if section is None:
        head = b"\x00" + varint(0) + varint(0)  # attributes, ts delta, offset delta
        body = {
            "ts varlong too long": b"\x00" + b"\xff" * 10 + b"\x01" + b"\x00" * 5,
            "key past record": head + varint(40) + b"kk",
            "key length -2": head + varint(-2) + field(b"v") + varint(0),
            "null header key": head + field(b"k") + field(b"v") + varint(1) + varint(-1)
            + field(b"x"),
            "negative header count": head + field(b"k") + field(b"v") + varint(-1),
            "stray bytes": head + field(b"k") + field(b"v") + varint(0) + b"\x00",
        }[name]
        section = varint(len(body)) + body
    # a good record first, so positions are checked past the first one
    good = record(0)
    batch = raw_batch(good + section, count=2, lod=1)
    e = expect_error(batch, status, record_index=1, error_position=61 + len(good) + where)
    assert f"record 1 at byte {61 + len(good) + where}: " in e.message
    # the same section through pl_records_validate: positions relative to the section
    with pytest.raises(core.CoreError) as info:
        core.validate_records(good + section, 2, 1)
    assert (info.value.status, info.value.error_position, info.value.batch_index) == \
        (status, len(good) + where, -1)
    with pytest.raises(core.CoreError) as info:
        core.decode_records(good + section, 2)
    assert (info.value.status, info.value.error_position) == (status, len(good) + where)


def test_unknown_codec_is_refused():
    batch = raw_batch(record(0), count=1, lod=0, attributes=5)
    e = expect_error(batch, lib.PL_E_RECORD, error_position=21)
    assert "unknown compression codec 5" in e.message


# ---- hostile input (hypothesis) ------------------------------------------------------------

ANY_STATUS = {lib.PL_E_TRUNCATED, lib.PL_E_LENGTH, lib.PL_E_MAGIC, lib.PL_E_CRC,
              lib.PL_E_RECORD, lib.PL_E_COUNT}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_random_bytes_never_crash(data, strict, check_crc):
    good, error = core.scan_batches(data, strict=strict, check_crc=check_crc)
    if error is None:
        assert good.end == len(data)
    else:
        assert error.status in ANY_STATUS
        assert 0 <= error.batch_position <= len(data) and error.batch_position == good.end
    try:
        core.decode_records(data, len(data) % 9)
    except core.CorruptBatchError as e:
        assert 0 <= e.error_position <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_batches_never_crash(data):
    buf = bytearray(build_batch(sample_records(6)) + build_batch(sample_records(2)))
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # fix the CRC so the record walker sees the damage
        length = int.from_bytes(buf[8:12], "big", signed=True)
        if 61 <= length + 12 <= len(buf):
            buf[17:21] = core.crc32c(buf[21:length + 12]).to_bytes(4, "big")
    good, error = core.scan_batches(bytes(buf), strict=data.draw(st.booleans()))
    assert error is None or error.status in ANY_STATUS
    for info in good:  # the attributes may now claim a codec: corrupt, never a crash
        try:
            decode_batch(bytes(buf[info.position:info.end]))
        except core.CorruptBatchError as e:
            assert e.status in ANY_STATUS


# ---- PL_E_CAPACITY continuation ----------------------------------------------------------

def many_small_batches(n):
    return b"".join(build_batch([(None, b"%d" % i, (), i)], base_offset=i) for i in range(n))


def test_capacity_continuation_in_c():
    buf = many_small_batches(50)
    status, n, infos, err = validate_raw(buf, cap=7)
    assert (status, n, err.status) == (lib.PL_E_CAPACITY, 7, lib.PL_E_CAPACITY)
    start = infos[6].position + infos[6].size
    assert err.error_position == start
    positions = [infos[i].position for i in range(7)]
    while status == lib.PL_E_CAPACITY:  # continue on the rest, as the header documents
        rest = buf[start:]
        status, n, infos, err = validate_raw(rest, cap=7)
        positions += [start + infos[i].position for i in range(n)]
        if status == lib.PL_E_CAPACITY:
            start += infos[6].position + infos[6].size
    assert status == lib.PL_OK
    sizes = [len(build_batch([(None, b"%d" % i, (), i)])) for i in range(50)]
    assert positions == [sum(sizes[:i]) for i in range(50)]


def test_capacity_exact_fit_is_ok_and_zero_capacity_reports():
    buf = many_small_batches(7)
    assert validate_raw(buf, cap=7)[:2] == (lib.PL_OK, 7)
    status, n, _, err = validate_raw(buf, cap=0)
    assert (status, n, err.error_position) == (lib.PL_E_CAPACITY, 0, 0)


def test_resume_continues_into_a_larger_array():
    buf = many_small_batches(5)
    infos = ffi.new("pl_batch_info[]", 8)
    n = ffi.new("size_t *")
    err = ffi.new("pl_error *")
    assert lib.pl_batches_validate(buf, len(buf), 0, infos, 2, n, err) == lib.PL_E_CAPACITY
    assert n[0] == 2
    assert lib.pl_batches_resume(buf, len(buf), 0, infos, 8, n, err) == lib.PL_OK
    assert n[0] == 5 and [infos[i].base_offset for i in range(5)] == [0, 1, 2, 3, 4]
    assert infos[4].position + infos[4].size == len(buf)
    damaged = bytearray(buf)
    damaged[-1] ^= 1
    n[0] = 2
    status = lib.pl_batches_resume(bytes(damaged), len(buf), 0, infos, 8, n, err)
    assert (status, err.batch_index, n[0]) == (lib.PL_E_CRC, 4, 4)
    assert err.batch_position == infos[3].position + infos[3].size
    assert ffi.string(err.message).startswith(b"batch 4 at byte ")
    n[0] = 9  # more than the capacity: refused
    assert lib.pl_batches_resume(buf, len(buf), 0, infos, 8, n, err) == lib.PL_E_ARG


def test_validate_at_keeps_absolute_positions():
    buf = many_small_batches(5)
    first = core.validate_batches(buf)[0]
    infos = ffi.new("pl_batch_info[]", 8)
    n = ffi.new("size_t *")
    err = ffi.new("pl_error *")
    assert lib.pl_batches_validate_at(buf, len(buf), first.size, 0, infos, 8, n, err) == 0
    assert n[0] == 4 and infos[0].position == first.size and infos[0].base_offset == 1
    assert lib.pl_batches_validate_at(buf, len(buf), first.size, 0, infos, 2, n, err) == \
        lib.PL_E_CAPACITY
    assert err.error_position == infos[1].position + infos[1].size
    damaged = bytearray(buf)
    damaged[-1] ^= 1
    status = lib.pl_batches_validate_at(bytes(damaged), len(buf), first.size, 0, infos, 8, n,
                                        err)
    # the index counts from the starting batch, positions from the buffer's start
    assert (status, err.batch_index, n[0]) == (lib.PL_E_CRC, 3, 3)
    assert err.batch_position == infos[2].position + infos[2].size
    assert lib.pl_batches_validate_at(buf, len(buf), len(buf) + 1, 0, infos, 8, n, err) == \
        lib.PL_E_ARG


def test_python_validate_loops_over_capacity():
    buf = many_small_batches(1500)
    infos = core.validate_batches(buf, strict=True)
    assert len(infos) == 1500 and infos.end == len(buf) and infos.next_offset == 1500
    assert [infos[i].base_offset for i in (0, 1, 777, -1)] == [0, 1, 777, 1499]
    assert infos.record_count == 1500
    assert [r.value for r in iter_records(buf)][:3] == [b"0", b"1", b"2"]
    damaged = bytearray(buf)
    damaged[-1] ^= 1
    good, error = core.scan_batches(bytes(damaged))
    assert len(good) == 1499 and error.batch_index == 1499 and error.status == lib.PL_E_CRC


# ---- header-only helpers -------------------------------------------------------------------

def test_fit_batches_finds_the_last_whole_batch():
    first = build_batch(sample_records(3))
    second = build_batch(sample_records(5))
    buf = first + second
    assert core.fit_batches(buf) == (len(buf), 2, 0)
    assert core.fit_batches(buf[:len(first) + 20]) == (len(first), 1, len(second))
    assert core.fit_batches(buf[:len(first) + 5]) == (len(first), 1, -1)
    assert core.fit_batches(buf[:10]) == (0, 0, -1)
    bad = bytearray(buf)
    struct.pack_into(">i", bad, len(first) + 8, 3)
    with pytest.raises(core.CorruptBatchError) as info:
        core.fit_batches(bytes(bad))
    assert info.value.batch_position == len(first)


def test_peek_batch_reads_a_header_without_its_body():
    batch = build_batch(sample_records(4), base_offset=9)
    info = core.peek_batch(batch[:61])
    assert (info.base_offset, info.size, info.record_count) == (9, len(batch), 4)
    with pytest.raises(core.TruncatedBatchError):
        core.peek_batch(batch[:60])
    with pytest.raises(core.CorruptBatchError):
        core.peek_batch(b"\x00" * 61)


# ---- decoding ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", list(Compression))
def test_decode_nulls_empties_headers_and_backward_timestamps(codec):
    entries = [
        (None, None, [], 1000),
        (b"", b"", [], 990),                        # timestamp goes backwards
        (b"k", None, [("n", None), ("e", b"")], 2000),
        (None, b"v", [("", b"empty name"), ("dup", b"1"), ("dup", b"2")], -5),
        (bytes(range(256)), bytes(range(255, -1, -1)), [("ключ", b"\xff\x00")], 2**40),
    ]
    batch = build_batch(entries, compression=codec, base_offset=100)
    info = core.validate_batches(batch, strict=True)[0]
    assert (info.first_timestamp, info.max_timestamp) == (1000, 2**40)
    got = decode_batch(batch)
    assert got == [Record(100 + i, ts, k, v, tuple(h)) for i, (k, v, h, ts) in enumerate(entries)]


def test_header_keys_that_are_not_utf8_round_trip():
    b = BatchBuilder()
    b.append(b"v", headers=[(b"\xff\xfebin", b"x")], timestamp=1)
    (rec,) = decode_batch(b.build())
    name = rec.headers[0][0]
    assert name.encode("utf-8", "surrogateescape") == b"\xff\xfebin"
    b2 = BatchBuilder()
    b2.append(b"v", headers=[(name, b"x")], timestamp=1)
    assert b2.build() == b.build()


def test_log_append_time_uses_max_timestamp():
    b = BatchBuilder(timestamp_type=1)
    for ts in (5, 50, 7):
        b.append(b"v", timestamp=ts)
    assert [r.timestamp for r in decode_batch(b.build())] == [50, 50, 50]


def test_decode_batch_wants_exactly_one_batch():
    batch = build_batch(sample_records(2))
    with pytest.raises(core.CorruptBatchError, match="expected one batch, found 2"):
        decode_batch(batch + batch)
    damaged = bytearray(batch)
    damaged[-1] ^= 1
    with pytest.raises(core.CorruptBatchError, match="crc mismatch"):
        decode_batch(bytes(damaged))
    assert len(decode_batch(bytes(damaged), verify_crc=False)) == 2


def test_iter_records_stops_at_a_torn_tail_and_raises_on_damage():
    first = build_batch(sample_records(3))
    second = build_batch(sample_records(2), base_offset=3)
    assert [r.offset for r in iter_records(first + second[:-1])] == [0, 1, 2]
    damaged = bytearray(second)
    damaged[16] = 1
    seen = []
    with pytest.raises(core.CorruptBatchError):
        for r in iter_records(first + bytes(damaged)):
            seen.append(r.offset)
    assert seen == [0, 1, 2]


def test_decode_records_capacity_growth():
    # more headers than the scratch starts with: decode grows it and retries
    headers = [("h%d" % i, b"%d" % i) for i in range(300)]
    batch = build_batch([(None, b"v", headers, 1)] * 3)
    got = decode_batch(batch)
    assert all(len(r.headers) == 300 for r in got) and got[2].headers[299] == ("h299", b"299")


# ---- validate_for_append on compressed records ---------------------------------------------------

def compressed_batch(section: bytes, codec: int, count: int, lod: int) -> bytes:
    return raw_batch(codecs.compress(codec, section), count=count, lod=lod, attributes=codec)


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_validate_for_append_walks_compressed_records(codec):
    good = build_batch(sample_records(3))
    bad = compressed_batch(record(0) + record(1), codec, count=3, lod=2)
    core.validate_batches(good + bad, strict=True)  # the header alone looks fine
    with pytest.raises(core.CorruptBatchError) as info:
        validate_for_append(good + bad)
    e = info.value
    assert (e.status, e.batch_index, e.batch_position, e.error_position) == \
        (lib.PL_E_COUNT, 1, len(good), len(good) + 61)
    assert e.message.startswith(f"batch 1 at byte {len(good)}: ")
    # strict vs lenient applies inside compressed batches too
    compacted = compressed_batch(record(0) + record(3), codec, count=2, lod=3)
    assert len(validate_for_append(compacted, strict=False)) == 1
    with pytest.raises(core.CorruptBatchError):
        validate_for_append(compacted, strict=True)


def test_validate_for_append_refuses_undecompressable_and_oversized():
    garbage = raw_batch(b"not gzip at all", count=1, lod=0, attributes=1)
    with pytest.raises(core.CorruptBatchError, match="batch 0 at byte 0: gzip"):
        validate_for_append(garbage)
    big = build_batch([(None, bytes(100_000), (), 1)], compression=Compression.ZSTD)
    assert len(big) < 1000
    with pytest.raises(core.CorruptBatchError, match="exceeds the bound"):
        validate_for_append(big, max_decompressed=50_000)
    assert len(validate_for_append(big, max_decompressed=200_000)) == 1


# ---- the builder -----------------------------------------------------------------------------

def test_builder_fills_up_to_max_batch_bytes():
    b = BatchBuilder(max_batch_bytes=1000)
    n = 0
    while b.append(b"x" * 90, timestamp=1):
        n += 1
        assert b.size_estimate <= 1000
    assert n == len(b) == 9  # 61 + 9 * 100 bytes = 961; a tenth would pass 1000
    batch = b.build()
    assert len(batch) == b.size_estimate and len(decode_batch(batch)) == 9
    b.reset(base_offset=9)
    assert len(b) == 0 and b.append(b"y", timestamp=2)
    assert [r.offset for r in decode_batch(b.build())] == [9]


def test_builder_takes_one_oversized_record_alone():
    b = BatchBuilder(max_batch_bytes=200)
    assert b.append(b"z" * 5000, timestamp=1)
    assert not b.append(b"a", timestamp=1)
    assert len(b) == 1
    (rec,) = decode_batch(b.build())
    assert rec.value == b"z" * 5000


def test_builder_grows_past_its_initial_buffer():
    b = BatchBuilder(max_batch_bytes=10 << 20)
    values = [bytes([i % 256]) * (i * 997 % 70000) for i in range(60)]
    for v in values:
        assert b.append(v, key=memoryview(v)[:3], timestamp=1)
    assert [r.value for r in decode_batch(b.build())] == values


def test_builder_default_timestamp_is_now():
    import time
    before = time.time_ns() // 1_000_000
    b = BatchBuilder()
    b.append(b"v")
    after = time.time_ns() // 1_000_000
    assert before <= decode_batch(b.build())[0].timestamp <= after


def test_builder_refuses_bad_arguments():
    with pytest.raises(ValueError):
        BatchBuilder().build()
    with pytest.raises(ValueError):
        BatchBuilder(timestamp_type=2)
    with pytest.raises(ValueError):
        BatchBuilder(max_batch_bytes=61)
    with pytest.raises(ValueError):
        BatchBuilder(compression=9)

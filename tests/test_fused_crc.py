"""The Produce-path fast validation: CRC-32C folding (csrc/crc32c_internal.h, csrc/crc32c.c)
and the record walk that runs in the same pass as a batch's CRC (pl_crc_with_records in
csrc/records.c), against the portable CRC, the `crc32c` package and an independent reference
walker written here.

Every test runs twice: on the path the CPU offers (the fused pass, on CPUs with AVX-512 and
VPCLMULQDQ, for uncompressed batches of 149 bytes or more) and forced onto the portable CRC
(which validates with a separate CRC and walk). Batches are made here, byte by byte:
  1. valid batches of every size from 68 to 5000 bytes (strict and lenient offset deltas),
     at every alignment, validate;
  2. any flipped bit under the CRC, in valid batches or in batches of garbage records (where
     the walk gives up at once and the CRC must still be finished), is a CRC error;
  3. a changed byte anywhere in the records, with the CRC made right again, gives the same
     verdict on both paths, and accepts exactly what the reference walker accepts;
  4. the same for arbitrary records (hypothesis): long varints, nulls, headers, big values;
  5. under AddressSanitizer (tests/c/fast_walk_bounds.c), every byte near the end of many
     batches changed in turn, from heap blocks of exactly the batch's size: the reads without
     bounds never leave the buffer, and both paths agree.
"""
import functools
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylog import core
from pylog._core import lib

ROOT = Path(__file__).resolve().parents[1]
HEADER = struct.Struct(">qiibIhiqqqhii")  # the 61-byte batch header
HEADER_SIZE = 61
CRC_START = 21   # the CRC covers attributes .. end
CRC_FIELD = 17


@pytest.fixture(params=["detected", "portable"])
def crc_path(request):
    core.force_portable_crc32c(request.param == "portable")
    yield request.param
    core.force_portable_crc32c(False)


# ---- an independent encoder -----------------------------------------------------------------

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


def record(offset_delta: int, key=None, value=b"", headers=(), ts_delta: int = 0) -> bytes:
    body = b"\x00" + varint(ts_delta) + varint(offset_delta) + field(key) + field(value)
    body += varint(len(headers)) + b"".join(field(k) + field(v) for k, v in headers)
    return varint(len(body)) + body


def batch(section: bytes, count: int, lod: int) -> bytearray:
    """A batch around a records section, its CRC from the portable implementation."""
    buf = bytearray(HEADER.pack(0, HEADER_SIZE - 12 + len(section), 0, 2, 0, 0, lod,
                                1000, 1000, -1, -1, -1, count)) + section
    fix_crc(buf)
    return buf


def fix_crc(buf: bytearray) -> None:
    struct.pack_into(">I", buf, CRC_FIELD, core.crc32c_portable(bytes(buf[CRC_START:])))


# ---- an independent reference walker ---------------------------------------------------------

def ref_varint(buf, pos: int, end: int, max_bytes: int):
    """(zigzag-decoded value, next position), or None: runs past end, too long, or its last
    allowed byte carries more than the bits that fit (4 for 32-bit, 1 for 64-bit)."""
    value = 0
    for i in range(max_bytes):
        if pos >= end:
            return None
        b = buf[pos]
        pos += 1
        if i == max_bytes - 1 and b > (0x0F if max_bytes == 5 else 0x01):
            return None
        value |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return (value >> 1) ^ -(value & 1), pos
    return None


def ref_field(buf, pos: int, end: int, nullable: bool):
    read = ref_varint(buf, pos, end, 5)
    if read is None:
        return None
    n, pos = read
    if n == -1 and nullable:
        return pos
    if n < 0 or n > end - pos:
        return None
    return pos + n


def ref_records_ok(sec, count: int, lod: int, strict: bool) -> bool:
    """Kafka's record rules, as the detailed walker of csrc/records.c applies them."""
    if lod < 0 or count < 0 or (count != lod + 1 if strict else count > lod + 1):
        return False
    pos, previous = 0, -1
    for index in range(count):
        read = ref_varint(sec, pos, len(sec), 5)
        if read is None or read[0] <= 0 or read[0] > len(sec) - read[1]:
            return False
        end = read[1] + read[0]
        pos = read[1] + 1  # attributes
        read = ref_varint(sec, pos, end, 10)  # timestamp delta
        if read is None:
            return False
        read = ref_varint(sec, read[1], end, 5)
        if read is None:
            return False
        delta, pos = read
        if (delta != index) if strict else (delta <= previous or delta > lod):
            return False
        previous = delta
        for nullable in (True, True):  # key, value
            pos = ref_field(sec, pos, end, nullable)
            if pos is None:
                return False
        read = ref_varint(sec, pos, end, 5)
        if read is None or read[0] < 0:
            return False
        header_count, pos = read
        for _ in range(header_count):
            pos = ref_field(sec, pos, end, False)
            if pos is None:
                return False
            pos = ref_field(sec, pos, end, True)
            if pos is None:
                return False
        if pos != end:
            return False
    return pos == len(sec)


# ---- batches of every size ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def sized_record(index: int, total: int, gap: int) -> bytes:
    """Record `index` (offset delta index * gap) of exactly `total` bytes, 7 <= total <= 60,
    with a value of bytes that depend on both."""
    base = len(record(index * gap))
    value = bytes((index * 31 + total * 7 + i) & 0xFF for i in range(total - base))
    out = record(index * gap, value=value)
    assert len(out) == total
    return out


def batch_of_size(size: int, strict: bool) -> bytearray:
    """A valid batch of exactly `size` bytes (68 <= size): records of 7..60 bytes, offset
    deltas 0..n-1 (strict) or 0, 2, 4, ... (lenient, as a compacted log has them)."""
    rest = size - HEADER_SIZE
    n = -(-rest // 60)
    part, extra = divmod(rest, n)
    gap = 1 if strict else 2
    section = b"".join(sized_record(i, part + (i < extra), gap) for i in range(n))
    return batch(section, n, (n - 1) * gap)


SIZES = range(68, 5001)


@pytest.fixture(scope="module", params=[True, False], ids=["strict", "lenient"])
def every_size(request):
    strict = request.param
    return strict, bytes(b"".join(batch_of_size(size, strict) for size in SIZES))


def test_every_size_validates_at_every_alignment(crc_path, every_size):
    strict, data = every_size
    offsets = range(64) if crc_path == "detected" else (0, 1, 3, 8, 61)
    for offset in offsets:
        buf = bytearray(offset) + data
        infos = core.validate_batches(memoryview(buf)[offset:], strict=strict)
        assert len(infos) == len(SIZES)
        assert [info.size for info in infos[:3]] == [68, 69, 70]
        assert infos[len(infos) - 1].size == 5000


def test_the_empty_batch_is_valid_when_lenient(crc_path):
    infos = core.validate_batches(batch(b"", 0, 0))
    assert len(infos) == 1 and infos[0].record_count == 0


# ---- the CRC is always checked ------------------------------------------------------------

CRC_SIZES = [68, 148, 149, 150, 189, 190, 200, 255, 256, 257, 276, 277, 300, 383, 384, 385,
             404, 405, 511, 512, 513, 640, 1000, 2048, 4999]


def assert_crc_error(buf) -> None:
    _, error = core.scan_batches(buf, strict=True)
    assert error is not None and error.status == lib.PL_E_CRC
    assert error.error_position == CRC_FIELD


@pytest.mark.parametrize("size", CRC_SIZES)
def test_a_flipped_bit_anywhere_under_the_crc_is_caught(crc_path, size):
    good = batch_of_size(size, strict=True)
    core.validate_batches(good, strict=True)
    for position in range(CRC_FIELD, size):
        bad = bytearray(good)
        bad[position] ^= 1 << (position % 8)
        assert_crc_error(bad)


def test_garbage_records_of_every_size_check_the_crc_first(crc_path):
    """Records of random bytes: the walk gives up early, yet the CRC must be whole; with
    a right CRC the verdict is never a CRC error and always the reference's; with one bit
    flipped it always is a CRC error. Sizes 61..5000, so also those no valid batch has."""
    rng = random.Random(7)
    for size in range(HEADER_SIZE, 5001):
        count = rng.randrange(0, 200)
        buf = batch(rng.randbytes(size - HEADER_SIZE), count, count - 1)
        _, error = core.scan_batches(buf, strict=True)
        ok = ref_records_ok(buf[HEADER_SIZE:], count, count - 1, True)
        assert (error is None) == ok, size
        assert ok or error.status != lib.PL_E_CRC
        position = rng.randrange(CRC_START, size)
        buf[position] ^= 1 << rng.randrange(8)
        assert_crc_error(buf)


# ---- the fast walk accepts exactly what the rules accept -------------------------------------

def verdict(buf, strict: bool):
    """Everything validation says about buf, on one CRC path."""
    infos, error = core.scan_batches(buf, strict=strict)
    if error is None:
        return ("ok", len(infos))
    return (error.status, error.batch_position, error.error_position, error.record_index,
            error.message)


def verdicts_agree(buf, strict: bool) -> None:
    """Both CRC paths say the same, and accept exactly what the reference accepts."""
    core.force_portable_crc32c(True)
    try:
        portable = verdict(buf, strict)
    finally:
        core.force_portable_crc32c(False)
    detected = verdict(buf, strict)
    assert detected == portable
    count, lod = struct.unpack_from(">i", buf, 57)[0], struct.unpack_from(">i", buf, 23)[0]
    assert (detected[0] == "ok") == ref_records_ok(buf[HEADER_SIZE:], count, lod, strict)


def varied_section(n: int, rng: random.Random) -> bytes:
    """n records of every shape: null and empty keys, values around the varint boundaries,
    headers with null values, timestamps that need long varints."""
    out = []
    for i in range(n):
        key = rng.choice([None, b"", b"k", bytes(70)])
        value = rng.choice([None, b"", b"v" * 63, b"v" * 64, rng.randbytes(rng.randrange(200))])
        headers = rng.choice([(), (("h", None),), (("", b"z"),),
                              (("a", b"x"), ("bb", b"y" * 70))])
        headers = tuple((k.encode(), v) for k, v in headers)
        ts = rng.choice([0, 1, -1, 8191, 1 << 20, -(1 << 40), (1 << 62)])
        out.append(record(i, key, value, headers, ts))
    return b"".join(out)


MUTATED = [  # (record count, seed): short batches (all in the bounded tail) and long ones
    (1, 1), (3, 2), (12, 3), (25, 4),
]


@pytest.mark.parametrize("count,seed", MUTATED)
def test_any_changed_record_byte_is_judged_as_the_rules_say(count, seed):
    rng = random.Random(seed)
    good = batch(varied_section(count, rng), count, count - 1)
    verdicts_agree(good, strict=True)
    for position in range(HEADER_SIZE, len(good)):
        for value in {good[position] ^ 0x01, good[position] ^ 0x80, 0x00, 0x01, 0xFF, 0x7F}:
            bad = bytearray(good)
            bad[position] = value
            fix_crc(bad)
            verdicts_agree(bad, strict=position % 2 == 0)


@pytest.mark.parametrize("size", CRC_SIZES)
def test_one_record_more_or_fewer_than_counted_is_caught(size):
    good = batch_of_size(size, strict=True)
    count = struct.unpack_from(">i", good, 57)[0]
    for claimed in (count - 1, count + 1):
        bad = bytearray(good)
        struct.pack_into(">i", bad, 57, claimed)
        struct.pack_into(">i", bad, 23, claimed - 1)
        fix_crc(bad)
        verdicts_agree(bad, strict=True)
        verdicts_agree(bad, strict=False)


def test_records_of_100_bytes_as_producers_send_them():
    """The benchmark's shape (16-byte keys, 100-byte values, deltas growing past one varint
    byte) with each record's offset delta in turn made wrong, then its length."""
    n = 150
    section = b"".join(record(i, b"key-%012d" % i, bytes(100), ts_delta=i) for i in range(n))
    good = batch(section, n, n - 1)
    verdicts_agree(good, strict=True)
    starts, pos = [], 0
    for i in range(n):
        starts.append(pos)
        pos += len(record(i, b"key-%012d" % i, bytes(100), ts_delta=i))
    for i in range(n):
        for at, flip in ((starts[i] + 2 + 1 + len(varint(i)), 0x02),  # the offset delta
                         (starts[i], 0x02), (starts[i] + 1, 0x01)):   # the length
            bad = bytearray(good)
            bad[HEADER_SIZE + at] ^= flip
            fix_crc(bad)
            verdicts_agree(bad, strict=True)


records_strategy = st.lists(
    st.tuples(st.none() | st.binary(max_size=80),
              st.none() | st.binary(max_size=300) | st.sampled_from([b"x" * 8191, b"x" * 8192]),
              st.lists(st.tuples(st.binary(max_size=8), st.none() | st.binary(max_size=20)),
                       max_size=3),
              st.integers(-(2**62), 2**62)),
    min_size=1, max_size=30)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records_strategy, st.data())
def test_arbitrary_records_validate_and_any_mutation_is_judged_alike(records, data):
    section = b"".join(record(i, k, v, tuple(h), ts) for i, (k, v, h, ts) in enumerate(records))
    good = batch(section, len(records), len(records) - 1)
    verdicts_agree(good, strict=True)
    verdicts_agree(good, strict=False)
    bad = bytearray(good)
    position = data.draw(st.integers(HEADER_SIZE, len(good) - 1))
    bad[position] = data.draw(st.integers(0, 255))
    fix_crc(bad)
    verdicts_agree(bad, strict=data.draw(st.booleans()))


# ---- under the sanitizers ------------------------------------------------------------------

def _compiler():
    for name in ("gcc", "cc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def overlong(value: int, size: int) -> bytes:
    """value as a varint of exactly `size` bytes (overlong encodings that fit are valid)."""
    out = bytearray((value >> (7 * i)) & 0x7F | 0x80 for i in range(size))
    out[-1] &= 0x7F
    return bytes(out)


def overreaching_batch(room: int, fillers: int) -> bytearray:
    """A record that reads as far past its end as the fast walk ever does: length 1 (only
    the attributes byte), then the longest valid timestamp and offset delta, a null key and
    value and one header, all as overlong varints, and a header key that finally fails; it
    ends `room` bytes before the section does (the bytes it reads are cut there)."""
    section = b"".join(record(i, value=bytes(20)) for i in range(fillers))
    reach = (overlong(1, 10) + overlong(2 * fillers, 5) + overlong(1, 5) + overlong(1, 5)
             + overlong(2, 5) + overlong(0, 5))
    tail = (reach + bytes(max(0, room - len(reach))))[:room]
    return batch(section + b"\x02\x00" + tail, fillers + 1, fillers)


def test_reads_stay_inside_the_batch_under_address_sanitizer(tmp_path):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    binary = tmp_path / "fast_walk_bounds"
    sources = [str(ROOT / "tests" / "c" / "fast_walk_bounds.c")]
    sources += sorted(str(p) for p in (ROOT / "csrc").glob("*.c"))
    subprocess.run([cc, "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer", "-std=c11", "-D_GNU_SOURCE",
                    f"-I{ROOT / 'csrc'}", "-o", str(binary), *sources],
                   check=True, capture_output=True, timeout=180)
    rng = random.Random(5)
    seeds = [batch_of_size(size, strict) for size in range(140, 420, 9) for strict in (True, False)]
    seeds += [batch(varied_section(n, rng), n, n - 1) for n in (1, 2, 5, 9, 17)]
    seeds += [overreaching_batch(room, fillers) for room in range(1, 100) for fillers in (0, 5)]
    seeds.append(batch(b"".join(record(i, b"key-%012d" % i, bytes(100), ts_delta=i)
                                for i in range(20)), 20, 19))
    path = tmp_path / "seeds.bin"
    path.write_bytes(b"".join(seeds))
    proc = subprocess.run([str(binary), str(path)], capture_output=True, text=True,
                          timeout=600,
                          env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
                                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "verdicts agreed" in proc.stdout
    assert "runtime error" not in proc.stderr, proc.stderr[-4000:]


# ---- the folding CRC on its own -------------------------------------------------------------

def test_pl_crc32c_agrees_with_the_portable_crc_at_every_length_and_alignment():
    """Lengths 0..2100 (the folding starts at 128 bytes and changes step at 128, 256, 384,
    64 and 16) at alignment length % 64, a seed crc so that chaining is covered, and every
    alignment for lengths around the step boundaries; the `crc32c` package for some."""
    rng = random.Random(11)
    data = rng.randbytes(2100 + 64)
    for length in range(2101):
        offset = length % 64
        chunk = data[offset:offset + length]
        assert core.crc32c(chunk, 0x1234) == core.crc32c_portable(chunk, 0x1234), length
    for length in (127, 128, 129, 255, 256, 383, 384, 385, 447, 448, 511, 512, 1023, 2047):
        for offset in range(64):
            chunk = memoryview(data)[offset:offset + length]
            assert core.crc32c(chunk) == core.crc32c_portable(chunk), (length, offset)
    reference = pytest.importorskip("crc32c")
    for length in (128, 200, 384, 1000, 2100):
        assert core.crc32c(data[:length]) == reference.crc32c(data[:length])

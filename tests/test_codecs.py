"""pylog.codecs: round trips, both snappy shapes, the decompression bound, typed errors."""
import gzip
import json
import os
import zlib
from pathlib import Path

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylog import codecs, core

ALL = [codecs.NONE, codecs.GZIP, codecs.SNAPPY, codecs.LZ4, codecs.ZSTD]
COMPRESSED = ALL[1:]
CLIENT_BATCHES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / \
    "client-batches"


def payloads():
    return [b"", b"a", b"hello world " * 1000, os.urandom(70_000),
            bytes(range(256)) * 300 + os.urandom(5000)]


@pytest.mark.parametrize("codec", ALL)
def test_round_trip(codec):
    for data in payloads():
        packed = codecs.compress(codec, data)
        assert isinstance(packed, bytes)
        assert codecs.decompress(codec, packed, max_size=len(data)) == data
        assert codecs.decompress(codec, memoryview(bytearray(packed))) == data


def test_outputs_are_the_standard_formats():
    data = b"standard formats " * 100
    assert gzip.decompress(codecs.compress(codecs.GZIP, data)) == data
    # raw snappy (no stream identifier, no xerial magic), lz4 frame, zstd frame
    assert bytes(cramjam.snappy.decompress_raw(codecs.compress(codecs.SNAPPY, data))) == data
    assert codecs.compress(codecs.LZ4, data)[:4] == b"\x04\x22\x4d\x18"
    assert codecs.compress(codecs.ZSTD, data)[:4] == b"\x28\xb5\x2f\xfd"


def test_codec_names_and_unknown_codecs():
    assert [codecs.codec_name(c) for c in ALL] == ["none", "gzip", "snappy", "lz4", "zstd"]
    with pytest.raises(ValueError):
        codecs.codec_name(5)
    with pytest.raises(ValueError):
        codecs.compress(6, b"x")
    with pytest.raises(codecs.DecompressionError):
        codecs.decompress(7, b"x")


# ---- snappy: raw and xerial -----------------------------------------------------------------

def xerial(blocks):
    """The xerial framing written by hand: magic, version 1, compat 1, [len, raw block]..."""
    out = b"\x82SNAPPY\x00" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big")
    for block in blocks:
        raw = bytes(cramjam.snappy.compress_raw(block))
        out += len(raw).to_bytes(4, "big") + raw
    return out


def test_xerial_snappy_is_unwrapped():
    blocks = [b"first block " * 100, os.urandom(3000), b"", b"last"]
    assert codecs.decompress(codecs.SNAPPY, xerial(blocks)) == b"".join(blocks)
    assert codecs.decompress(codecs.SNAPPY, xerial([])) == b""
    data = os.urandom(100_000)
    assert codecs.decompress(codecs.SNAPPY, codecs.xerial_wrap(data)) == data


def test_kafka_python_xerial_payloads_decode():
    manifest = CLIENT_BATCHES / "MANIFEST.json"
    if not manifest.exists():
        pytest.skip(f"client batch test data not found at {CLIENT_BATCHES}")
    case = json.loads(manifest.read_text())["cases"]["kafka-python-snappy"]
    seen = 0
    for h in case["batch_headers"]:
        payload = (CLIENT_BATCHES / "kafka-python-snappy" / h["file"]).read_bytes()[61:]
        assert payload[:8] == codecs.XERIAL_MAGIC
        records = codecs.decompress(codecs.SNAPPY, payload)
        core.validate_records(records, h["recordCount"], h["lastOffsetDelta"], strict=True)
        seen += 1
    assert seen == case["batches"]


@pytest.mark.parametrize("damage", ["short header", "short length", "negative length",
                                    "length past end", "bad block"])
def test_damaged_xerial_is_refused(damage):
    good = xerial([b"abc" * 50, b"def" * 50])
    bad = {
        "short header": good[:12],
        "short length": good[:18],
        "negative length": good[:16] + (-5).to_bytes(4, "big", signed=True) + good[20:],
        "length past end": good[:16] + (10_000).to_bytes(4, "big") + good[20:],
        "bad block": good[:20] + b"\xff" * (len(good) - 20),
    }[damage]
    with pytest.raises(codecs.DecompressionError, match="xerial snappy"):
        codecs.decompress(codecs.SNAPPY, bad)


# ---- the size bound --------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ALL)
def test_size_bound_is_exact(codec):
    data = b"0123456789" * 10_000
    packed = codecs.compress(codec, data)
    assert codecs.decompress(codec, packed, max_size=len(data)) == data
    with pytest.raises(codecs.DecompressionError, match="bound"):
        codecs.decompress(codec, packed, max_size=len(data) - 1)


def test_size_bound_counts_every_xerial_block():
    packed = xerial([b"a" * 1000] * 5)
    assert len(codecs.decompress(codecs.SNAPPY, packed, max_size=5000)) == 5000
    with pytest.raises(codecs.DecompressionError, match="bound"):
        codecs.decompress(codecs.SNAPPY, packed, max_size=4999)


def test_outputs_larger_than_the_initial_scratch():
    data = os.urandom(1000) * 3000  # 3 MB: past the 1 MiB scratch, grown on the way
    for codec in COMPRESSED:
        assert codecs.decompress(codec, codecs.compress(codec, data)) == data


def bomb(codec, megabytes):
    """A small payload that expands to `megabytes` MiB of zeros, made chunk by chunk."""
    chunk = bytes(1 << 20)
    if codec == codecs.GZIP:
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join([z.compress(chunk) for _ in range(megabytes)] + [z.flush()])
    compressor = {codecs.LZ4: cramjam.lz4.Compressor,
                  codecs.ZSTD: cramjam.zstd.Compressor}[codec]()
    for _ in range(megabytes):
        compressor.compress(chunk)
    return bytes(compressor.finish())


@pytest.mark.parametrize("codec", [codecs.GZIP, codecs.LZ4, codecs.ZSTD])
def test_decompression_bombs_are_refused(codec):
    packed = bomb(codec, 256)
    assert len(packed) < 2 << 20
    with pytest.raises(codecs.DecompressionError, match="exceeds the bound of 4194304"):
        codecs.decompress(codec, packed, max_size=4 << 20)


def test_snappy_bomb_is_refused_before_decompressing():
    # a raw snappy header declaring 2 GiB: refused from the header alone
    with pytest.raises(codecs.DecompressionError, match="exceeds the bound"):
        codecs.decompress(codecs.SNAPPY, b"\x80\x80\x80\x80\x08" + b"\x00" * 10,
                          max_size=1 << 20)


# ---- garbage -----------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", COMPRESSED)
def test_garbage_raises_the_typed_error(codec):
    for garbage in (b"", b"garbage!", os.urandom(500), b"\x00" * 64):
        with pytest.raises(codecs.DecompressionError) as info:
            codecs.decompress(codec, garbage)
        assert isinstance(info.value, core.CorruptBatchError)
        assert codecs.codec_name(codec) in info.value.message


@pytest.mark.parametrize("codec", COMPRESSED)
def test_truncated_payloads_raise_the_typed_error(codec):
    packed = codecs.compress(codec, os.urandom(5000) * 3)
    for cut in (1, len(packed) // 2, len(packed) - 1):
        with pytest.raises(codecs.DecompressionError):
            codecs.decompress(codec, packed[:cut])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(COMPRESSED), st.binary(max_size=300))
def test_random_bytes_decompress_or_raise_typed(codec, data):
    try:
        out = codecs.decompress(codec, data, max_size=1 << 16)
    except codecs.DecompressionError:
        return
    assert len(out) <= 1 << 16

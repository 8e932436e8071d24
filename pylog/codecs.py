"""Batch compression codecs, all through cramjam: gzip, snappy, lz4 (frames), zstd.

Codec ids are Kafka's (attributes bits 0-2): 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.

Theory of operation.
  * Decompression is bounded (``max_size``) because a few kilobytes of zstd or gzip can
    expand to gigabytes. gzip, lz4 and zstd are decompressed with ``decompress_into`` into a
    per-thread scratch buffer, which cramjam stops filling (and reports) once it is full; the
    scratch starts at 1 MiB and doubles up to ``max_size``, so a normal batch costs one pass
    and a bomb costs at most about 2 * max_size bytes of work before it is refused.
  * Snappy comes in two shapes. librdkafka writes one raw snappy block; the Java client and
    kafka-python write the xerial framing: magic 82 53 4E 41 50 50 59 00, int32 version,
    int32 compatible version, then [int32 BE length, raw snappy block]... Both are read here
    (the framing is unwrapped in this module); raw snappy is written, which every client
    reads. A raw block states its decompressed length up front, so it is checked against the
    bound before anything is decompressed.
  * Every failure is a ``DecompressionError``, a CorruptBatchError: to a broker a payload
    that does not decompress is a corrupt batch.
"""
from __future__ import annotations

import threading

import cramjam

from pylog._core import lib
from pylog.core import CorruptBatchError

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}

DEFAULT_MAX_DECOMPRESSED = 64 << 20
XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16          # magic, version, compatible version
_SCRATCH_INITIAL = 1 << 20
_SCRATCH_KEEP = 8 << 20           # larger scratch buffers are not kept between calls
_FULL_OUTPUT = "failed to write whole buffer"  # cramjam's report of a full output buffer

_STREAM_MODULES = {GZIP: cramjam.gzip, LZ4: cramjam.lz4, ZSTD: cramjam.zstd}


class DecompressionError(CorruptBatchError):
    """A compressed batch payload that does not decompress, or would exceed the size bound."""

    def __init__(self, message: str):
        super().__init__(lib.PL_E_RECORD, message)


class _Scratch(threading.local):
    def __init__(self):
        self.buffer = bytearray(_SCRATCH_INITIAL)


_scratch = _Scratch()


def codec_name(codec: int) -> str:
    """"none", "gzip", "snappy", "lz4" or "zstd"; ValueError for any other id."""
    try:
        return CODEC_NAMES[codec]
    except KeyError:
        raise ValueError(f"unknown compression codec {codec}") from None


def compress(codec: int, data, level: int | None = None) -> bytes:
    """Compress ``data`` (bytes-like) as a Kafka batch payload of the given codec."""
    if codec == NONE:
        return bytes(data)
    if codec == GZIP:
        return bytes(cramjam.gzip.compress(data, level=level))
    if codec == SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(data, level=level))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data, level=level))
    raise ValueError(f"unknown compression codec {codec}")


def decompress(codec: int, data, *, max_size: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Decompress a batch payload; DecompressionError if it is corrupt or would produce more
    than ``max_size`` bytes."""
    if codec == NONE:
        if len(data) > max_size:
            raise DecompressionError(f"{len(data)} bytes exceed the bound of {max_size}")
        return bytes(data)
    if codec == SNAPPY:
        if bytes(data[:8]) == XERIAL_MAGIC:
            return _unwrap_xerial(data, max_size)
        return _snappy_block(data, max_size, "snappy")
    module = _STREAM_MODULES.get(codec)
    if module is None:
        raise DecompressionError(f"unknown compression codec {codec}")
    return _bounded(module, data, max_size, CODEC_NAMES[codec])


def _bounded(module, data, max_size: int, name: str) -> bytes:
    buffer = _scratch.buffer
    while True:
        limit = min(len(buffer), max_size)
        try:
            n = module.decompress_into(data, memoryview(buffer)[:limit])
            return bytes(memoryview(buffer)[:n])
        except cramjam.DecompressionError as e:
            if _FULL_OUTPUT not in str(e):
                raise DecompressionError(_describe(name, e)) from None
            if limit >= max_size:
                raise DecompressionError(
                    f"{name}: decompressed size exceeds the bound of {max_size} bytes") from None
        buffer = bytearray(min(2 * len(buffer), max_size))
        if len(buffer) <= _SCRATCH_KEEP:
            _scratch.buffer = buffer


def _describe(what: str, error: Exception) -> str:
    detail = str(error)
    for prefix in ("snappy: ", "lz4: "):  # cramjam names some codecs itself
        detail = detail.removeprefix(prefix)
    return f"{what}: {detail}"


def _snappy_block(block, budget: int, what: str) -> bytes:
    try:
        size = cramjam.snappy.decompress_raw_len(block)
    except cramjam.DecompressionError as e:
        raise DecompressionError(_describe(what, e)) from None
    if size > budget:
        raise DecompressionError(
            f"{what}: decompressed size {size} exceeds the bound of {budget} bytes")
    try:
        return bytes(cramjam.snappy.decompress_raw(block))
    except cramjam.DecompressionError as e:
        raise DecompressionError(_describe(what, e)) from None


def _unwrap_xerial(data, max_size: int) -> bytes:
    view = memoryview(data)
    if len(view) < _XERIAL_HEADER_SIZE:
        raise DecompressionError("xerial snappy: header cut short")
    pos, parts, total = _XERIAL_HEADER_SIZE, [], 0
    while pos < len(view):
        if len(view) - pos < 4:
            raise DecompressionError(f"xerial snappy: block length cut short at byte {pos}")
        length = int.from_bytes(view[pos:pos + 4], "big", signed=True)
        pos += 4
        if length < 0 or length > len(view) - pos:
            raise DecompressionError(
                f"xerial snappy: block length {length} at byte {pos - 4} runs past the payload")
        part = _snappy_block(view[pos:pos + length], max_size - total,
                             f"xerial snappy block at byte {pos - 4}")
        parts.append(part)
        total += len(part)
        pos += length
    return b"".join(parts)


def xerial_wrap(data, block_size: int = 32768) -> bytes:
    """Frame ``data`` the way the Java client and kafka-python do (xerial, version 1): for
    tests and for peers that insist on it. pylog itself writes raw snappy."""
    view = memoryview(data)
    out = [XERIAL_MAGIC, (1).to_bytes(4, "big"), (1).to_bytes(4, "big")]
    for start in range(0, len(view), block_size):
        block = bytes(cramjam.snappy.compress_raw(view[start:start + block_size]))
        out.append(len(block).to_bytes(4, "big"))
        out.append(block)
    return b"".join(out)

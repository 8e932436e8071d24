"""Shared by the interoperability tests (tests/test_interop_*.py): the records they write, how
they compare what was read with what was written, and a broker shared by one test module.

Theory of operation
-------------------
Every interop test writes a deterministic list of ``Rec`` (key, value, headers) to a fresh
topic, where each partition receives its records in a known order, then reads the topic back
with some client and turns whatever that client returns into ``Got`` (offset, key, value,
headers). ``assert_partition(expected, got)`` then demands, per partition, exactly the written
bytes in the written order with offset i holding the partition's record i. On top of that the
tests look at the broker's side: the high watermark from the control plane
(``topic_state``), so a reader that stopped early or a log holding extra records cannot pass,
and the stored batches (``stored_batches``: the segment files read with pylog's own C
validator), so "written with zstd" or "written by an idempotent producer" is a fact checked on
disk, not an assumption about the client.

The record mix (``make_records``) covers what Kafka allows and the clients expose: binary keys
and values (every byte value), UTF-8 text with multi-byte characters, empty keys and values,
null keys and values, values from 0 bytes to 100 KiB, no headers, several headers, repeated
header names, UTF-8 header names, binary/empty/null header values. Clients that cannot express
something say so through the ``make_records`` flags (kafka-python refuses a record whose key
and value are both null, and header values that are None; kcat sets headers per run).

``interop_broker`` is a module-scoped wrapper around tests/broker_fixture.py's
``BrokerFactory`` (owned by F2; not edited): one ``pylog serve`` per test module instead of one
per test, since every test uses its own topics.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import pytest

from broker_fixture import BrokerFactory, RunningBroker
from pylog.codecs import compress
from pylog.core import scan_batches

RECORDS = 10_000            # records each client test writes (issue 3 item 8: at least 10,000)
READ_DEADLINE_S = 30.0      # upper bound of every read loop; a healthy run needs ~1 s

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


class Rec(NamedTuple):
    """One record as written."""
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class Got(NamedTuple):
    """One record as a client read it back."""
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


# ---- the records ---------------------------------------------------------------------------

ALL_BYTES = bytes(range(256))
TEXT = "ключ ✓ é 😀 漢字"


def make_records(count: int, *, seed: int, both_null: bool = True,
                 null_header_values: bool = True, avoid: Iterable[bytes] = ()) -> list[Rec]:
    """``count`` deterministic records (same ``seed``, same records). ``both_null=False``: no
    record has a null key and a null value; ``null_header_values=False``: no None header
    value; ``avoid``: byte strings that occur in no key or value (kcat's input delimiters)."""
    rng = random.Random(seed)
    avoid = tuple(avoid)
    out = []
    for i in range(count):
        for _attempt in range(100):   # random bytes hold a 5-byte delimiter ~once in 2**40
            key = _key(rng, i)
            value = _value(rng, i)
            if not any(a in (key or b"") or a in (value or b"") for a in avoid):
                break
        else:
            raise AssertionError(f"record {i} keeps containing one of {avoid}")
        if key is None and value is None and not both_null:
            value = b""
        out.append(Rec(key, value, _headers(rng, i, null_header_values)))
    return out


def _key(rng: random.Random, i: int) -> bytes | None:
    kind = i % 6
    if kind == 0:
        return rng.randbytes(rng.randint(1, 40))
    if kind == 1:
        return f"{TEXT} {i}".encode()
    if kind == 2:
        return b""
    if kind == 3:
        return None
    if kind == 4:
        return ALL_BYTES[i % 256:] + ALL_BYTES[:i % 256]
    return f"key-{i}".encode()


def _value(rng: random.Random, i: int) -> bytes | None:
    if i % 1000 == 999:
        return rng.randbytes(100 * 1024)      # larger than the clients' default batch size
    kind = (i // 6) % 7 if i % 6 == 0 else i % 7
    if kind == 0:
        return rng.randbytes(rng.randint(1, 1500))
    if kind == 1:
        return (f"{TEXT} value {i} " * rng.randint(1, 20)).encode()
    if kind == 2:
        return b""
    if kind == 3:
        return None
    if kind == 4:
        return ALL_BYTES * rng.randint(1, 3)
    if kind == 5:
        return json.dumps({"i": i, "text": TEXT, "pad": "x" * rng.randint(0, 300)}).encode()
    return f"value-{i}".encode()


def _headers(rng: random.Random, i: int, null_ok: bool) -> tuple[tuple[str, bytes | None], ...]:
    kind = i % 5
    if kind == 0:
        return ()
    if kind == 1:
        return (("trace-id", i.to_bytes(8, "big")),)
    if kind == 2:
        return (("dup", b"first"), ("dup", b"second"), ("заголовок", "значение ✓".encode()))
    if kind == 3:
        return (("bin", rng.randbytes(rng.randint(1, 32))), ("empty", b""),
                ("null", None if null_ok else b"\x00"))
    return (("dup", b"\x00\xff"), ("other", b"x" * rng.randint(1, 100)), ("dup", b""),
            ("dup", ALL_BYTES))


# ---- comparing -----------------------------------------------------------------------------

def normalize_headers(headers) -> tuple[tuple[str, bytes | None], ...]:
    """Clients give None, lists of tuples or lists of lists: one canonical form."""
    return tuple((str(name), None if value is None else bytes(value))
                 for name, value in (headers or ()))


def _short(item) -> str:
    text = repr(item)
    return text if len(text) <= 300 else text[:300] + "...)"


def assert_partition(expected: Sequence[Rec], got: Sequence[Got], *, where: str) -> None:
    """``got`` is exactly ``expected``: same count, same bytes, same order, offset i = record i."""
    for i, (want, have) in enumerate(zip(expected, got)):
        if have.offset != i or (have.key, have.value, have.headers) != tuple(want):
            raise AssertionError(f"{where}: record {i} differs:\n wrote {_short(want)} "
                                 f"at offset {i}\n  read {_short(have)}")
    assert len(got) == len(expected), \
        f"{where}: read {len(got)} records, wrote {len(expected)}"


def assert_topic(expected: dict[int, Sequence[Rec]], got: dict[int, Sequence[Got]], *,
                 where: str) -> None:
    assert sorted(p for p, rs in got.items() if rs) == sorted(
        p for p, rs in expected.items() if rs), f"{where}: partitions with records differ"
    for partition, records in expected.items():
        assert_partition(records, got.get(partition, []), where=f"{where} partition {partition}")


def by_partition(records: Sequence[Rec], partitions: Sequence[int]) -> dict[int, list[Rec]]:
    """Records grouped by the partition each went to, in writing order."""
    out: dict[int, list[Rec]] = {}
    for record, partition in zip(records, partitions, strict=True):
        out.setdefault(partition, []).append(record)
    return out


def assert_delivered_in_order(partitions: Sequence[int], offsets: Sequence[int], *,
                              where: str) -> None:
    """Acknowledged offsets: per partition 0, 1, 2, ... in the order the records were sent."""
    seen: dict[int, int] = {}
    for index, (partition, offset) in enumerate(zip(partitions, offsets, strict=True)):
        want = seen.get(partition, 0)
        assert offset == want, (f"{where}: record {index} (partition {partition}) "
                                f"acknowledged at offset {offset}, expected {want}")
        seen[partition] = want + 1


def split_round_robin(records: Sequence[Rec], partitions: int) -> list[int]:
    """A deterministic explicit partition per record (for clients told where to write)."""
    return [(i // 7) % partitions for i in range(len(records))]


# ---- bounded read loops --------------------------------------------------------------------

def drain(poll: Callable[[], Iterable[Got | tuple[int, Got]]], total: int, *,
          deadline_s: float = READ_DEADLINE_S) -> list:
    """Call ``poll`` until ``total`` items came back or the deadline passed."""
    got: list = []
    deadline = time.monotonic() + deadline_s
    while len(got) < total and time.monotonic() < deadline:
        got.extend(poll())
    return got


async def adrain(poll, total: int, *, deadline_s: float = READ_DEADLINE_S) -> list:
    got: list = []
    deadline = time.monotonic() + deadline_s
    while len(got) < total and time.monotonic() < deadline:
        got.extend(await poll())
    return got


def group_got(pairs: Iterable[tuple[int, Got]]) -> dict[int, list[Got]]:
    out: dict[int, list[Got]] = {}
    for partition, got in pairs:
        out.setdefault(partition, []).append(got)
    return out


# ---- the broker ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def interop_broker(tmp_path_factory, request) -> RunningBroker:
    """One ``pylog serve`` for the whole test module (tests/broker_fixture.py's factory); its
    stderr is printed when a test of the module failed."""
    factory = BrokerFactory(tmp_path_factory.mktemp("interop"))
    failed_before = request.session.testsfailed
    running = factory.start()
    yield running
    factory.cleanup(failed=request.session.testsfailed > failed_before)


def topic_name(request, suffix: str = "") -> str:
    """A topic name unique to the test (Kafka's [a-zA-Z0-9._-], at most 249 characters)."""
    name = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name + suffix)
    return name[-200:].lstrip(".-") or "topic"


def control_plane(broker: RunningBroker, method: str, path: str,
                  body: dict | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a control plane call."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(broker.control_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def create_topic(broker: RunningBroker, name: str, partitions: int = 1) -> None:
    """Create through the control plane (neutral ground: no Kafka client involved)."""
    status, body = control_plane(broker, "POST", "/v1/topics", {
        "name": name, "partitions": partitions, "replication_factor": 1})
    assert status == 201, (status, body)


def topic_state(broker: RunningBroker, name: str) -> dict | None:
    """The control plane's description of ``name`` (None when it does not exist)."""
    status, body = control_plane(broker, "GET", f"/v1/topics/{name}")
    if status == 404:
        return None
    assert status == 200, (status, body)
    return body


def assert_high_watermarks(broker: RunningBroker, topic: str, counts: dict[int, int]) -> None:
    """The broker holds exactly ``counts[p]`` records in partition p (from offset 0)."""
    state = topic_state(broker, topic)
    assert state is not None, f"topic {topic} does not exist"
    marks = {p["partition"]: (p["log_start_offset"], p["high_watermark"], p["log_end_offset"])
             for p in state["partitions"]}
    want = {p: (0, counts.get(p, 0), counts.get(p, 0)) for p in marks}
    assert marks == want, f"{topic}: (log start, HW, LEO) per partition {marks}, want {want}"


def stored_batches(broker: RunningBroker, topic: str, partition: int, *,
                   with_bytes: bool = False) -> list:
    """Every batch in the partition's segment files, validated (CRC and records) by pylog's C
    core: BatchInfo with base_offset, attributes (codec in bits 0-2), producer_id, ...; with
    ``with_bytes`` (BatchInfo, the batch's bytes) pairs."""
    batches = []
    files = sorted(glob.glob(os.path.join(broker.data_dir, f"{topic}-{partition}", "*.log")))
    assert files, f"no segment of {topic}-{partition} in {broker.data_dir}"
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        found, error = scan_batches(data)
        assert error is None, f"{path}: {error}"
        batches.extend((b, data[b.position:b.position + b.size]) if with_bytes else b
                       for b in found)
    return batches


def assert_stored_codecs(broker: RunningBroker, topic: str,
                         placements: Sequence[tuple[int, int]], codecs: Sequence[str], *,
                         where: str) -> None:
    """Each stored batch is compressed with the codec its records were sent with:
    ``placements[i]`` = (partition, offset) of record i, ``codecs[i]`` its producer's codec.

    Every client here sends a batch uncompressed when compressing it does not make it smaller
    (librdkafka's msgset writer, kafka-python and aiokafka alike): a batch whose records the
    codec cannot shrink by 10% (measured with pylog.codecs) may be stored uncompressed. Every
    codec must still be stored compressed at least once."""
    wanted = {placement: codec for placement, codec in zip(placements, codecs, strict=True)}
    names = {v: k for k, v in CODEC_IDS.items()}
    seen = set()
    for partition in sorted({p for p, _ in placements}):
        for batch, data in stored_batches(broker, topic, partition, with_bytes=True):
            sent_with = {wanted.get((partition, batch.base_offset + delta))
                         for delta in range(batch.last_offset_delta + 1)}
            stored = names[batch.attributes & 7]
            seen.add(stored)
            if stored == "none" and len(sent_with) == 1 and None not in sent_with:
                (codec,) = sent_with
                records = data[61:]      # after the 61-byte batch header
                if len(compress(CODEC_IDS[codec], records)) >= 0.9 * len(records):
                    continue             # not worth compressing: the client sent it plain
            assert sent_with == {stored}, (
                f"{where}: batch {topic}-{partition}@{batch.base_offset} "
                f"({batch.record_count} records, {batch.size} bytes) stored as {stored}, "
                f"its records were sent with {sorted(map(str, sent_with))}")
    assert seen >= set(codecs), f"{where}: codecs stored {seen}, sent {set(codecs)}"

"""kcat (Debian 1.7.1, librdkafka 2.0.2) against `pylog serve`: -P with keys (-K), headers (-H),
null records (-Z) and every codec (-z), from stdin and from a file (-l); -C -o beginning -e read
back with -J and with -f; -L and -L -J metadata. See interop_support for the record mix and
the checks (bytes, order, offset i = record i, high watermarks, codecs stored on disk)."""
from __future__ import annotations

import json
import time

import pytest

from interop_clients import (
    KCAT,
    KEY_DELIM,
    MSG_DELIM,
    kcat_expressible,
    kcat_produce,
    kcat_read_format,
    kcat_read_json,
    run_kcat,
)
from interop_support import (
    RECORDS,
    assert_high_watermarks,
    assert_partition,
    assert_stored_codecs,
    assert_topic,
    create_topic,
    interop_broker,  # noqa: F401  (module-scoped `pylog serve`)
    make_records,
    topic_name,
)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed "
                                "(scripts/install-system-deps installs it)")

# One kcat -P run per codec; -Z (empty input = null) on alternate runs; acks alternate too.
RUNS = [
    # codec,   null_mode, acks,  from a file (-l)
    ("none",   False,     "all", False),
    ("snappy", True,      "1",   True),
    ("lz4",    False,     "all", False),
    ("zstd",   True,      "1",   False),
    ("gzip",   False,     "all", True),
]


def run_headers(run: int, codec: str) -> list[tuple[str, str | None]]:
    """-H flags of a run: a repeated name, a UTF-8 name and value, an empty and a null value.
    No ',' '=' or 'NULL' in values, so -f's %h text can be parsed back."""
    return [("run", str(run)), ("dup", "a"), ("dup", "b"), ("заголовок", "значение ✓"),
            ("codec", codec), ("empty", ""), ("null", None)]


def test_kcat_produce_every_codec_and_read_back(interop_broker, request, tmp_path):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=1)
    per_run = RECORDS // len(RUNS)
    source = make_records(RECORDS, seed=1, avoid=(MSG_DELIM, KEY_DELIM))
    expected, windows = [], []
    for run, (codec, null_mode, acks, from_file) in enumerate(RUNS):
        began = int(time.time() * 1000)
        records = kcat_expressible(source[run * per_run:(run + 1) * per_run],
                                   null_mode=null_mode, headers=run_headers(run, codec))
        kcat_produce(bootstrap, topic, records, partition=0, codec=codec, null_mode=null_mode,
                     acks=acks, input_file=str(tmp_path / f"run{run}.bin") if from_file else None)
        windows.append((began, int(time.time() * 1000)))
        expected.extend(records)
    assert len(expected) >= 10_000
    assert any(r.key is None for r in expected) and any(r.value is None for r in expected)
    assert any(r.key == b"" for r in expected) and any(r.value == b"" for r in expected)
    assert_high_watermarks(interop_broker, topic, {0: len(expected)})

    # -J: every byte of keys, values and headers, offsets.
    got = kcat_read_json(bootstrap, topic, {0: len(expected)})
    assert_topic({0: expected}, got, where="kcat -J")

    # -f with %K/%S lengths and %h headers; %T is the CreateTime kcat stamped while it ran.
    formatted = kcat_read_format(bootstrap, topic)
    assert list(formatted) == [0]
    assert_partition(expected, [g for g, _ in formatted[0]], where="kcat -f")
    for run, (began, ended) in enumerate(windows):
        stamps = [stamp for _, stamp in formatted[0][run * per_run:(run + 1) * per_run]]
        assert began - 1000 <= min(stamps) <= max(stamps) <= ended + 1000, (run, began, ended)

    # Every stored batch carries the codec of the run that wrote it, unless compressing could
    # not shrink it (see assert_stored_codecs). librdkafka 2.0.2 silently sends gzip, snappy
    # and lz4 uncompressed when the broker's listed Produce range lacks v0 (KAFKA-18659).
    assert_stored_codecs(interop_broker, topic, [(0, i) for i in range(len(expected))],
                         [codec for codec, *_ in RUNS for _ in range(per_run)], where="kcat")


def test_kcat_multi_partition_and_offsets(interop_broker, request):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=3)
    per_partition = 3_400
    source = make_records(3 * per_partition, seed=2, avoid=(MSG_DELIM, KEY_DELIM))
    expected, placements, codecs = {}, [], []
    for partition, codec in enumerate(("zstd", "none", "lz4")):
        expected[partition] = kcat_expressible(
            source[partition * per_partition:(partition + 1) * per_partition],
            null_mode=False, headers=run_headers(partition, codec))
        kcat_produce(bootstrap, topic, expected[partition], partition=partition, codec=codec)
        placements += [(partition, i) for i in range(per_partition)]
        codecs += [codec] * per_partition
    assert_high_watermarks(interop_broker, topic, {p: per_partition for p in range(3)})
    assert_topic(expected, kcat_read_json(bootstrap, topic, {}), where="kcat -J 3 partitions")
    assert_stored_codecs(interop_broker, topic, placements, codecs, where="kcat 3 partitions")

    # Starting in the middle: -p 1 -o 1234 -c 5 gives offsets 1234..1238 exactly.
    out = run_kcat("-b", bootstrap, "-C", "-t", topic, "-p", "1", "-o", "1234", "-c", "5",
                   "-e", "-q", "-J", "-m", "15")
    lines = [json.loads(line) for line in out.decode("utf-8", "surrogateescape").split("\n")
             if line]
    assert [m["offset"] for m in lines] == list(range(1234, 1239))
    assert [m["payload"].encode("utf-8", "surrogateescape") for m in lines] == \
        [r.value for r in expected[1][1234:1239]]
    # ... and from the end: -o -3 gives the last three.
    out = run_kcat("-b", bootstrap, "-C", "-t", topic, "-p", "2", "-o", "-3", "-e", "-q",
                   "-f", "%o\\n", "-m", "15")
    assert out.split() == [str(o).encode() for o in range(per_partition - 3, per_partition)]


def test_kcat_metadata_listing(interop_broker, request):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=4)

    text = run_kcat("-b", bootstrap, "-L", "-t", topic, "-m", "15").decode()
    assert f"broker 1 at 127.0.0.1:{interop_broker.port} (controller)" in text
    assert f'topic "{topic}" with 4 partitions:' in text
    for p in range(4):
        assert f"partition {p}, leader 1, replicas: 1, isrs: 1" in text

    listing = json.loads(run_kcat("-b", bootstrap, "-L", "-J", "-m", "15"))
    assert listing["controllerid"] == 1
    assert listing["brokers"] == [{"id": 1, "name": f"127.0.0.1:{interop_broker.port}"}]
    topics = {t["topic"]: t for t in listing["topics"]}
    assert topic in topics
    assert "error" not in topics[topic]
    assert [(p["partition"], p["leader"], p["replicas"], p["isrs"])
            for p in topics[topic]["partitions"]] == \
        [(p, 1, [{"id": 1}], [{"id": 1}]) for p in range(4)]

    one = json.loads(run_kcat("-b", bootstrap, "-L", "-J", "-t", topic, "-m", "15"))
    assert [t["topic"] for t in one["topics"]] == [topic]
    assert len(one["topics"][0]["partitions"]) == 4

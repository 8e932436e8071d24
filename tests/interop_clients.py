"""Write and read a topic with each client under test, in one shape for all of them.

Writers take the records and, per record, the partition to write it to (None: the client's own
partitioner picks) and return, per record, the (partition, offset) the broker acknowledged
(kcat cannot tell: it returns None). Readers take {partition: record count}, read every
partition from the beginning until they hold that many records or READ_DEADLINE_S passed, and
return {partition: [Got, ...]} in the order the client delivered them. Used by the per-client
files (with extra client-specific checks around them) and by test_interop_cross.py.

kcat (librdkafka 2.0.2, Debian) is driven as a subprocess: input records are split by a
multi-byte message delimiter (-D) and key delimiter (-K) that ``make_records(avoid=...)`` keeps
out of the data, so binary keys and values pass unchanged. kcat sets headers per run (-H), and
its input format cannot hold every key/value combination: without -Z a record has a value
(possibly empty) and, when its key is null, a non-empty one (kcat skips empty input); with -Z
empty keys and values become null. ``kcat_expressible`` maps records onto what a run can send.
Reading, ``-J`` is lossless for binary data: kcat escapes control characters, quotes and
backslashes and passes every other byte through, so decoding its output as UTF-8 with
surrogateescape and re-encoding each string gives back the exact bytes.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Sequence

from interop_support import Got, Rec, adrain, drain, group_got, normalize_headers

# ---- kcat --------------------------------------------------------------------------------------

KCAT = shutil.which("kcat")
MSG_DELIM = b"\xfe\x1e\xfd\x1e\xfe"  # no NUL: kcat keeps delimiters as C strings
KEY_DELIM = b"\xfe\x1f\xfd\x1f\xfe"
KCAT_TIMEOUT_S = 60


def _escape(delim: bytes) -> str:
    return "".join(f"\\x{byte:02x}" for byte in delim)


def run_kcat(*args: str, stdin: bytes | None = None) -> bytes:
    """kcat's stdout; AssertionError with its stderr when it exits non-zero."""
    done = subprocess.run([KCAT, *args], input=stdin, capture_output=True,
                          timeout=KCAT_TIMEOUT_S)
    assert done.returncode == 0, (f"kcat {' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stderr.decode(errors='replace')[-3000:]}")
    return done.stdout


def kcat_expressible(records: Sequence[Rec], *, null_mode: bool,
                     headers: Sequence[tuple[str, str | None]]) -> list[Rec]:
    """The records a kcat run can send (see the module docstring), with the run's headers."""
    run_headers = tuple((n, None if v is None else v.encode()) for n, v in headers)
    out = []
    for r in records:
        key, value = r.key, r.value
        if null_mode:
            key, value = (key or None), (value or None)
        else:
            value = value or b""
            if key is None and not value:
                key = b""
        out.append(Rec(key, value, run_headers))
    return out


def kcat_input(records: Sequence[Rec], *, null_mode: bool) -> bytes:
    parts = []
    for r in records:
        if null_mode or r.key is not None:
            parts.append((r.key or b"") + KEY_DELIM + (r.value or b""))
        else:
            parts.append(r.value)
        parts.append(MSG_DELIM)
    return b"".join(parts)


def kcat_produce(bootstrap: str, topic: str, records: Sequence[Rec], *, partition: int,
                 codec: str = "none", null_mode: bool = False, acks: str = "all",
                 input_file: str | None = None) -> None:
    """One ``kcat -P`` run; ``records`` must come from ``kcat_expressible`` (same headers for
    all). From stdin, or from ``input_file`` (-l) when given."""
    headers = records[0].headers if records else ()
    assert all(r.headers == headers for r in records), "kcat sets headers per run"
    args = ["-b", bootstrap, "-P", "-t", topic, "-p", str(partition),
            "-K", _escape(KEY_DELIM), "-D", _escape(MSG_DELIM),
            "-X", f"acks={acks}", "-X", "message.timeout.ms=20000", "-m", "15"]
    if codec != "none":
        args += ["-z", codec]
    if null_mode:
        args.append("-Z")
    for name, value in headers:
        args += ["-H", name if value is None else f"{name}={value.decode()}"]
    data = kcat_input(records, null_mode=null_mode)
    if input_file is None:
        run_kcat(*args, stdin=data)
    else:
        with open(input_file, "wb") as f:
            f.write(data)
        run_kcat(*args, "-l", input_file)


def kcat_read_json(bootstrap: str, topic: str, counts: dict[int, int]) -> dict[int, list[Got]]:
    """``kcat -C -o beginning -e -J``: every record of every partition of ``topic``."""
    # A short fetch wait: -e exits on the empty fetch after the last record (default 500 ms).
    out = run_kcat("-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q",
                   "-m", "15", "-X", "fetch.wait.max.ms=50")
    pairs = []
    for line in out.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        m = json.loads(line)
        assert m["topic"] == topic and m["broker"] == 1, m
        headers = m.get("headers") or []
        pairs.append((m["partition"], Got(
            m["offset"], _raw(m["key"]), _raw(m["payload"]),
            tuple((headers[i], _raw(headers[i + 1])) for i in range(0, len(headers), 2)))))
    return group_got(pairs)


def _raw(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


KCAT_FORMAT = "%p %o %K %S %T\\n%k%s\\n%h\\n"


def kcat_read_format(bootstrap: str, topic: str) -> dict[int, list[tuple[Got, int]]]:
    """``kcat -C -o beginning -e -f``: (Got, timestamp) per record. Key and value are cut by
    their printed lengths (%K, %S), so they may be binary; %h prints headers as n=v,n=v with
    "NULL" for a null value, so header values must be text without ',' '=' or NUL here."""
    out = run_kcat("-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
                   "-m", "15", "-f", KCAT_FORMAT)
    result: dict[int, list[tuple[Got, int]]] = {}
    pos = 0
    while pos < len(out):
        eol = out.index(b"\n", pos)
        partition, offset, key_len, value_len, stamp = map(int, out[pos:eol].split())
        pos = eol + 1
        key = None if key_len < 0 else out[pos:pos + key_len]
        pos += max(key_len, 0)
        value = None if value_len < 0 else out[pos:pos + value_len]
        pos += max(value_len, 0)
        assert out[pos:pos + 1] == b"\n", f"kcat -f output out of step at byte {pos}"
        eol = out.index(b"\n", pos + 1)
        text = out[pos + 1:eol].decode()
        pos = eol + 1
        headers = []
        for item in text.split(",") if text else ():
            name, _, hvalue = item.partition("=")
            headers.append((name, None if hvalue == "NULL" else hvalue.encode()))
        result.setdefault(partition, []).append(
            (Got(offset, key, value, tuple(headers)), stamp))
    return result


# ---- confluent-kafka (librdkafka 2.16) -------------------------------------------------------

def ck_produce(bootstrap: str, topic: str, records: Sequence[Rec],
               partitions: Sequence[int | None] | None = None, *, acks: str = "all",
               codec: str = "none", **config) -> list[tuple[int, int]]:
    """Produce with delivery callbacks; every callback must report success."""
    import confluent_kafka

    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap, "acks": acks, "compression.type": codec,
        "linger.ms": 5, "message.timeout.ms": 30000, **config})
    delivered: list[tuple[int, int] | None] = [None] * len(records)
    errors = []

    def report(index, err, msg):
        if err is not None:
            errors.append((index, err))
        else:
            delivered[index] = (msg.partition(), msg.offset())

    for index, r in enumerate(records):
        partition = partitions[index] if partitions is not None else None
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(topic, value=r.value, key=r.key, headers=list(r.headers),
                                 on_delivery=lambda err, msg, i=index: report(i, err, msg),
                                 **extra)
                break
            except BufferError:       # local queue full: serve callbacks, then retry
                producer.poll(0.1)
    assert producer.flush(30) == 0, "confluent-kafka: records left undelivered after 30 s"
    assert not errors, f"confluent-kafka delivery errors: {errors[:5]}"
    assert None not in delivered
    return delivered


def ck_consumer(bootstrap: str, **config):
    import confluent_kafka
    # group.id is required by the library; assign() below never joins a group.
    return confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": "interop-assign-only",
        "enable.auto.commit": False, "enable.auto.offset.store": False, **config})


def ck_read(bootstrap: str, topic: str, counts: dict[int, int]) -> dict[int, list[Got]]:
    import confluent_kafka

    consumer = ck_consumer(bootstrap)
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in counts])

        total = sum(counts.values())
        read = 0

        def poll():
            # consume() waits for num_messages or the timeout: never ask for more than is left.
            nonlocal read
            out = []
            for m in consumer.consume(num_messages=min(5000, total - read), timeout=0.5):
                assert m.error() is None, m.error()
                out.append((m.partition(), Got(m.offset(), m.key(), m.value(),
                                               normalize_headers(m.headers()))))
            read += len(out)
            return out
        return group_got(drain(poll, total))
    finally:
        consumer.close()


# ---- kafka-python 3 ----------------------------------------------------------------------------

def kp_produce(bootstrap: str, topic: str, records: Sequence[Rec],
               partitions: Sequence[int | None] | None = None, **config
               ) -> list[tuple[int, int]]:
    """KafkaProducer with its defaults (idempotence on, acks=all) unless ``config`` says."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, **config)
    try:
        futures = [producer.send(topic, key=r.key, value=r.value, headers=list(r.headers),
                                 partition=None if partitions is None else partitions[i])
                   for i, r in enumerate(records)]
        producer.flush(timeout=30)
        return [(md.partition, md.offset) for md in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


def kp_consumer(bootstrap: str, **config):
    from kafka import KafkaConsumer
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", **config)


def kp_read(bootstrap: str, topic: str, counts: dict[int, int]) -> dict[int, list[Got]]:
    from kafka import TopicPartition

    consumer = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in counts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def poll():
            return [(m.partition, Got(m.offset, m.key, m.value, normalize_headers(m.headers)))
                    for ms in consumer.poll(timeout_ms=500).values() for m in ms]
        return group_got(drain(poll, sum(counts.values())))
    finally:
        consumer.close()


# ---- aiokafka ------------------------------------------------------------------------------------

async def aio_produce(bootstrap: str, topic: str, records: Sequence[Rec],
                      partitions: Sequence[int | None] | None = None, **config
                      ) -> list[tuple[int, int]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **config)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=r.key, value=r.value, headers=list(r.headers),
                                       partition=None if partitions is None else partitions[i])
                   for i, r in enumerate(records)]
        done = await asyncio.wait_for(asyncio.gather(*futures), 30)
        return [(md.partition, md.offset) for md in done]
    finally:
        await producer.stop()


async def aio_read_async(bootstrap: str, topic: str, counts: dict[int, int]
                         ) -> dict[int, list[Got]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in counts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def poll():
            batch = await consumer.getmany(timeout_ms=500)
            return [(m.partition, Got(m.offset, m.key, m.value, normalize_headers(m.headers)))
                    for ms in batch.values() for m in ms]
        return group_got(await adrain(poll, sum(counts.values())))
    finally:
        await consumer.stop()


def aio_read(bootstrap: str, topic: str, counts: dict[int, int]) -> dict[int, list[Got]]:
    return asyncio.run(aio_read_async(bootstrap, topic, counts))


# ---- pylog's own client --------------------------------------------------------------------------

def pylog_produce(bootstrap: str, topic: str, records: Sequence[Rec],
                  partitions: Sequence[int | None] | None = None, **config
                  ) -> list[tuple[int, int]]:
    from pylog.client import Producer

    with Producer(bootstrap, **config) as producer:
        futures = [producer.send(topic, value=r.value, key=r.key, headers=list(r.headers),
                                 partition=None if partitions is None else partitions[i])
                   for i, r in enumerate(records)]
        producer.flush(timeout_ms=30_000)
        return [(md.partition, md.offset) for md in (f.result(timeout=30) for f in futures)]


def pylog_read(bootstrap: str, topic: str, counts: dict[int, int]) -> dict[int, list[Got]]:
    from pylog.client import Consumer

    with Consumer(bootstrap) as consumer:
        consumer.assign([(topic, p) for p in counts])
        consumer.seek_to_beginning()

        def poll():
            return [(r.partition, Got(r.offset, r.key, r.value, normalize_headers(r.headers)))
                    for rs in consumer.poll(timeout_ms=500).values() for r in rs]
        return group_got(drain(poll, sum(counts.values())))


READERS = {"kcat": kcat_read_json, "confluent-kafka": ck_read, "kafka-python": kp_read,
           "aiokafka": aio_read, "pylog": pylog_read}

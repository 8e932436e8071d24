"""pylog's producer and consumer against a real broker process (`pylog serve`; Tansu too with
PYLOG_TEST_TANSU=1): bytes, order and offsets of >= 10,000 keyed records with headers, every
codec, acks 0/1/all, murmur2 and xxhash key placement, sticky partitioning, seeks and offset
lookups, and retries after errors injected by a proxy (NOT_LEADER_OR_FOLLOWER, a dropped
connection, a non-retriable error, a corrupted fetch)."""
import asyncio
import dataclasses
import itertools
import time

import pytest

from client_support import CLOSE, KafkaProxy, broker  # noqa: F401 - broker is a fixture
from pylog.client import (
    AsyncAdmin,
    AsyncConsumer,
    AsyncProducer,
    ClientClosedError,
    Consumer,
    CorruptRecordError,
    KafkaConnectionError,
    Producer,
    murmur2_partition,
    xxhash_partition,
)
from pylog.client.errors import MessageTooLargeError, OffsetOutOfRangeError
from pylog.protocol import ApiKey, ErrorCode

_names = itertools.count()


def run(coro, timeout=60):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def new_topic(broker, partitions=1, prefix="t"):
    name = f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**9}"

    async def create():
        async with AsyncAdmin(broker.bootstrap) as admin:
            await admin.create_topics(name, partitions=partitions)
    run(create())
    return name


async def consume_all(bootstrap, topic, expected, *, partitions=None, **config):
    """Every record of ``topic`` from the beginning until ``expected`` arrived (or time out)."""
    async with AsyncConsumer(bootstrap, fetch_max_wait_ms=100, **config) as consumer:
        if partitions is None:
            await consumer.assign_topic(topic)
        else:
            consumer.assign([(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records = []
        while len(records) < expected:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(records)} of {expected} records arrived"
            for recs in batch.values():
                records.extend(recs)
        assert not await consumer.getmany(timeout_ms=200), "more records than produced"
        return records


def not_on_tansu(broker, why):
    if broker.kind == "tansu":
        pytest.skip(f"Tansu {why}")


def record_value(i: int) -> bytes:
    return (b"value-%d-" % i) * (1 + i % 7) + bytes([i % 256])


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_ten_thousand_keyed_records_with_headers_round_trip(broker, compression):
    topic = new_topic(broker, partitions=3)
    count = 10_000

    async def produce():
        async with AsyncProducer(broker.bootstrap, compression=compression, linger_ms=2,
                                 batch_size=32_768) as producer:
            futures = [await producer.send(topic, record_value(i), key=b"key-%d" % (i % 97),
                                           headers=[("seq", b"%d" % i), ("none", None)])
                       for i in range(count)]
            return await asyncio.gather(*futures)
    metadata = run(produce())
    records = run(consume_all(broker.bootstrap, topic, count))

    by_partition = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r)
    for partition, recs in by_partition.items():
        assert [r.offset for r in recs] == list(range(len(recs))), "offsets contiguous from 0"
        seqs = [int(dict(r.headers)["seq"]) for r in recs]
        assert seqs == sorted(seqs), "per-partition order is send order"
    acked = {(m.partition, m.offset): i for i, m in enumerate(metadata)}
    assert len(acked) == count
    for r in records:
        i = acked[(r.partition, r.offset)]
        assert int(dict(r.headers)["seq"]) == i
        assert r.key == b"key-%d" % (i % 97)
        assert r.value == record_value(i)
        assert r.headers == (("seq", b"%d" % i), ("none", None))
        assert r.timestamp == metadata[i].timestamp
        assert r.partition == murmur2_partition(r.key, 3)


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks(broker, acks):
    topic = new_topic(broker)
    count = 3000

    async def produce():
        async with AsyncProducer(broker.bootstrap, acks=acks) as producer:
            futures = [await producer.send(topic, b"%d" % i) for i in range(count)]
            return await asyncio.gather(*futures)
    metadata = run(produce())
    if acks == 0:
        assert {m.offset for m in metadata} == {-1}
    else:
        assert [m.offset for m in metadata] == list(range(count))
    records = run(consume_all(broker.bootstrap, topic, count))
    assert [r.value for r in records] == [b"%d" % i for i in range(count)]
    assert [r.offset for r in records] == list(range(count))


@pytest.mark.parametrize("partitioner,place", [("murmur2", murmur2_partition),
                                               ("xxhash", xxhash_partition)])
def test_keys_land_on_their_hash_partition(broker, partitioner, place):
    topic = new_topic(broker, partitions=5)
    keys = [b"user-%d" % i for i in range(400)]

    async def produce():
        async with AsyncProducer(broker.bootstrap, partitioner=partitioner) as producer:
            return await asyncio.gather(*[await producer.send(topic, b"v", key=k) for k in keys])
    metadata = run(produce())
    assert [m.partition for m in metadata] == [place(k, 5) for k in keys]
    assert len({m.partition for m in metadata}) == 5
    records = run(consume_all(broker.bootstrap, topic, len(keys)))
    assert all(r.partition == place(r.key, 5) for r in records)


def test_keyless_records_stick_to_a_partition_until_its_batch_closes(broker):
    topic = new_topic(broker, partitions=4)

    async def produce(batch_size, count):
        async with AsyncProducer(broker.bootstrap, batch_size=batch_size,
                                 linger_ms=1000) as producer:
            futures = [await producer.send(topic, b"x" * 100) for _ in range(count)]
            await producer.flush()
            return [f.result().partition for f in futures]
    # One big batch: every record on one partition.
    assert len(set(run(produce(1 << 20, 500)))) == 1
    # Small batches: the partition changes exactly when a batch is closed (~9 records each).
    partitions = run(produce(1024, 500))
    runs = [len(list(group)) for _, group in itertools.groupby(partitions)]
    assert len(set(partitions)) > 1
    assert all(5 <= n <= 10 for n in runs[:-1]), runs
    assert all(a != b for a, b in zip(partitions, partitions[1:]) if a != b)


def test_explicit_partition_and_timestamp(broker):
    topic = new_topic(broker, partitions=3)

    async def produce():
        async with AsyncProducer(broker.bootstrap) as producer:
            return await producer.send_and_wait(topic, b"v", key=b"k", partition=2,
                                                timestamp=1_600_000_000_123)
    metadata = run(produce())
    assert (metadata.partition, metadata.offset, metadata.timestamp) == (2, 0, 1_600_000_000_123)
    [record] = run(consume_all(broker.bootstrap, topic, 1, partitions=[2]))
    assert (record.key, record.timestamp) == (b"k", 1_600_000_000_123)


def test_seek_position_and_offset_lookups(broker):
    not_on_tansu(broker, "answers ListOffsets LATEST with the last offset, not the next one")
    topic = new_topic(broker)
    tp = (topic, 0)

    async def scenario():
        async with AsyncProducer(broker.bootstrap) as producer:
            for i in range(100):
                await producer.send(topic, b"%d" % i, timestamp=1_000_000 + 10 * i)
            await producer.flush()
        async with AsyncConsumer(broker.bootstrap, fetch_max_wait_ms=50) as consumer:
            consumer.assign([tp])
            assert await consumer.beginning_offsets([tp]) == {tp: 0}
            assert await consumer.end_offsets([tp]) == {tp: 100}
            found = await consumer.offsets_for_times({tp: 1_000_000 + 10 * 42 - 5})
            assert (found[tp].offset, found[tp].timestamp) == (42, 1_000_000 + 420)
            assert (await consumer.offsets_for_times({tp: 10**13}))[tp] is None
            consumer.seek(tp, 57)
            assert await consumer.position(tp) == 57
            got = await consumer.getmany(timeout_ms=5000, max_records=10)
            assert [r.offset for r in got[tp]] == list(range(57, 67))
            assert await consumer.position(tp) == 67
            consumer.seek_to_end()
            assert await consumer.position(tp) == 100
            assert await consumer.getmany(timeout_ms=100) == {}
            consumer.seek_to_beginning(tp)
            got = await consumer.getmany(timeout_ms=5000, max_records=1)
            assert got[tp][0].offset == 0 and got[tp][0].value == b"0"
            assert consumer.highwater(tp) == 100
    run(scenario())


def test_the_last_seek_wins_over_a_fetch_already_scheduled(broker):
    topic = new_topic(broker)
    tp = (topic, 0)

    async def scenario():
        async with AsyncProducer(broker.bootstrap) as producer:
            for i in range(20):
                await producer.send(topic, b"%d" % i)
        consumer = AsyncConsumer(broker.bootstrap, fetch_max_wait_ms=50)
        consumer.assign([tp])
        consumer.seek(tp, 20)
        await consumer.start()          # schedules a fetch at 20 and returns at once ...
        consumer.seek_to_beginning(tp)  # ... so this seek comes before that fetch is sent
        try:
            got = await consumer.getmany(timeout_ms=5000)
            assert [r.offset for r in got[tp]] == list(range(20))
        finally:
            await consumer.close()
    run(scenario())


def test_async_iteration_sees_records_produced_later(broker):
    topic = new_topic(broker)

    async def scenario():
        async with AsyncConsumer(broker.bootstrap, fetch_max_wait_ms=100,
                                 auto_offset_reset="latest") as consumer:
            consumer.assign([(topic, 0)])
            assert await consumer.position((topic, 0)) == 0
            async with AsyncProducer(broker.bootstrap, linger_ms=0) as producer:
                for i in range(5):
                    await producer.send(topic, b"late-%d" % i)
                seen = []
                async for record in consumer:
                    seen.append(record.value)
                    if len(seen) == 5:
                        break
            assert seen == [b"late-%d" % i for i in range(5)]
    run(scenario())


@pytest.mark.parametrize("reset", ["earliest", "latest", "error"])
def test_offset_out_of_range_follows_auto_offset_reset(broker, reset):
    not_on_tansu(broker, "never answers OFFSET_OUT_OF_RANGE")
    topic = new_topic(broker)
    tp = (topic, 0)

    async def scenario():
        async with AsyncProducer(broker.bootstrap) as producer:
            for i in range(10):
                await producer.send(topic, b"%d" % i)
        async with AsyncConsumer(broker.bootstrap, auto_offset_reset=reset,
                                 fetch_max_wait_ms=50) as consumer:
            consumer.assign([tp])
            consumer.seek(tp, 5000)  # past the log end: OFFSET_OUT_OF_RANGE
            if reset == "error":
                with pytest.raises(OffsetOutOfRangeError):
                    for _ in range(50):
                        await consumer.getmany(timeout_ms=200)
                return
            if reset == "earliest":
                got = await consumer.getmany(timeout_ms=3000)
                assert [r.offset for r in got[tp]] == list(range(10))
                return
            for _ in range(50):  # until the out-of-range answer moved the position
                assert await consumer.getmany(timeout_ms=100) == {}
                if await consumer.position(tp) != 5000:
                    break
            assert await consumer.position(tp) == 10
    run(scenario())


def test_consumer_reads_only_assigned_partitions(broker):
    topic = new_topic(broker, partitions=3)

    async def produce():
        async with AsyncProducer(broker.bootstrap) as producer:
            for p in range(3):
                for i in range(20):
                    await producer.send(topic, b"p%d-%d" % (p, i), partition=p)
    run(produce())
    records = run(consume_all(broker.bootstrap, topic, 20, partitions=[1]))
    assert [r.value for r in records] == [b"p1-%d" % i for i in range(20)]


def test_blocking_producer_and_consumer(broker):
    topic = new_topic(broker, partitions=2)
    with Producer(broker.bootstrap, linger_ms=1) as producer:
        futures = [producer.send(topic, b"sync-%d" % i, key=b"%d" % (i % 10))
                   for i in range(2000)]
        producer.flush()
        offsets = [f.result(timeout=10) for f in futures]
    assert len({(m.partition, m.offset) for m in offsets}) == 2000
    with Consumer(broker.bootstrap, consumer_timeout_ms=1000, fetch_max_wait_ms=50) as consumer:
        consumer.assign_topic(topic)
        consumer.seek_to_beginning()
        values = sorted(r.value for r in consumer)
    assert values == sorted(b"sync-%d" % i for i in range(2000))


def test_close_without_waiting_fails_what_is_not_sent(broker):
    topic = new_topic(broker)

    async def scenario():
        producer = AsyncProducer(broker.bootstrap, linger_ms=60_000, batch_size=1 << 20)
        await producer.start()
        futures = [await producer.send(topic, b"%d" % i) for i in range(10)]
        await producer.close(timeout_ms=0)
        for future in futures:
            with pytest.raises(ClientClosedError):
                future.result()
        with pytest.raises(ClientClosedError):
            await producer.send(topic, b"late")
    run(scenario())


def test_unreachable_broker_is_a_connection_error():
    with pytest.raises(KafkaConnectionError, match="cannot reach 127.0.0.1:1: connection refused"):
        run(AsyncProducer("127.0.0.1:1").start())


# ---- injected faults (through a proxy) -------------------------------------------------------


def _produce_error_response(version, body, code):
    from pylog.client.messages import build
    from kio.index import load_response_schema
    schema = load_response_schema(ApiKey.PRODUCE, version)
    return build(schema, {"responses": [
        {"name": t.name, "partition_responses": [
            {"index": p.index, "error_code": code, "base_offset": -1, "record_errors": []}
            for p in t.partition_data]} for t in body.topic_data]})


def _inject_not_leader_into(requests):
    def intercept(key, version, body, count):
        if key == ApiKey.PRODUCE and count in requests:
            return _produce_error_response(version, body, ErrorCode.NOT_LEADER_OR_FOLLOWER)
        return None
    return intercept


async def _produce_through(proxy, topic, count, **config):
    async with AsyncProducer(proxy.bootstrap, retry_backoff_ms=20, batch_size=512,
                             **config) as producer:
        metadata_before = proxy.counts[ApiKey.METADATA]
        futures = [await producer.send(topic, b"%04d" % i, partition=i % 2)
                   for i in range(count)]
        results = await asyncio.gather(*futures)
        assert proxy.counts[ApiKey.METADATA] > metadata_before, "metadata refreshed"
        return results


def test_not_leader_is_retried_after_a_metadata_refresh_in_order(broker):
    """max_in_flight=1 (as with the Java client): a batch that failed goes out again before
    the batches made after it, so each partition keeps the send order."""
    topic = new_topic(broker, partitions=2)

    async def scenario():
        async with KafkaProxy(broker.host, broker.port,
                              intercept=_inject_not_leader_into({2, 3, 7})) as proxy:
            results = await _produce_through(proxy, topic, 1000, max_in_flight=1)
            assert proxy.counts[ApiKey.PRODUCE] >= 13  # >= 10 batches a partition, 3 failed
            return results
    results = run(scenario())
    records = run(consume_all(broker.bootstrap, topic, 1000))
    for p in (0, 1):
        values = [r.value for r in records if r.partition == p]
        assert values == [b"%04d" % i for i in range(p, 1000, 2)], "each once, in order"
        assert [m.offset for m in results if m.partition == p] == list(range(500))


def test_retries_with_a_pipeline_deliver_each_record_once(broker):
    """max_in_flight=5 without idempotence: batches sent after a failed one may be written
    first, but every record is written exactly once and its future has its offset. (With
    idempotence, the default, order holds too: tests/test_client_idempotence.py.)"""
    topic = new_topic(broker, partitions=2)

    async def scenario():
        async with KafkaProxy(broker.host, broker.port,
                              intercept=_inject_not_leader_into({2, 3})) as proxy:
            return await _produce_through(proxy, topic, 1000, max_in_flight=5,
                                          enable_idempotence=False)
    results = run(scenario())
    records = run(consume_all(broker.bootstrap, topic, 1000))
    assert sorted(r.value for r in records) == [b"%04d" % i for i in range(1000)]
    written = {(r.partition, r.offset): r.value for r in records}
    assert {(m.partition, m.offset): b"%04d" % i for i, m in enumerate(results)} == written


def test_dropped_connection_is_retried(broker):
    topic = new_topic(broker)

    def intercept(key, version, body, count):
        return CLOSE if key == ApiKey.PRODUCE and count == 1 else None

    async def scenario():
        async with KafkaProxy(broker.host, broker.port, intercept=intercept) as proxy:
            async with AsyncProducer(proxy.bootstrap, retry_backoff_ms=20,
                                     max_in_flight=1) as producer:
                futures = [await producer.send(topic, b"%d" % i) for i in range(200)]
                return await asyncio.gather(*futures)
    results = run(scenario())
    assert [m.offset for m in results] == list(range(200))
    records = run(consume_all(broker.bootstrap, topic, 200))
    assert [r.value for r in records] == [b"%d" % i for i in range(200)]


def test_non_retriable_error_fails_the_records_without_retry(broker):
    topic = new_topic(broker)

    def intercept(key, version, body, count):
        if key == ApiKey.PRODUCE:
            return _produce_error_response(version, body, ErrorCode.MESSAGE_TOO_LARGE)
        return None

    async def scenario():
        async with KafkaProxy(broker.host, broker.port, intercept=intercept) as proxy:
            async with AsyncProducer(proxy.bootstrap) as producer:
                future = await producer.send(topic, b"x")
                with pytest.raises(MessageTooLargeError) as caught:
                    await future
                assert caught.value.error_code == ErrorCode.MESSAGE_TOO_LARGE
                assert not caught.value.retriable
                assert proxy.counts[ApiKey.PRODUCE] == 1
    run(scenario())


def test_consumer_follows_a_not_leader_answer(broker):
    topic = new_topic(broker)

    def intercept(key, version, body, count):
        if key == ApiKey.FETCH and count <= 2:
            from kio.index import load_response_schema
            from pylog.client.messages import build
            return build(load_response_schema(ApiKey.FETCH, version), {
                "throttle_time": 0, "error_code": 0, "session_id": 0, "responses": [
                    {"topic": t.topic, "partitions": [
                        {"partition_index": p.partition,
                         "error_code": ErrorCode.NOT_LEADER_OR_FOLLOWER, "high_watermark": -1,
                         "aborted_transactions": None, "records": b""}
                        for p in t.partitions]} for t in body.topics]})
        return None

    async def scenario():
        async with AsyncProducer(broker.bootstrap) as producer:
            for i in range(50):
                await producer.send(topic, b"%d" % i)
        async with KafkaProxy(broker.host, broker.port, intercept=intercept) as proxy:
            records = await consume_all(proxy.bootstrap, topic, 50, retry_backoff_ms=20)
            assert proxy.counts[ApiKey.FETCH] >= 3
            assert proxy.counts[ApiKey.METADATA] >= 2
            return records
    records = run(scenario())
    assert [r.value for r in records] == [b"%d" % i for i in range(50)]


@pytest.mark.parametrize("check_crcs", [True, False])
def test_corrupted_fetch_is_caught_by_the_crc(broker, check_crcs):
    topic = new_topic(broker)

    def rewrite(key, version, body):
        if key != ApiKey.FETCH:
            return body
        responses = []
        for t in body.responses:
            parts = []
            for p in t.partitions:
                records = p.records or b""
                if b"PAYLOAD" in records:
                    records = records.replace(b"PAYLOAD", b"PAYLOAX")
                parts.append(dataclasses.replace(p, records=records))
            responses.append(dataclasses.replace(t, partitions=tuple(parts)))
        return dataclasses.replace(body, responses=tuple(responses))

    async def scenario():
        async with AsyncProducer(broker.bootstrap) as producer:
            await producer.send_and_wait(topic, b"PAYLOAD-1")
        async with KafkaProxy(broker.host, broker.port, rewrite=rewrite) as proxy:
            async with AsyncConsumer(proxy.bootstrap, check_crcs=check_crcs,
                                     fetch_max_wait_ms=50) as consumer:
                consumer.assign([(topic, 0)])
                consumer.seek(((topic, 0)), 0)
                if check_crcs:
                    with pytest.raises(CorruptRecordError, match="crc"):
                        for _ in range(50):
                            await consumer.getmany(timeout_ms=200)
                else:
                    got = await consumer.getmany(timeout_ms=5000)
                    assert got[(topic, 0)][0].value == b"PAYLOAX-1"
    run(scenario())

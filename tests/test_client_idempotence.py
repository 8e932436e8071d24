"""pylog's idempotent producer against `pylog serve` (which checks sequences and deduplicates
retries): the producer id, epoch and per-partition sequences in the stored batches (read back
with dump-log's reader), a lost acknowledgement retried and written once (and twice without
idempotence, which shows what the test catches), ordering with 5 batches in flight when one
fails, and the answers that fail a batch and reset the producer id (45 for the next expected
batch, 59) injected through a proxy."""
import asyncio
import dataclasses
import itertools
import os
import time

import pytest

from broker_fixture import BrokerFactory
from client_support import DROP_ANSWER, KafkaProxy
from pylog.client import AsyncAdmin, AsyncConsumer, AsyncProducer, UnsupportedVersionError
from pylog.client.errors import OutOfOrderSequenceError, UnknownProducerIdError
from pylog.protocol import ApiKey, ErrorCode
from pylog.storage.dump import segment_files, walk_file
from pylog.storage.names import partition_dir_name

_names = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    factory = BrokerFactory(tmp_path_factory.mktemp("idempotence"))
    running = factory.start()
    yield running
    factory.cleanup(failed=request.session.testsfailed > 0)


def run(coro, timeout=60):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def new_topic(broker, partitions=1):
    name = f"idem-{next(_names)}-{time.monotonic_ns() % 10**9}"

    async def create():
        async with AsyncAdmin(broker.bootstrap) as admin:
            await admin.create_topics(name, partitions=partitions)
    run(create())
    return name


def stored_batches(broker, topic, partition):
    """The batch headers stored for one partition (BatchInfo), in offset order."""
    path = os.path.join(broker.data_dir, partition_dir_name(topic, partition))
    batches = []
    for segment in segment_files(path):
        dumped = walk_file(segment)
        assert dumped.intact, dumped.problems
        batches += [b.info for b in dumped.batches]
    return batches


async def read_all(bootstrap, topic, partitions):
    """Every record of the partitions, from the start, until a quiet fetch."""
    async with AsyncConsumer(bootstrap, fetch_max_wait_ms=100) as consumer:
        consumer.assign([(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records = []
        while batch := await consumer.getmany(timeout_ms=1000):
            for recs in batch.values():
                records.extend(recs)
        return records


def produce_answer(version, body, code, *, log_start_offset=-1):
    """A Produce answer with ``code`` for every partition of ``body`` (the broker never
    sees the request)."""
    from kio.index import load_response_schema

    from pylog.client.messages import build
    return build(load_response_schema(ApiKey.PRODUCE, version), {"responses": [
        {"name": t.name, "partition_responses": [
            {"index": p.index, "error_code": code, "base_offset": -1,
             "log_start_offset": log_start_offset, "record_errors": []}
            for p in t.partition_data]} for t in body.topic_data]})


async def send_all(producer, topic, count, partitions=1):
    futures = [await producer.send(topic, b"%05d" % i, partition=i % partitions)
               for i in range(count)]
    return await asyncio.gather(*futures, return_exceptions=True)


# ---- configuration --------------------------------------------------------------------------


def test_idempotence_is_the_default_and_needs_acks_all():
    assert AsyncProducer().idempotent
    assert not AsyncProducer(acks=1).idempotent  # not asked for: left off, as in Java
    assert not AsyncProducer(max_in_flight=6).idempotent
    assert not AsyncProducer(enable_idempotence=False).idempotent
    for conflicting in ({"acks": 1}, {"acks": 0}, {"retries": 0}, {"max_in_flight": 6}):
        with pytest.raises(ValueError, match="enable_idempotence needs"):
            AsyncProducer(enable_idempotence=True, **conflicting)


# ---- what the batches carry -----------------------------------------------------------------


def test_batches_carry_the_producer_id_epoch_and_record_sequences(broker):
    topic = new_topic(broker, partitions=2)

    async def scenario():
        async with AsyncProducer(broker.bootstrap, batch_size=300, linger_ms=50) as producer:
            assert producer.producer_id >= 0 and producer.producer_epoch >= 0
            results = await send_all(producer, topic, 400, partitions=2)
            return producer.producer_id, producer.producer_epoch, results
    producer_id, epoch, results = run(scenario())
    assert all(not isinstance(r, BaseException) for r in results)
    for partition in (0, 1):
        batches = stored_batches(broker, topic, partition)
        assert len(batches) > 5, "small batches: many of them"
        assert {(b.producer_id, b.producer_epoch) for b in batches} == {(producer_id, epoch)}
        expected, sequence = [], 0
        for b in batches:
            expected.append(sequence)
            sequence += b.record_count
        assert [b.base_sequence for b in batches] == expected
        assert sequence == 200


def test_without_idempotence_batches_carry_no_producer(broker):
    topic = new_topic(broker)

    async def scenario():
        async with AsyncProducer(broker.bootstrap, enable_idempotence=False) as producer:
            await send_all(producer, topic, 50)
    run(scenario())
    batches = stored_batches(broker, topic, 0)
    assert {(b.producer_id, b.producer_epoch, b.base_sequence) for b in batches} == {(-1, -1, -1)}


# ---- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_lost_acknowledgement_is_retried_and_written_once(broker, idempotent):
    """The proxy lets the broker append the 3rd Produce request and then drops the
    connection before the answer: the producer re-sends every batch it had in flight. With
    idempotence the broker recognises them; without, the log holds duplicates."""
    topic = new_topic(broker, partitions=2)

    def intercept(key, version, body, count):
        return DROP_ANSWER if key == ApiKey.PRODUCE and count == 3 else None

    async def scenario():
        async with KafkaProxy("127.0.0.1", broker.port, intercept=intercept) as proxy:
            async with AsyncProducer(proxy.bootstrap, enable_idempotence=idempotent,
                                     batch_size=400, linger_ms=20, retry_backoff_ms=20,
                                     max_in_flight=5) as producer:
                results = await send_all(producer, topic, 600, partitions=2)
            assert proxy.counts[ApiKey.PRODUCE] > 3
            return results
    results = run(scenario())
    assert all(not isinstance(r, BaseException) for r in results), results
    records = run(read_all(broker.bootstrap, topic, [0, 1]))
    values = [r.value for r in records]
    if not idempotent:
        assert len(values) > 600, "the retry wrote the lost batch again"
        return
    assert sorted(values) == [b"%05d" % i for i in range(600)], "each record once"
    for p in (0, 1):
        assert [r.value for r in records if r.partition == p] == \
            [b"%05d" % i for i in range(p, 600, 2)], "in send order"
    assert {(m.partition, m.offset) for m in results} == \
        {(r.partition, r.offset) for r in records}, "futures name the stored offsets"


def test_batches_behind_a_failed_one_are_resent_in_order_with_five_in_flight(broker):
    """The 2nd Produce request is answered NOT_LEADER_OR_FOLLOWER by the proxy (the broker
    never sees it); up to 4 requests behind it reach the broker, which refuses them with
    OUT_OF_ORDER_SEQUENCE_NUMBER (a gap); the producer re-sends all of them in order."""
    topic = new_topic(broker)
    refused = []

    def intercept(key, version, body, count):
        if key == ApiKey.PRODUCE and count == 2:
            return produce_answer(version, body, ErrorCode.NOT_LEADER_OR_FOLLOWER)
        return None

    def rewrite(key, version, body):
        if key == ApiKey.PRODUCE:
            refused.extend(p.error_code for t in body.responses for p in t.partition_responses
                           if p.error_code)
        return body

    async def scenario():
        async with KafkaProxy("127.0.0.1", broker.port, intercept=intercept,
                              rewrite=rewrite) as proxy:
            async with AsyncProducer(proxy.bootstrap, batch_size=200, linger_ms=0,
                                     retry_backoff_ms=50, max_in_flight=5) as producer:
                futures = [await producer.send(topic, b"%05d" % i) for i in range(300)]
                return await asyncio.gather(*futures)
    results = run(scenario())
    assert [m.offset for m in results] == list(range(300))
    records = run(read_all(broker.bootstrap, topic, [0]))
    assert [r.value for r in records] == [b"%05d" % i for i in range(300)]
    assert ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER in refused, \
        "batches behind the failed one reached the broker and were refused"


# ---- answers that fail a batch and reset the producer id ----------------------------------------


def _inject_once(request_number, code, **answer):
    def intercept(key, version, body, count):
        if key == ApiKey.PRODUCE and count == request_number:
            return produce_answer(version, body, code, **answer)
        return None
    return intercept


def _pids_and_sequences(broker, topic):
    return [(b.producer_id, b.base_sequence, b.record_count)
            for b in stored_batches(broker, topic, 0)]


def test_out_of_order_for_the_next_expected_batch_fails_it_and_resets_the_producer_id(broker):
    topic = new_topic(broker)

    async def scenario():
        async with KafkaProxy("127.0.0.1", broker.port, intercept=_inject_once(
                3, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)) as proxy:
            async with AsyncProducer(proxy.bootstrap, max_in_flight=1, linger_ms=0,
                                     retry_backoff_ms=20) as producer:
                first_id = producer.producer_id
                results = []
                for i in range(6):
                    future = await producer.send(topic, b"%d" % i)
                    results.append(await asyncio.gather(future, return_exceptions=True))
                return first_id, producer.producer_id, proxy.counts[ApiKey.INIT_PRODUCER_ID], \
                    [r[0] for r in results]
    first_id, second_id, inits, results = run(scenario())
    assert isinstance(results[2], OutOfOrderSequenceError)
    assert results[2].error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert [r.offset for i, r in enumerate(results) if i != 2] == [0, 1, 2, 3, 4]
    assert inits == 2 and second_id != first_id
    assert _pids_and_sequences(broker, topic) == [
        (first_id, 0, 1), (first_id, 1, 1),
        (second_id, 0, 1), (second_id, 1, 1), (second_id, 2, 1)]


@pytest.mark.parametrize("log_start,retried", [(1000, True), (0, False)])
def test_unknown_producer_id(broker, log_start, retried):
    """59 with a log start past the last acknowledged offset (retention removed the
    producer): the batch goes again under a new producer id. Otherwise it fails with
    UnknownProducerIdError (and the producer id is reset too)."""
    topic = new_topic(broker)

    async def scenario():
        async with KafkaProxy("127.0.0.1", broker.port, intercept=_inject_once(
                3, ErrorCode.UNKNOWN_PRODUCER_ID, log_start_offset=log_start)) as proxy:
            async with AsyncProducer(proxy.bootstrap, max_in_flight=1, linger_ms=0,
                                     retry_backoff_ms=20) as producer:
                first_id = producer.producer_id
                results = []
                for i in range(4):
                    future = await producer.send(topic, b"%d" % i)
                    results.append((await asyncio.gather(future, return_exceptions=True))[0])
                return first_id, producer.producer_id, proxy.counts[ApiKey.INIT_PRODUCER_ID], \
                    results
    first_id, second_id, inits, results = run(scenario())
    assert inits == 2 and second_id != first_id
    values = [r.value for r in run(read_all(broker.bootstrap, topic, [0]))]
    if retried:
        assert [r.offset for r in results] == [0, 1, 2, 3]
        assert values == [b"0", b"1", b"2", b"3"]
        assert _pids_and_sequences(broker, topic) == [
            (first_id, 0, 1), (first_id, 1, 1), (second_id, 0, 1), (second_id, 1, 1)]
    else:
        assert isinstance(results[2], UnknownProducerIdError)
        assert [results[i].offset for i in (0, 1, 3)] == [0, 1, 2]
        assert values == [b"0", b"1", b"3"]


def test_a_broker_without_init_producer_id_is_a_clear_error(broker):
    def rewrite(key, version, body):
        if key == ApiKey.API_VERSIONS:
            return dataclasses.replace(body, api_keys=tuple(
                k for k in body.api_keys if k.api_key != ApiKey.INIT_PRODUCER_ID))
        return body

    topic = new_topic(broker)

    async def scenario():
        async with KafkaProxy("127.0.0.1", broker.port, rewrite=rewrite) as proxy:
            with pytest.raises(UnsupportedVersionError, match="enable_idempotence=False"):
                await AsyncProducer(proxy.bootstrap).start()
            async with AsyncProducer(proxy.bootstrap, enable_idempotence=False) as producer:
                await producer.send_and_wait(topic, b"fine")
    run(scenario())

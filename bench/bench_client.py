"""pylog's native producer (and consumer) against a `pylog serve` process: records/s.

    pytest bench/bench_client.py --benchmark-only

One round produces ``RECORDS`` records of 100 B or 1 KiB (8-byte keys, acks=1, linger 5 ms,
64 KiB batches, one partition) with ``AsyncProducer`` and waits for every acknowledgement;
records/s and MB/s of the median round are in ``extra_info`` (and printed). The consume
benchmark reads the same number of records back from the start with ``AsyncConsumer``. The
broker is started once per session from tests/broker_fixture.py (F2's launcher); its data
directory is a temporary directory on the same disk as the tests.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from broker_fixture import BrokerFactory  # noqa: E402

from pylog.client import AsyncAdmin, AsyncConsumer, AsyncProducer  # noqa: E402

RECORDS = 100_000
_topics = itertools.count()


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    factory = BrokerFactory(tmp_path_factory.mktemp("bench-client"))
    running = factory.start(settings={"log.segment.bytes": 256 << 20})
    yield running.bootstrap
    factory.cleanup(failed=False)


async def _create(bootstrap: str) -> str:
    name = f"bench-client-{os.getpid()}-{next(_topics)}"
    async with AsyncAdmin(bootstrap) as admin:
        await admin.create_topics(name)
    return name


async def _produce(bootstrap: str, topic: str, size: int, records: int) -> None:
    payload = os.urandom(size)
    async with AsyncProducer(bootstrap, acks=1, linger_ms=5, batch_size=65536) as producer:
        send = producer.send
        for i in range(records):
            await send(topic, payload, key=i.to_bytes(8, "big"))
            if i & 1023 == 1023:
                await asyncio.sleep(0)
        await producer.flush()


async def _consume(bootstrap: str, topic: str, records: int) -> None:
    async with AsyncConsumer(bootstrap, fetch_max_wait_ms=100) as consumer:
        await consumer.assign_topic(topic)
        consumer.seek_to_beginning()
        seen = 0
        while seen < records:
            batch = await consumer.getmany(timeout_ms=10_000)
            if not batch:
                raise AssertionError(f"only {seen} of {records} records came back")
            seen += sum(len(r) for r in batch.values())


def _report(benchmark, size: int, label: str) -> None:
    median = benchmark.stats.stats.median
    rate = RECORDS / median
    benchmark.extra_info.update(records_per_s=round(rate), mb_per_s=round(rate * size / 1e6, 1))
    print(f"\n{label} {size} B: {rate:,.0f} records/s, {rate * size / 1e6:.1f} MB/s")


@pytest.mark.parametrize("size", [100, 1024])
def test_produce(benchmark, bootstrap, size):
    def one_round():
        topic = asyncio.run(_create(bootstrap))
        asyncio.run(_produce(bootstrap, topic, size, RECORDS))
    benchmark.pedantic(one_round, rounds=3, iterations=1)
    _report(benchmark, size, "produce")


@pytest.mark.parametrize("size", [100, 1024])
def test_consume(benchmark, bootstrap, size):
    topic = asyncio.run(_create(bootstrap))
    asyncio.run(_produce(bootstrap, topic, size, RECORDS))
    benchmark.pedantic(lambda: asyncio.run(_consume(bootstrap, topic, RECORDS)), rounds=3,
                       iterations=1)
    _report(benchmark, size, "consume")

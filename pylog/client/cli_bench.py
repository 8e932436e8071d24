"""`pylog bench produce|consume`: one bounded throughput run with the native client.

Produce: ``records`` records of ``size`` random bytes (one payload, reused) with an 8-byte
sequence key, sent as fast as the producer takes them; the latency of a record is from
``send`` to its acknowledgement (sampled: at most ~20,000 records carry a timer). Consume: reads
``records`` records from the start of the topic; when the records were written while this run
was going (their CreateTime is after its start), the latency is end-to-end (now - record
timestamp), otherwise it is the time each fetch call waited. Progress is reported through a
callback (the CLI draws a bar with it).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from pylog.client.admin import AsyncAdmin
from pylog.client.consumer import AsyncConsumer
from pylog.client.errors import KafkaError, TopicAlreadyExistsError
from pylog.client.producer import AsyncProducer

_MAX_SAMPLES = 20_000
_PROGRESS_EVERY = 1_000


@dataclass
class BenchResult:
    mode: str
    records: int
    bytes: int
    seconds: float
    latency_kind: str
    p50_ms: float
    p99_ms: float
    errors: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.mode}: {self.records} records, {self.bytes / 1e6:.1f} MB in "
                f"{self.seconds:.2f} s: {self.records_per_s:,.0f} records/s, "
                f"{self.mb_per_s:.2f} MB/s; {self.latency_kind} latency p50 "
                f"{self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
                + (f"; {self.errors} errors" if self.errors else ""))


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    async with AsyncAdmin(bootstrap) as admin:
        try:
            await admin.create_topics(topic, partitions=partitions)
        except TopicAlreadyExistsError:
            pass


async def bench_produce(bootstrap: str, *, topic: str, records: int, size: int, acks,
                        partitions: int, linger_ms: float, batch_size: int,
                        compression: str | None,
                        progress: Callable[[int], None] = lambda n: None) -> BenchResult:
    await ensure_topic(bootstrap, topic, partitions)
    payload = os.urandom(size)
    stride = max(1, records // _MAX_SAMPLES)
    latencies: list[float] = []
    errors = 0

    def on_done(sent_at: float, future: asyncio.Future) -> None:
        nonlocal errors
        if future.exception() is not None:
            errors += 1
        else:
            latencies.append(time.perf_counter() - sent_at)

    async with AsyncProducer(bootstrap, acks=acks, linger_ms=linger_ms, batch_size=batch_size,
                             compression=compression, client_id="pylog-bench") as producer:
        start = time.perf_counter()
        for i in range(records):
            future = await producer.send(topic, payload, key=i.to_bytes(8, "big"))
            if i % stride == 0:
                future.add_done_callback(lambda f, t=time.perf_counter(): on_done(t, f))
            if i % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
                progress(_PROGRESS_EVERY)
                await asyncio.sleep(0)  # let the sender and the answers run
        await producer.flush()
        elapsed = time.perf_counter() - start
        progress(records % _PROGRESS_EVERY)
    latencies.sort()
    return BenchResult("produce", records, records * size, elapsed, "ack",
                       percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000,
                       errors)


async def bench_consume(bootstrap: str, *, topic: str, records: int, timeout_ms: int = 10_000,
                        progress: Callable[[int], None] = lambda n: None) -> BenchResult:
    async with AsyncConsumer(bootstrap, auto_offset_reset="earliest",
                             client_id="pylog-bench") as consumer:
        await consumer.assign_topic(topic)
        consumer.seek_to_beginning()
        start_wall_ms = time.time() * 1000
        start = time.perf_counter()
        received = 0
        total_bytes = 0
        e2e: list[float] = []
        waits: list[float] = []
        all_recent = True  # every record written after this run started: e2e is meaningful
        last_data = time.perf_counter()
        while received < records:
            before = time.perf_counter()
            batch = await consumer.getmany(timeout_ms=500, max_records=records - received)
            now = time.perf_counter()
            if not batch:
                if (now - last_data) * 1000 > timeout_ms:
                    raise KafkaError(f"only {received} of {records} records arrived in "
                                     f"{topic!r} (idle for {timeout_ms} ms)")
                continue
            last_data = now
            waits.append(now - before)
            now_ms = time.time() * 1000
            n = 0
            for recs in batch.values():
                n += len(recs)
                for r in recs:
                    total_bytes += len(r.value or b"")
                if recs[0].timestamp < start_wall_ms:
                    all_recent = False
                e2e.append(now_ms - recs[0].timestamp)
                e2e.append(now_ms - recs[-1].timestamp)
            received += n
            progress(n)
        elapsed = time.perf_counter() - start
    if all_recent:
        e2e.sort()
        return BenchResult("consume", received, total_bytes, elapsed, "end-to-end",
                           percentile(e2e, 0.50), percentile(e2e, 0.99))
    waits.sort()
    return BenchResult("consume", received, total_bytes, elapsed, "fetch",
                       percentile(waits, 0.50) * 1000, percentile(waits, 0.99) * 1000)

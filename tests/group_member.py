"""One consumer-group member in its own process, for tests/test_interop_groups.py.

    python tests/group_member.py CLIENT BOOTSTRAP GROUP TOPIC [--batch N] [--pause-ms M]
                                 [--deadline-s S]

CLIENT is ``confluent``, ``kafka-python`` or ``aiokafka`` (kcat runs as itself). The member
subscribes to TOPIC in GROUP with session timeouts of 3 s (heartbeats every 0.5 s), reads from
the earliest offset when the group has no committed offset, and loops: poll at most ``--batch``
records, print one line per record, ``R <partition> <offset> <value>``, flushed, then commit
synchronously, then sleep ``--pause-ms``. So whatever a commit covers was printed before it:
a record the process printed may be uncommitted (it was killed before the commit), never the
other way round. The value is printed as text (the tests write ASCII values).

It stops on SIGTERM (closing the consumer cleanly, which leaves the group at once) or after
``--deadline-s``; a SIGKILL is the crash the tests are about.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

SESSION_TIMEOUT_MS = 3000
HEARTBEAT_MS = 500
POLL_MS = 600       # kafka-python: longer than a rebalance (see test_group_kafka_python.py)


class Stop:
    """Set by SIGTERM; every loop checks it between polls."""
    requested = False


def _on_sigterm(_signum, _frame) -> None:
    Stop.requested = True


def emit(partition: int, offset: int, value: bytes | None) -> None:
    text = "" if value is None else value.decode("ascii", "replace")
    sys.stdout.write(f"R {partition} {offset} {text}\n")
    sys.stdout.flush()


def run_confluent(args: argparse.Namespace, end: float) -> None:
    from confluent_kafka import Consumer
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group,
        "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": HEARTBEAT_MS,
        "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    try:
        while not Stop.requested and time.monotonic() < end:
            messages = [m for m in consumer.consume(args.batch, POLL_MS / 1000)
                        if m.error() is None]
            for m in messages:
                emit(m.partition(), m.offset(), m.value())
            if messages:
                consumer.commit(asynchronous=False)
            if args.pause_ms:
                time.sleep(args.pause_ms / 1000)
    finally:
        consumer.close()


def run_kafka_python(args: argparse.Namespace, end: float) -> None:
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=args.group,
        session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_MS,
        auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=args.batch)
    consumer.subscribe([args.topic])
    try:
        while not Stop.requested and time.monotonic() < end:
            batches = consumer.poll(timeout_ms=POLL_MS)
            for tp, records in batches.items():
                for r in records:
                    emit(tp.partition, r.offset, r.value)
            if batches:
                consumer.commit()
            if args.pause_ms:
                time.sleep(args.pause_ms / 1000)
    finally:
        consumer.close()


async def run_aiokafka(args: argparse.Namespace, end: float) -> None:
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
        session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_MS,
        auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=args.batch)
    await consumer.start()
    try:
        while not Stop.requested and time.monotonic() < end:
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            for tp, records in batches.items():
                for r in records:
                    emit(tp.partition, r.offset, r.value)
            if batches:
                await consumer.commit()
            if args.pause_ms:
                await asyncio.sleep(args.pause_ms / 1000)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("client", choices=("confluent", "kafka-python", "aiokafka"))
    parser.add_argument("bootstrap")
    parser.add_argument("group")
    parser.add_argument("topic")
    parser.add_argument("--batch", type=int, default=500, help="records per poll at most")
    parser.add_argument("--pause-ms", type=int, default=0, help="sleep after each poll")
    parser.add_argument("--deadline-s", type=float, default=60.0, help="exit after S s")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    end = time.monotonic() + args.deadline_s
    if args.client == "confluent":
        run_confluent(args, end)
    elif args.client == "kafka-python":
        run_kafka_python(args, end)
    else:
        asyncio.run(run_aiokafka(args, end))


if __name__ == "__main__":
    main()

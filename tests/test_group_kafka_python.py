"""kafka-python's KafkaConsumer with a group_id against a real `pylog serve`: two members split
a 6-partition topic between them, each reads exactly its partitions and commits; after a
broker restart the committed offsets are all there and a new member of the group resumes
right after them. Session timeouts of 3 s, heartbeats every 0.5 s.

kafka-python 3.0.12 has a race this test steers clear of: a leader whose first assignment was
made before it knew the topic's partitions re-joins on its own (its assignment snapshot differs
from the metadata); if that JoinGroup is held for a rebalance longer than a ``poll()`` timeout,
the client may never consume the finished join (``need_rejoin()`` turns False meanwhile) and
stops heartbeating, whatever the broker (observed against pylog; the same timing arises with
Kafka). So the second member starts once the first one holds every partition, and polls are
long enough to cover a rebalance."""
from __future__ import annotations

import threading
import time

import pytest

from interop_support import create_topic

kafka = pytest.importorskip("kafka")
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient  # noqa: E402

TOPIC = "orders"
GROUP = "billing"
PARTITIONS = 6
PER_PARTITION = 10
DEADLINE_S = 30.0
POLL_MS = 600       # longer than a rebalance here (heartbeats every 0.5 s)


def _consumer(bootstrap: str, client_id: str) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, client_id=client_id,
                             session_timeout_ms=3000, heartbeat_interval_ms=500,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.subscribe([TOPIC])
    return consumer


def _produce(bootstrap: str, per_partition: int, tag: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for p in range(PARTITIONS):
            for i in range(per_partition):
                producer.send(TOPIC, value=f"{tag}-{p}-{i}".encode(), partition=p)
        producer.flush(timeout=DEADLINE_S)
    finally:
        producer.close(timeout=10)


class Member(threading.Thread):
    """One KafkaConsumer, used only by its own thread (kafka-python consumers are not
    thread-safe): polls, records what it reads and its assignment, and once ``commit_event``
    is set and it has read PER_PARTITION records of each of its partitions, commits."""

    def __init__(self, bootstrap: str, name: str):
        super().__init__(name=name, daemon=True)
        self.bootstrap = bootstrap
        self.assignment: frozenset[int] = frozenset()
        self.read: dict[int, list[tuple[int, bytes]]] = {}
        self.commit_event = threading.Event()
        self.committed = threading.Event()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            consumer = _consumer(self.bootstrap, self.name)
            try:
                deadline = time.monotonic() + DEADLINE_S
                while not self.stop_event.is_set() and time.monotonic() < deadline:
                    for tp, records in consumer.poll(timeout_ms=POLL_MS).items():
                        self.read.setdefault(tp.partition, []).extend(
                            (r.offset, r.value) for r in records)
                    self.assignment = frozenset(tp.partition for tp in consumer.assignment())
                    if (self.commit_event.is_set() and not self.committed.is_set()
                            and self.assignment and all(
                                len(self.read.get(p, ())) >= PER_PARTITION
                                for p in self.assignment)):
                        consumer.commit()
                        self.committed.set()
            finally:
                consumer.close()
        except BaseException as e:  # reported by the test thread
            self.error = e


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_two_members_split_the_topic_commit_and_keep_offsets_over_a_restart(broker_factory):
    broker = broker_factory.start()
    create_topic(broker, TOPIC, PARTITIONS)
    members = [Member(broker.bootstrap, "member-a"), Member(broker.bootstrap, "member-b")]
    members[0].start()
    try:
        _wait(lambda: members[0].assignment == set(range(PARTITIONS)), "the first member")
        members[1].start()
        def split() -> bool:
            a, b = (m.assignment for m in members)
            return bool(a) and bool(b) and not a & b and a | b == set(range(PARTITIONS))
        _wait(split, "the two members to split the partitions")
        for member in members:
            member.commit_event.set()
        _produce(broker.bootstrap, PER_PARTITION, "first")
        _wait(lambda: all(m.committed.is_set() for m in members), "every record and commit")
        for member in members:
            assert set(member.read) == set(member.assignment)   # only its own partitions
            for p, got in member.read.items():
                assert got == [(i, f"first-{p}-{i}".encode()) for i in range(PER_PARTITION)]
    finally:
        for member in members:
            member.stop_event.set()
        for member in members:
            if member.ident is not None:    # started
                member.join(DEADLINE_S)
    assert all(m.error is None for m in members), [m.error for m in members]

    broker.stop()
    broker = broker_factory.start(broker.data_dir)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        committed = admin.list_group_offsets(GROUP)[GROUP]
        assert {tp.partition: o.offset for tp, o in committed.items() if tp.topic == TOPIC} \
            == {p: PER_PARTITION for p in range(PARTITIONS)}
    finally:
        admin.close()

    _produce(broker.bootstrap, 1, "second")
    consumer = _consumer(broker.bootstrap, "member-c")
    try:
        got: dict[int, list] = {}
        deadline = time.monotonic() + DEADLINE_S
        while sum(map(len, got.values())) < PARTITIONS and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=POLL_MS).items():
                got.setdefault(tp.partition, []).extend((r.offset, r.value) for r in records)
        assert got == {p: [(PER_PARTITION, f"second-{p}-0".encode())]
                       for p in range(PARTITIONS)}
        assert consumer.committed(TopicPartition(TOPIC, 0)) == PER_PARTITION
    finally:
        consumer.close()

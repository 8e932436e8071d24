"""Consumer groups with pylog's client, against `pylog serve` (and Tansu with
PYLOG_TEST_TANSU=1): two members split a 6-partition topic and one takes everything over when
the other closes, or when it is SIGKILLed (after the session timeout, reading exactly from
the committed offsets on), a restarted member resumes from the committed offsets, commits
round-trip, rebalance callbacks, coordinator errors. Without a broker: the range and
roundrobin assignors give the Java client's assignments, and the consumer protocol bytes are
the Java client's."""
import asyncio
import collections
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_support import KafkaProxy, broker  # noqa: F401 - broker is a fixture
from pylog.client import (
    AsyncAdmin,
    AsyncConsumer,
    AsyncProducer,
    CommitFailedError,
    Consumer,
    ConsumerRebalanceListener,
    OffsetAndMetadata,
    RangeAssignor,
    RoundRobinAssignor,
)
from pylog.client.assignors import MemberSubscription, resolve_assignors
from pylog.client.consumer_protocol import (
    Assignment,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from pylog.protocol import ApiKey, ErrorCode

_names = itertools.count()
FAST = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 200, "fetch_max_wait_ms": 100,
        "retry_backoff_ms": 50}


def run(coro, timeout=60):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def unique(prefix):
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**9}"


def new_topic(broker, partitions=6):
    name = unique("gt")

    async def create():
        async with AsyncAdmin(broker.bootstrap) as admin:
            await admin.create_topics(name, partitions=partitions)
    run(create())
    return name


async def produce(bootstrap, topic, count, partitions=6, start=0):
    async with AsyncProducer(bootstrap, linger_ms=2) as producer:
        futures = [await producer.send(topic, b"%d" % i, partition=i % partitions)
                   for i in range(start, start + count)]
        await asyncio.gather(*futures)


async def wait_until(condition, timeout=20.0, what="condition"):
    """Poll ``condition`` (sync or async) every 20 ms until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def polled(consumer, predicate):
    """An async condition that first drives ``consumer`` (one short getmany: rebalances run
    inside getmany) and then checks ``predicate``. It asks only for a partition nobody has,
    so no record is taken from the consumer."""
    async def condition():
        assert await consumer.getmany(("-no-such-topic-", 0), timeout_ms=50) == {}
        return predicate()
    return condition


class Collector:
    """Runs getmany in a task and keeps (partition, offset) of everything received."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.received: list[tuple[int, int]] = []
        self._stop = False
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        while not self._stop:
            for tp, records in (await self.consumer.getmany(timeout_ms=100)).items():
                self.received += [(tp.partition, r.offset) for r in records]

    async def stop(self):
        self._stop = True
        await self.task

    def offsets(self, partition):
        return [o for p, o in self.received if p == partition]


# ---- assignors and protocol bytes (no broker) -----------------------------------------------


def _assign(assignor, counts, members):
    subs = {m: MemberSubscription(tuple(t)) if not isinstance(t, MemberSubscription) else t
            for m, t in members.items()}
    return {m: sorted(tps) for m, tps in assignor.assign(counts, subs).items()}


# Expected results from Kafka's RangeAssignorTest / RoundRobinAssignorTest.
JAVA_CASES = [
    (RangeAssignor(), {"t": 3}, {"c1": ["t"], "c2": ["t"]},
     {"c1": [("t", 0), ("t", 1)], "c2": [("t", 2)]}),
    (RangeAssignor(), {"t1": 1, "t2": 2}, {"c": ["t1", "t2"]},
     {"c": [("t1", 0), ("t2", 0), ("t2", 1)]}),
    (RangeAssignor(), {"t1": 3, "t2": 3}, {"c1": ["t1", "t2"], "c2": ["t1", "t2"]},
     {"c1": [("t1", 0), ("t1", 1), ("t2", 0), ("t2", 1)], "c2": [("t1", 2), ("t2", 2)]}),
    (RangeAssignor(), {"t1": 3, "t2": 2},
     {"c1": ["t1"], "c2": ["t1", "t2"], "c3": ["t1"]},
     {"c1": [("t1", 0)], "c2": [("t1", 1), ("t2", 0), ("t2", 1)], "c3": [("t1", 2)]}),
    (RangeAssignor(), {"t": 6}, {"a": ["t"], "b": ["t"], "c": []},
     {"a": [("t", 0), ("t", 1), ("t", 2)], "b": [("t", 3), ("t", 4), ("t", 5)], "c": []}),
    (RangeAssignor(), {"t": 2}, {"c": ["t", "missing"]}, {"c": [("t", 0), ("t", 1)]}),
    (RoundRobinAssignor(), {"t1": 3, "t2": 3}, {"c1": ["t1", "t2"], "c2": ["t1", "t2"]},
     {"c1": [("t1", 0), ("t1", 2), ("t2", 1)], "c2": [("t1", 1), ("t2", 0), ("t2", 2)]}),
    (RoundRobinAssignor(), {"t1": 3, "t2": 2},
     {"c1": ["t1"], "c2": ["t1", "t2"], "c3": ["t1"]},
     {"c1": [("t1", 0)], "c2": [("t1", 1), ("t2", 0), ("t2", 1)], "c3": [("t1", 2)]}),
    (RoundRobinAssignor(), {"t0": 1, "t1": 2, "t2": 3},
     {"C0": ["t0"], "C1": ["t0", "t1"], "C2": ["t0", "t1", "t2"]},
     {"C0": [("t0", 0)], "C1": [("t1", 0)], "C2": [("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]}),
    # Static members (a group instance id) come first, ordered by instance id.
    (RangeAssignor(), {"t": 5},
     {"a": MemberSubscription(("t",), "z"), "b": MemberSubscription(("t",)),
      "c": MemberSubscription(("t",), "y")},
     {"c": [("t", 0), ("t", 1)], "a": [("t", 2), ("t", 3)], "b": [("t", 4)]}),
    (RoundRobinAssignor(), {"t": 4},
     {"m2": MemberSubscription(("t",)), "m1": MemberSubscription(("t",), "x")},
     {"m1": [("t", 0), ("t", 2)], "m2": [("t", 1), ("t", 3)]}),
]


@pytest.mark.parametrize("assignor,counts,members,expected", JAVA_CASES)
def test_assignors_give_the_java_clients_assignment(assignor, counts, members, expected):
    assert _assign(assignor, counts, members) == expected


def _kafka_python_assign(assignor_cls, counts, members):
    """The same inputs through kafka-python's ports of the Java assignors."""
    Member = collections.namedtuple("Member", "member_id group_instance_id metadata")
    Metadata = collections.namedtuple("Metadata", "topics")

    class ClusterView:
        def partitions_for_topic(self, topic):
            return set(range(counts[topic])) if topic in counts else None
    result = assignor_cls.assign(ClusterView(), [Member(m, None, Metadata(topics))
                                                 for m, topics in members.items()])
    return {m: sorted((t, p) for t, ps in a.assigned_partitions for p in ps)
            for m, a in result.items()}


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 9), min_size=1),
       st.lists(st.text("xyz0123-", min_size=1, max_size=6), min_size=1, max_size=6,
                unique=True),
       st.randoms(use_true_random=False))
def test_assignors_agree_with_kafka_python(counts, member_ids, rnd):
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    topics = sorted(counts)
    members = {m: sorted(rnd.sample(topics, rnd.randint(1, len(topics)))) for m in member_ids}
    assert _assign(RangeAssignor(), counts, members) == \
        _kafka_python_assign(RangePartitionAssignor, counts, members)
    # kafka-python 3.0.12's roundrobin breaks when it must skip a member that is not
    # subscribed to a topic (it keeps a (instance id, member id) tuple as the member id), so
    # compare it where every member subscribes to every topic; JAVA_CASES cover the rest.
    everyone = {m: topics for m in member_ids}
    assert _assign(RoundRobinAssignor(), counts, everyone) == \
        _kafka_python_assign(RoundRobinPartitionAssignor, counts, everyone)


def test_consumer_protocol_bytes_are_the_java_clients():
    from kafka.protocol.old.consumer_protocol import (
        ConsumerProtocolMemberAssignment_v0,
        ConsumerProtocolMemberMetadata_v0,
    )
    # Hand-written from ConsumerProtocolSubscription.json v0 (topics sorted, null user data).
    assert encode_subscription(["b", "a"]) == (
        b"\x00\x00" b"\x00\x00\x00\x02" b"\x00\x01a" b"\x00\x01b" b"\xff\xff\xff\xff")
    assert encode_subscription(["t1", "t2"], b"u") == ConsumerProtocolMemberMetadata_v0(
        0, ["t1", "t2"], b"u").encode()
    assert encode_assignment([("t2", 1), ("t1", 3), ("t1", 0)], b"") == \
        ConsumerProtocolMemberAssignment_v0(0, [("t1", [0, 3]), ("t2", [1])], b"").encode()
    theirs = ConsumerProtocolMemberAssignment_v0(0, [("x", [5, 2])], b"ud").encode()
    assert decode_assignment(theirs) == Assignment((("x", 5), ("x", 2)), b"ud", 0)
    assert decode_subscription(encode_subscription(["q"], b"\x01")).topics == ("q",)
    # A v1 subscription (adds owned partitions) is read by its v0 prefix, as Kafka does.
    v1 = (b"\x00\x01" b"\x00\x00\x00\x01" b"\x00\x01t" b"\xff\xff\xff\xff"
          b"\x00\x00\x00\x01" b"\x00\x01t" b"\x00\x00\x00\x01" b"\x00\x00\x00\x07")
    assert decode_subscription(v1) == (("t",), None, 1)
    assert decode_assignment(b"") == Assignment(())


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x00\x7f\xff\xff\xff", b"\xff\xff",
                                  b"\x00\x00\x00\x00\x00\x01\x00\x09ab",
                                  b"\x00\x00\x00\x00\x00\x01\x00\x02\xff\xfe"])
def test_hostile_protocol_bytes_raise_value_error(data):
    with pytest.raises(ValueError):
        decode_subscription(data)
    with pytest.raises(ValueError):
        decode_assignment(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_protocol_bytes_never_crash(data):
    for decode in (decode_subscription, decode_assignment):
        try:
            decode(data)
        except ValueError:
            pass


def test_strategy_names_resolve_and_bad_ones_are_refused():
    assert [a.name for a in resolve_assignors(("roundrobin", "range"))] == ["roundrobin", "range"]
    with pytest.raises(ValueError, match="unknown partition assignment strategy"):
        resolve_assignors(["sticky"])
    with pytest.raises(ValueError):
        AsyncConsumer(group_id="g", partition_assignment_strategy=())
    with pytest.raises(ValueError, match="needs a consumer group"):
        AsyncConsumer().subscribe(["t"])


# ---- with a broker ------------------------------------------------------------------------------


def test_two_members_split_six_partitions_and_one_takes_over_when_the_other_closes(broker):
    topic = new_topic(broker)
    group = unique("g")
    run(produce(broker.bootstrap, topic, 600))

    async def scenario():
        events = []
        a = AsyncConsumer(broker.bootstrap, group_id=group, **FAST,
                          on_assign=lambda tps: events.append(("a+", sorted(tps))),
                          on_revoke=lambda tps: events.append(("a-", sorted(tps))))
        b = AsyncConsumer(broker.bootstrap, group_id=group, **FAST)
        await a.start()
        await b.start()
        a.subscribe([topic])
        b.subscribe(topic)
        ca, cb = Collector(a), Collector(b)
        await wait_until(lambda: len(a.assignment()) == 3 and len(b.assignment()) == 3,
                         what="a 3/3 split")
        assert a.assignment().isdisjoint(b.assignment())
        assert {tp.partition for tp in a.assignment() | b.assignment()} == set(range(6))
        await wait_until(lambda: len(ca.received) + len(cb.received) >= 600,
                         what="all 600 records")
        together = ca.received + cb.received
        assert sorted(together) == sorted((i % 6, i // 6) for i in range(600)), \
            "every record exactly once across the two members (commits on revoke)"
        await ca.stop()
        await a.close()
        last_assigned, last_revoked = events[-2], events[-1]
        assert last_assigned[0] == "a+" and len(last_assigned[1]) == 3
        assert last_revoked == ("a-", last_assigned[1]), "close revokes what a held"
        await wait_until(lambda: len(b.assignment()) == 6, what="b to take everything")
        await produce(broker.bootstrap, topic, 60, start=600)
        await wait_until(lambda: len(cb.received) + len(ca.received) >= 660,
                         what="the 60 new records")
        new = sorted(r for r in cb.received if r[1] >= 100)
        assert new == sorted((i % 6, i // 6) for i in range(600, 660))
        await cb.stop()
        await b.close()
    run(scenario())


def test_roundrobin_assignment_as_computed_by_the_leader(broker):
    topic = new_topic(broker)
    group = unique("g")

    async def scenario():
        config = dict(FAST, partition_assignment_strategy=["roundrobin"])
        members = [AsyncConsumer(broker.bootstrap, group_id=group, **config) for _ in range(2)]
        for m in members:
            await m.start()
            m.subscribe([topic])
        collectors = [Collector(m) for m in members]
        await wait_until(lambda: all(len(m.assignment()) == 3 for m in members)
                         and len({m._group.generation for m in members}) == 1, what="split")
        assert {m._group.protocol for m in members} == {"roundrobin"}
        expected = RoundRobinAssignor().assign(
            {topic: 6}, {m._group.member_id: MemberSubscription((topic,)) for m in members})
        for m in members:
            assert sorted(m.assignment()) == sorted(expected[m._group.member_id])
        for c in collectors:
            await c.stop()
        for m in members:
            await m.close()
    run(scenario())


class SubprocessConsumer:
    """`pylog consume --group` in a child process; its printed "partition offset" lines."""

    def __init__(self, bootstrap, topic, group):
        command = [sys.executable, "-m", "pylog.cli", "consume", topic, "-b", bootstrap,
                   "--group", group, "--from-beginning", "-f", "%p %o\\n",
                   "-X", "session_timeout_ms=3000", "-X", "heartbeat_interval_ms=200",
                   "-X", "auto_commit_interval_ms=100", "-X", "fetch_max_wait_ms=100"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines: list[tuple[int, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            partition, offset = line.split()
            self.lines.append((int(partition), int(offset)))

    def offsets(self, partition):
        return [o for p, o in self.lines if p == partition]

    def kill(self):
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)
        self.process.stderr.close()


def test_a_killed_member_is_taken_over_from_its_committed_offsets(broker):
    """A `pylog consume --group` child auto-commits every 100 ms while a producer keeps
    writing; it is SIGKILLed. After the session timeout (3 s) the other member gets its
    partitions and reads each of them exactly from the child's last committed offset on: no
    gap, and duplicates only of records the child printed after its last commit."""
    topic = new_topic(broker)
    group = unique("g")

    async def scenario():
        stop_producing = asyncio.Event()
        written = collections.Counter()  # records acknowledged per partition

        async def keep_producing():
            async with AsyncProducer(broker.bootstrap, linger_ms=1) as producer:
                i = 0
                while not stop_producing.is_set():
                    for _ in range(12):
                        future = await producer.send(topic, b"%d" % i, partition=i % 6)
                        future.add_done_callback(lambda f: written.update([f.result().partition]))
                        i += 1
                    await asyncio.sleep(0.01)
        producing = asyncio.ensure_future(keep_producing())
        child = SubprocessConsumer(broker.bootstrap, topic, group)
        try:
            await wait_until(lambda: len(child.lines) >= 60, what="the child consuming")
            # B does not commit: the offsets left at the end are the child's.
            b = AsyncConsumer(broker.bootstrap, group_id=group, enable_auto_commit=False,
                              **FAST)
            await b.start()
            b.subscribe([topic])
            cb = Collector(b)
            await wait_until(lambda: len(b.assignment()) == 3, what="b joining")
            child_partitions = sorted(set(range(6)) - {tp.partition for tp in b.assignment()})
            seen = len(child.lines)
            await wait_until(lambda: all(len([o for p, o in child.lines[seen:] if p == q]) >= 5
                                         for q in child_partitions),
                             what="the child consuming its partitions after the rebalance")
            child.kill()
            await wait_until(lambda: len(b.assignment()) == 6, timeout=15, what="take-over")
            stop_producing.set()
            await producing
            ends = {(topic, p): written[p] for p in range(6)}
            await wait_until(lambda: all(max(cb.offsets(p), default=-1) + 1 >= ends[(topic, p)]
                                         for p in range(6)), what="b reading to the end")
            await cb.stop()
            async with AsyncAdmin(broker.bootstrap) as admin:
                committed = await admin.list_group_offsets(group, [(topic, p) for p in range(6)])
            await b.close()
        finally:
            child.kill()
            stop_producing.set()
            await producing
        duplicates = 0
        for p in child_partitions:
            end = ends[(topic, p)]
            last_commit = committed[(topic, p)].offset
            printed = child.offsets(p)
            assert sorted(set(printed)) == list(range(max(printed) + 1)), "child: no gap"
            assert 0 <= last_commit <= max(printed) + 1, "the child committed what it printed"
            assert cb.offsets(p) == list(range(last_commit, end)), \
                "b resumes exactly at the committed offset, each record once, in order"
            duplicates += len(set(printed) & set(cb.offsets(p)))
            assert all(o >= last_commit for o in set(printed) & set(cb.offsets(p)))
        assert sum(committed[(topic, p)].offset for p in child_partitions) > 0
        return duplicates
    run(scenario(), timeout=90)


def test_a_restarted_member_resumes_from_its_committed_offsets(broker):
    topic = new_topic(broker, partitions=2)
    group = unique("g")
    run(produce(broker.bootstrap, topic, 100, partitions=2))

    async def scenario():
        async with AsyncConsumer(broker.bootstrap, group_id=group, **FAST) as first:
            first.subscribe([topic])
            got = []
            while len(got) < 30:
                for records in (await first.getmany(timeout_ms=5000, max_records=30 - len(got))
                                ).values():
                    got += records
            positions = {tp: await first.position(tp) for tp in first.assignment()}
        # close() committed the positions (auto-commit) and left the group
        async with AsyncConsumer(broker.bootstrap, group_id=group, **FAST) as second:
            second.subscribe([topic])
            later = []
            while len(later) < 70:
                batch = await second.getmany(timeout_ms=5000)
                assert batch, f"only {len(later)} of 70"
                for records in batch.values():
                    later += records
            assert not await second.getmany(timeout_ms=300)
        firsts = {}
        for r in later:
            firsts.setdefault(r.partition, r.offset)
        assert {tp.partition: o for tp, o in positions.items()} == firsts
        assert sorted((r.partition, r.offset) for r in got + later) == \
            sorted((i % 2, i // 2) for i in range(100)), "each record once"
    run(scenario())


def test_commit_and_committed_round_trip(broker):
    topic = new_topic(broker, partitions=3)
    group = unique("g")

    async def scenario():
        async with AsyncConsumer(broker.bootstrap, group_id=group, enable_auto_commit=False,
                                 **FAST) as consumer:
            tps = [(topic, p) for p in range(3)]
            assert await consumer.committed(tps[0]) is None
            # no subscription: standalone commits (generation -1), as for a manual assignment
            await consumer.commit({tps[0]: 17, tps[1]: OffsetAndMetadata(5, "meta"),
                                   tps[2]: (9, "x")})
            assert await consumer.committed(tps[0]) == 17
            found = await consumer.committed_offsets(tps)
            assert [found[tp].offset for tp in tps] == [17, 5, 9]
            if broker.kind == "pylog":  # Tansu keeps no commit metadata
                assert [found[tp].metadata for tp in tps] == ["", "meta", "x"]
            seen = []
            await consumer.commit_async({tps[0]: 20}, lambda offsets, error: seen.append(
                (dict(offsets), error)))
            assert seen == [({tps[0]: OffsetAndMetadata(20)}, None)]
            assert await consumer.committed(tps[0]) == 20
            # a manual assignment starts at the committed offsets too
            consumer.assign(tps)
            assert await consumer.position(tps[1]) == 5
            assert await consumer.position(tps[2]) == 9
            with pytest.raises(ValueError):
                await consumer.commit({tps[0]: -1})
        if broker.kind == "tansu":
            return  # Tansu keeps no commit metadata and cannot list all of a group's offsets
        async with AsyncAdmin(broker.bootstrap) as admin:
            assert await admin.list_group_offsets(group) == {
                tps[0]: OffsetAndMetadata(20, ""), tps[1]: OffsetAndMetadata(5, "meta"),
                tps[2]: OffsetAndMetadata(9, "x")}
    run(scenario())


def test_listener_commits_on_revoke_and_a_seek_on_assign_wins(broker):
    topic = new_topic(broker, partitions=1)
    group = unique("g")
    tp = (topic, 0)
    run(produce(broker.bootstrap, topic, 10, partitions=1))

    async def scenario():
        class Listener(ConsumerRebalanceListener):
            def __init__(self):
                self.calls = []
                self.consumer = None

            async def on_partitions_revoked(self, revoked):
                self.calls.append(("revoked", sorted(revoked)))
                await self.consumer.commit()  # still in the old generation: accepted

            def on_partitions_assigned(self, assigned):
                self.calls.append(("assigned", sorted(assigned)))
                if assigned and self.calls.count(("assigned", [tp])) >= 2:
                    self.consumer.seek(tp, 40)  # wins over the committed offset

        listener = Listener()
        consumer = AsyncConsumer(broker.bootstrap, group_id=group, enable_auto_commit=False,
                                 listener=listener, **FAST)
        listener.consumer = consumer
        await consumer.start()
        consumer.subscribe([topic])
        got = await consumer.getmany(timeout_ms=5000, max_records=10)
        assert [r.offset for r in got[tp]] == list(range(10))
        await produce(broker.bootstrap, topic, 40, partitions=1, start=10)  # 10..49
        # Another member joins: the first is revoked (and commits 10 in the callback).
        other = AsyncConsumer(broker.bootstrap, group_id=group, **FAST)
        await other.start()
        other.subscribe([topic])
        co = Collector(other)
        await wait_until(polled(consumer, lambda: ("revoked", [tp]) in listener.calls),
                         what="the revocation")
        await wait_until(polled(consumer, lambda: len(consumer.assignment()
                                                      | other.assignment()) == 1),
                         what="the new generation")
        async with AsyncAdmin(broker.bootstrap) as admin:
            assert (await admin.list_group_offsets(group, [tp]))[tp].offset == 10
        if other.assignment():
            await wait_until(lambda: co.offsets(0), what="the new owner reading")
            assert co.offsets(0)[0] == 10, "the new owner starts at the committed offset"
        await co.stop()
        await other.close()  # the partition is (or stays) the first member's
        await wait_until(polled(consumer, lambda: listener.calls.count(("assigned", [tp])) >= 2
                                and consumer.assignment()), what="holding it again")
        got = await consumer.getmany(timeout_ms=5000, max_records=1)
        assert got[tp][0].offset == 40
        await consumer.close()
    run(scenario())


def _proxy_rewriting_coordinator(broker, intercept=None):
    """A proxy that also names itself as the group coordinator (so group requests pass it)."""
    proxy = None

    def rewrite(key, version, body):
        if key == ApiKey.FIND_COORDINATOR:
            return dataclasses.replace(body, host="127.0.0.1", port=proxy.port)
        return body
    proxy = KafkaProxy("127.0.0.1", broker.port, intercept=intercept, rewrite=rewrite)
    return proxy


def _offset_commit_error(version, body, code):
    from kio.index import load_response_schema

    from pylog.client.messages import build
    topics = [{"name": t.name, "partitions": [{"partition_index": p.partition_index,
                                               "error_code": code} for p in t.partitions]}
              for t in body.topics]
    return build(load_response_schema(ApiKey.OFFSET_COMMIT, version),
                 {"throttle_time": 0, "topics": topics})


def test_not_coordinator_makes_the_consumer_find_the_coordinator_again(broker):
    topic = new_topic(broker, partitions=2)
    group = unique("g")

    def intercept(key, version, body, count):
        if key == ApiKey.OFFSET_COMMIT and count <= 2:
            return _offset_commit_error(version, body, ErrorCode.NOT_COORDINATOR)
        return None

    async def scenario():
        async with _proxy_rewriting_coordinator(broker, intercept) as proxy:
            async with AsyncConsumer(proxy.bootstrap, group_id=group, enable_auto_commit=False,
                                     **FAST) as consumer:
                consumer.subscribe([topic])
                await wait_until(polled(consumer, lambda: len(consumer.assignment()) == 2),
                                 what="joining")
                finds = proxy.counts[ApiKey.FIND_COORDINATOR]
                await consumer.commit({(topic, 0): 3})
                assert proxy.counts[ApiKey.OFFSET_COMMIT] == 3
                assert proxy.counts[ApiKey.FIND_COORDINATOR] >= finds + 2
                assert await consumer.committed((topic, 0)) == 3
    run(scenario())


def test_a_commit_refused_for_a_stale_generation_is_commit_failed_and_rejoins(broker):
    topic = new_topic(broker, partitions=2)
    group = unique("g")

    def intercept(key, version, body, count):
        if key == ApiKey.OFFSET_COMMIT and count == 1:
            return _offset_commit_error(version, body, ErrorCode.ILLEGAL_GENERATION)
        return None

    async def scenario():
        async with _proxy_rewriting_coordinator(broker, intercept) as proxy:
            lost = []
            async with AsyncConsumer(proxy.bootstrap, group_id=group, enable_auto_commit=False,
                                     on_lost=lambda tps: lost.append(sorted(tps)),
                                     **FAST) as consumer:
                consumer.subscribe([topic])
                await wait_until(polled(consumer, lambda: len(consumer.assignment()) == 2),
                                 what="joining")
                joins = proxy.counts[ApiKey.JOIN_GROUP]
                with pytest.raises(CommitFailedError) as caught:
                    await consumer.commit({(topic, 0): 1})
                assert caught.value.error_code == ErrorCode.ILLEGAL_GENERATION
                await wait_until(polled(consumer, lambda: len(consumer.assignment()) == 2 and
                                        proxy.counts[ApiKey.JOIN_GROUP] > joins),
                                 what="re-joining")
                assert lost == [[(topic, 0), (topic, 1)]], "partitions lost, not revoked"
                await consumer.commit({(topic, 0): 1})
    run(scenario())


def test_a_member_that_stops_polling_leaves_and_rejoins(broker):
    topic = new_topic(broker, partitions=2)
    group = unique("g")

    async def scenario():
        async with AsyncConsumer(broker.bootstrap, group_id=group, max_poll_interval_ms=600,
                                 **FAST) as consumer:
            consumer.subscribe([topic])
            await wait_until(polled(consumer, lambda: len(consumer.assignment()) == 2),
                             what="joining")
            generation = consumer._group.generation

            async def left():
                async with AsyncAdmin(broker.bootstrap) as admin:
                    return not (await admin.describe_groups(group))[0].members
            await wait_until(left, what="leaving after max_poll_interval_ms")
            await wait_until(polled(consumer, lambda: len(consumer.assignment()) == 2),
                             what="re-joining")
            assert consumer._group.generation > generation
    run(scenario())


def test_blocking_consumer_in_a_group_with_callbacks_that_commit(broker):
    topic = new_topic(broker, partitions=2)
    group = unique("g")
    run(produce(broker.bootstrap, topic, 40, partitions=2))
    calls = []

    def on_revoke(partitions):
        calls.append(("revoked", sorted(partitions)))
        consumer.commit()  # the blocking API, from the callback's thread

    with Consumer(broker.bootstrap, group_id=group, enable_auto_commit=False,
                  on_assign=lambda ps: calls.append(("assigned", sorted(ps))),
                  on_revoke=on_revoke, consumer_timeout_ms=3000, **FAST) as consumer:
        consumer.subscribe([topic])
        assert consumer.subscription() == {topic}
        values = []
        for record in consumer:
            values.append(record.value)
            if len(values) == 25:
                break
        consumer.commit()
        committed = consumer.committed_offsets([(topic, 0), (topic, 1)])
        assert sum(o.offset for o in committed.values()) == 25
        consumer.unsubscribe()
    assert calls[0][0] == "assigned" and calls[-1] == ("revoked", calls[0][1])
    assert len(set(values)) == 25 and set(values) <= {b"%d" % i for i in range(40)}


def test_closing_while_a_join_is_held_by_the_coordinator_is_prompt(broker):
    """The coordinator holds a JoinGroup until every member re-joined; a member closed
    meanwhile leaves on a fresh connection instead of queueing its LeaveGroup behind it.
    (The second member talks through a proxy that, like Kafka, handles one request of a
    connection at a time.)"""
    topic = new_topic(broker, partitions=2)
    group = unique("g")

    async def scenario():
        async with AsyncConsumer(broker.bootstrap, group_id=group, **FAST) as first:
            first.subscribe([topic])
            await wait_until(polled(first, lambda: len(first.assignment()) == 2),
                             what="the first member")
            # The first member stops polling: it heartbeats but does not re-join for now.
            async with _proxy_rewriting_coordinator(broker) as proxy:
                second = AsyncConsumer(proxy.bootstrap, group_id=group, **FAST)
                await second.start()
                second.subscribe([topic])
                assert await second.getmany(timeout_ms=500) == {}  # its JoinGroup is held
                assert second._group.state == "joining"
                await second.close()
                # Sent on a fresh connection, the LeaveGroup reached the coordinator; behind
                # the held JoinGroup it would still wait (close gives up after 5 s).
                assert proxy.counts[ApiKey.LEAVE_GROUP] == 1
            await wait_until(polled(first, lambda: len(first.assignment()) == 2
                                    and first._group.state == "stable"
                                    and not first._group.rejoin_needed),
                             what="the first member keeping both partitions")
    run(scenario())

"""Consumer groups of real clients against a real ``pylog serve``: kcat ``-G``, confluent-kafka
(subscribe), kafka-python and aiokafka (group_id), every member its own process.

Theory of operation
-------------------
A member is a process that prints ``R <partition> <offset> <value>`` per record it reads, to a
file (tests/group_member.py for the Python clients: commits synchronously after each poll,
after printing; kcat: ``-G`` with auto-commit every 100 ms, so for kcat "committed" may
run a little ahead of "printed"). The test reads those files and asks
the broker, through kafka-python's admin client, who holds which partition (DescribeGroups) and
what the group committed (OffsetFetch). Every record's value names its partition and offset
(``<phase>-<partition>-<index>``), so each printed line is checked against what was written.

``test_sigkill_takeover_and_resume`` (one per client, one broker for all):
1. member A joins alone and holds all 6 partitions; then member B joins and they split them
   (B starts late for kafka-python's join race, see tests/test_group_kafka_python.py);
2. 30 records per partition: each member reads exactly its partitions, the group commits 30;
3. 200 more per partition, A reading slowly (10 records per poll, 50 ms pauses): A is
   SIGKILLed as soon as it printed one of them, so it dies mid-stream; the committed offsets
   of its partitions, read once they settle (a commit may still be in flight), are then fixed
   until the group rebalances, which happens only after A's 3 s session timeout;
4. B takes over A's partitions and reads each exactly from A's committed offset to the end:
   no gap, nothing below the commit (the only records read twice are those A read after its
   last commit), and A's printed records plus B's cover every offset;
5. B stops (SIGTERM), 10 more records per partition, a new member C reads exactly those: a
   restarted consumer resumes from the committed offsets.
``test_broker_restart_keeps_committed_offsets``: a member reads and commits, the broker stops
(SIGTERM) and starts on the same data directory and ports, OffsetFetch answers the same
offsets, and a new member reads only what was written after them.

One client runs the broker-restart test by default, the others are ``slow``."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from broker_fixture import BrokerFactory, RunningBroker
from interop_support import create_topic, topic_name

kafka = pytest.importorskip("kafka")
from kafka import KafkaProducer  # noqa: E402
from kafka.admin import KafkaAdminClient  # noqa: E402

PARTITIONS = 6
ALL = frozenset(range(PARTITIONS))
DEADLINE_S = 30.0
MEMBER_SCRIPT = os.path.join(os.path.dirname(__file__), "group_member.py")
CLIENTS = ("kcat", "confluent", "kafka-python", "aiokafka")
SLOW_BATCH = ["--batch", "10", "--pause-ms", "50"]


def _needs(client: str) -> None:
    if client == "kcat":
        if not any(os.access(os.path.join(d, "kcat"), os.X_OK)
                   for d in os.environ.get("PATH", "").split(os.pathsep)):
            pytest.skip("kcat not installed")
    else:
        pytest.importorskip({"confluent": "confluent_kafka", "kafka-python": "kafka",
                             "aiokafka": "aiokafka"}[client])


# ---- the broker ----------------------------------------------------------------------------

@dataclass
class SharedBroker:
    """The module's broker; ``restart`` keeps its data directory and ports."""
    factory: BrokerFactory
    running: RunningBroker

    def restart(self) -> None:
        old = self.running
        assert old.stop() == 0, f"broker exit status {old.exit_code}"
        self.running = self.factory.start(old.data_dir, port=old.port,
                                          control_port=old.control_port)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, request):
    factory = BrokerFactory(tmp_path_factory.mktemp("groups"))
    failed_before = request.session.testsfailed
    holder = SharedBroker(factory, factory.start())
    yield holder
    factory.cleanup(failed=request.session.testsfailed > failed_before)


# ---- members -------------------------------------------------------------------------------

class Member:
    """One member process; its printed records are in ``out_path``."""

    def __init__(self, client: str, bootstrap: str, group: str, topic: str, out_path,
                 extra: list[str] = ()):
        self.out_path = str(out_path)
        self.err_path = self.out_path + ".stderr"
        if client == "kcat":
            command = ["kcat", "-b", bootstrap, "-G", group, topic, "-u", "-q",
                       "-f", "R %p %o %s\\n",
                       "-X", "session.timeout.ms=3000", "-X", "heartbeat.interval.ms=500",
                       "-X", "auto.offset.reset=earliest", "-X", "auto.commit.interval.ms=100"]
        else:
            command = [sys.executable, MEMBER_SCRIPT, client, bootstrap, group, topic,
                       *extra]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err)

    @property
    def pid(self) -> int:
        return self.process.pid

    def records(self) -> list[tuple[int, int, str]]:
        """(partition, offset, value) of every complete line printed so far."""
        with open(self.out_path, encoding="ascii", errors="replace") as f:
            text = f.read()
        out = []
        for line in text.split("\n")[:-1]:        # the last piece may be half-written
            tag, partition, offset, value = (line.split(" ", 3) + [""])[:4]
            assert tag == "R", f"unexpected output line {line!r} ({self.err_path})"
            out.append((int(partition), int(offset), value))
        return out

    def by_partition(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for partition, offset, value in self.records():
            assert value == _value_at(partition, offset), \
                f"partition {partition} offset {offset} holds {value!r}"
            out.setdefault(partition, []).append(offset)
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(DEADLINE_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def stderr(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-3000:]


@contextlib.contextmanager
def members_cleanup():
    started: list[Member] = []
    try:
        yield started
    finally:
        for member in started:
            member.kill()


# ---- records -------------------------------------------------------------------------------

# phase boundaries: offsets [0, 30) first, [30, 230) second, [230, 240) third
PHASES = ((0, 30), (30, 230), (230, 240))


def _value_at(partition: int, offset: int) -> str:
    return f"v-{partition}-{offset}"


def produce(bootstrap: str, topic: str, begin: int, end: int) -> None:
    """Offsets [begin, end) of every partition (the topic holds exactly [0, begin) before)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        futures = [(p, o, producer.send(topic, value=_value_at(p, o).encode(), partition=p))
                   for o in range(begin, end) for p in range(PARTITIONS)]
        producer.flush(timeout=DEADLINE_S)
        for p, o, future in futures:
            assert future.get(timeout=DEADLINE_S).offset == o, f"partition {p} offset {o}"
    finally:
        producer.close(timeout=10)


# ---- the group as the broker sees it -------------------------------------------------------

def assignments(admin: KafkaAdminClient, group: str) -> list[frozenset[int]]:
    """The partitions of each member of a Stable group ([] while it rebalances)."""
    description = admin.describe_groups([group])[group]
    if description.get("error") or description.get("group_state") != "Stable":
        return []
    out = []
    for member in description["members"]:
        assignment = member["member_assignment"]
        topics = getattr(assignment, "assigned_partitions", None)
        if topics is None:
            topics = assignment["assigned_partitions"] if isinstance(assignment, dict) \
                else assignment.assignment
        out.append(frozenset(p for t in topics for p in _partitions_of(t)))
    return out


def _partitions_of(topic_partitions) -> list[int]:
    if isinstance(topic_partitions, dict):
        return list(topic_partitions["partitions"])
    if hasattr(topic_partitions, "partitions"):
        return list(topic_partitions.partitions)
    return list(topic_partitions[1])


def committed(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = admin.list_group_offsets({group: None})[group]
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def wait_for(condition, what: str, members: list[Member] = (), deadline_s: float = DEADLINE_S):
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(
                f"--- member pid {m.pid} stderr:\n{m.stderr()}" for m in members))
        time.sleep(0.05)


def covers(member: Member, partitions, end: int) -> bool:
    read = member.by_partition()
    return all(end - 1 in read.get(p, ()) for p in partitions)


# ---- the tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
def test_sigkill_takeover_and_resume(shared, client, request, tmp_path):
    _needs(client)
    bootstrap = shared.running.bootstrap
    topic = topic_name(request)
    group = "g-" + topic
    create_topic(shared.running, topic, PARTITIONS)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    with members_cleanup() as started:
        # 1. A alone holds everything, then B joins and they split the partitions
        a = Member(client, bootstrap, group, topic, tmp_path / "a.out", SLOW_BATCH)
        started.append(a)
        wait_for(lambda: assignments(admin, group) == [ALL], "A to hold every partition", [a])
        b = Member(client, bootstrap, group, topic, tmp_path / "b.out")
        started.append(b)

        def split():
            held = assignments(admin, group)
            if len(held) == 2 and all(held) and not held[0] & held[1] \
                    and held[0] | held[1] == ALL:
                return held
            return None
        held = wait_for(split, "A and B to split the partitions", started)

        # 2. each reads exactly its partitions; the group commits everything
        produce(bootstrap, topic, *PHASES[0])
        first_end = PHASES[0][1]
        wait_for(lambda: all(covers(a, [p], first_end) or covers(b, [p], first_end)
                             for p in ALL), "the first records", started)
        wait_for(lambda: committed(admin, group, topic) == {p: first_end for p in ALL},
                 "the first commits", started)
        a_parts, b_parts = set(a.by_partition()), set(b.by_partition())
        assert not a_parts & b_parts and a_parts | b_parts == ALL
        assert {frozenset(a_parts), frozenset(b_parts)} == set(held)
        for m in (a, b):
            for p, offsets in m.by_partition().items():
                assert offsets == list(range(first_end)), (p, offsets)

        # 3. A dies mid-stream
        produce(bootstrap, topic, *PHASES[1])
        wait_for(lambda: any(o >= first_end for _p, o, _v in a.records()),
                 "A to read a record of the second batch", started)
        a.kill()
        previous: list[dict] = [{}]

        def settled():
            now = committed(admin, group, topic)
            stable, previous[0] = now == previous[0], now
            return now if stable else None
        at_kill = wait_for(settled, "the committed offsets to settle", started)
        assert set(assignments(admin, group)) in (set(), set(held)), \
            "rebalanced before A's session expired"
        if client != "kcat":      # A reads slowly: it died before committing all it was sent
            assert any(at_kill[p] < PHASES[1][1] for p in a_parts), at_kill

        # 4. B takes over from exactly the committed offsets
        end = PHASES[1][1]
        wait_for(lambda: covers(b, ALL, end), "B to read every partition to the end", started)
        wait_for(lambda: assignments(admin, group) == [ALL], "B to hold every partition",
                 started)
        a_read, b_read = a.by_partition(), b.by_partition()
        for p in a_parts:
            assert b_read[p] == list(range(at_kill[p], end)), \
                f"partition {p}: B read {b_read[p][:5]}..., A had committed {at_kill[p]}"
            assert a_read[p] == list(range(len(a_read[p]))), f"A's partition {p}"
            if client != "kcat":  # kcat's auto-commit may run before it prints
                assert at_kill[p] <= len(a_read[p]), \
                    f"partition {p}: committed {at_kill[p]} beyond what A printed " \
                    f"({len(a_read[p])})"
        for p in b_parts:
            assert b_read[p] == list(range(end)), f"B's own partition {p}"
        wait_for(lambda: committed(admin, group, topic) == {p: end for p in ALL},
                 "B's commits", started)

        # 5. a restarted consumer resumes from the committed offsets
        b.stop()
        produce(bootstrap, topic, *PHASES[2])
        c = Member(client, bootstrap, group, topic, tmp_path / "c.out")
        started.append(c)
        last = PHASES[2][1]
        wait_for(lambda: covers(c, ALL, last), "C to read the third batch", started)
        assert c.by_partition() == {p: list(range(end, last)) for p in ALL}
        c.stop()
    admin.close()


@pytest.mark.parametrize("client", [
    pytest.param(c, marks=() if c == "confluent" else pytest.mark.slow) for c in CLIENTS])
def test_broker_restart_keeps_committed_offsets(shared, client, request, tmp_path):
    _needs(client)
    topic = topic_name(request)
    group = "g-" + topic
    create_topic(shared.running, topic, PARTITIONS)
    first_end, end = PHASES[0][1], PHASES[1][1]
    with members_cleanup() as started:
        bootstrap = shared.running.bootstrap
        produce(bootstrap, topic, *PHASES[0])
        a = Member(client, bootstrap, group, topic, tmp_path / "a.out")
        started.append(a)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            wait_for(lambda: committed(admin, group, topic) == {p: first_end for p in ALL},
                     "the commits", started)
        finally:
            admin.close()
        a.stop()
        assert a.by_partition() == {p: list(range(first_end)) for p in ALL}

        shared.restart()
        bootstrap = shared.running.bootstrap
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            assert committed(admin, group, topic) == {p: first_end for p in ALL}
        finally:
            admin.close()
        produce(bootstrap, topic, first_end, end)
        b = Member(client, bootstrap, group, topic, tmp_path / "b.out")
        started.append(b)
        wait_for(lambda: covers(b, ALL, end), "the new member to read", started)
        assert b.by_partition() == {p: list(range(first_end, end)) for p in ALL}
        b.stop()

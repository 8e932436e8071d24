"""The group apis through the wire, at every advertised version: an in-process Broker on free
ports, requests built with kio (tests/kafka_wire.py's ``body``/``entity``), sent over asyncio
connections (one per member, as clients do: a held JoinGroup holds its connection)."""
from __future__ import annotations

import asyncio
import datetime
import struct

import pytest

from kafka_wire import body, entity
from pylog.broker.app import Broker
from pylog.broker.config import BrokerConfig
from pylog.broker.group import OFFSETS_TOPIC
from pylog.broker.handlers.base import AUTHORIZED_OPERATIONS_OMITTED
from pylog.broker.handlers.groups import GROUP_AUTHORIZED_OPERATIONS
from pylog.protocol.codec import decode_response, encode_request
from pylog.protocol.errors import ErrorCode
from pylog.records import build_batch

DEADLINE_S = 30
MS = datetime.timedelta(milliseconds=1)
JOIN, SYNC, HEARTBEAT, LEAVE = 11, 14, 12, 13
COMMIT, FETCH, FIND, LIST, DESCRIBE, DELETE = 8, 9, 10, 16, 15, 42


class AsyncWire:
    """One client connection: ``call`` sends a request and reads its response; ``send`` and
    ``receive`` split it for requests that are held."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.correlation_id = 0

    @classmethod
    async def open(cls, port: int) -> "AsyncWire":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, api_key: int, version: int, request) -> tuple[int, int, int]:
        self.correlation_id += 1
        self.writer.write(encode_request(api_key, version, self.correlation_id, "wire-client",
                                         request))
        return api_key, version, self.correlation_id

    async def receive(self, sent: tuple[int, int, int]):
        api_key, version, correlation_id = sent
        size = struct.unpack(">i", await self.reader.readexactly(4))[0]
        got, decoded = decode_response(api_key, version, await self.reader.readexactly(size))
        assert got == correlation_id
        return decoded

    async def call(self, api_key: int, version: int, request):
        return await self.receive(self.send(api_key, version, request))

    def close(self) -> None:
        self.writer.close()


def with_broker(tmp_path, scenario, **config):
    async def run():
        config.setdefault("offsets_topic_num_partitions", 4)
        broker = Broker(BrokerConfig(data_dir=str(tmp_path / "data"), port=0, control_port=0,
                                     **config))
        await broker.start()
        wires: list[AsyncWire] = []

        async def connect() -> AsyncWire:
            wire = await AsyncWire.open(broker.port)
            wires.append(wire)
            return wire
        try:
            await scenario(broker, connect)
        finally:
            for wire in wires:
                wire.close()
            await broker.stop()
    asyncio.run(asyncio.wait_for(run(), DEADLINE_S))


# ---- request builders ------------------------------------------------------------------------

def join_request(version, group, member="", *, metadata=b"meta", session=3000,
                 rebalance=10_000, instance=None):
    return body(JOIN, version, group_id=group, session_timeout=session * MS,
                rebalance_timeout=rebalance * MS, member_id=member, group_instance_id=instance,
                protocol_type="consumer",
                protocols=(entity(JOIN, version, "protocols", name="range", metadata=metadata),))


async def join_group(wire, version, group, **kw):
    """A new member's JoinGroup at ``version`` (re-joining after MEMBER_ID_REQUIRED on v4+)."""
    answer = await wire.call(JOIN, version, join_request(version, group, **kw))
    if version >= 4:
        assert answer.error_code == ErrorCode.MEMBER_ID_REQUIRED and answer.member_id
        assert answer.generation_id == -1 and answer.protocol_name == "" and answer.leader == ""
        answer = await wire.call(JOIN, version, join_request(version, group, answer.member_id,
                                                             **kw))
    return answer


def sync_request(version, group, generation, member, assignments=()):
    return body(SYNC, version, group_id=group, generation_id=generation, member_id=member,
                group_instance_id=None, assignments=tuple(
                    entity(SYNC, version, "assignments", member_id=m, assignment=a)
                    for m, a in assignments))


def heartbeat_request(version, group, generation, member):
    return body(HEARTBEAT, version, group_id=group, generation_id=generation, member_id=member,
                group_instance_id=None)


def leave_request(version, group, *members):
    if version < 3:
        (member,) = members
        return body(LEAVE, version, group_id=group, member_id=member)
    return body(LEAVE, version, group_id=group, members=tuple(
        entity(LEAVE, version, "members", member_id=m, group_instance_id=None)
        for m in members))


def commit_request(version, group, offsets, *, generation=-1, member=""):
    """``offsets``: {topic: [(partition, offset, leader epoch, metadata)]}."""
    return body(COMMIT, version, group_id=group, generation_id_or_member_epoch=generation,
                member_id=member, group_instance_id=None, retention_time=-1 * MS,
                topics=tuple(entity(COMMIT, version, "topics", name=topic, partitions=tuple(
                    entity(COMMIT, version, "topics.partitions", partition_index=p,
                           committed_offset=o, committed_leader_epoch=e, committed_metadata=m)
                    for p, o, e, m in parts)) for topic, parts in offsets.items()))


def fetch_request(version, group, topics):
    """``topics``: {topic: [partitions]} or None (all, v2+)."""
    return body(FETCH, version, group_id=group, topics=None if topics is None else tuple(
        entity(FETCH, version, "topics", name=t, partition_indexes=tuple(ps))
        for t, ps in topics.items()))


def fetched(answer):
    return {(t.name, p.partition_index): (p.committed_offset, p.metadata, p.error_code,
                                          getattr(p, "committed_leader_epoch", None))
            for t in answer.topics for p in t.partitions}


# ---- FindCoordinator -------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, 2])
def test_find_coordinator_names_the_offsets_partition_leader(tmp_path, version):
    async def scenario(broker, connect):
        wire = await connect()
        answer = await wire.call(FIND, version, body(FIND, version, key="group", key_type=0))
        assert answer.error_code == 0
        assert (answer.node_id, answer.host, answer.port) == (1, "127.0.0.1", broker.port)
        partition = broker.group_coordinator.partition_for("group")
        assert broker.controller.metadata.topics[OFFSETS_TOPIC].partitions[partition].leader == 1
    with_broker(tmp_path, scenario)


# ---- JoinGroup, SyncGroup, Heartbeat, LeaveGroup ---------------------------------------------

@pytest.mark.parametrize("join_version", range(6))
def test_one_member_lifecycle_at_every_version(tmp_path, join_version):
    """JoinGroup v0-v5; SyncGroup, Heartbeat and LeaveGroup at v0-v3 (join_version % 4)."""
    other = join_version % 4

    async def scenario(broker, connect):
        wire = await connect()
        group = f"group-{join_version}"
        joined = await join_group(wire, join_version, group, metadata=b"subscription")
        assert joined.error_code == 0 and joined.generation_id == 1
        assert joined.protocol_name == "range" and joined.leader == joined.member_id
        member = joined.member_id
        assert member.startswith("wire-client-")             # Kafka's client_id-uuid
        assert [(m.member_id, m.metadata) for m in joined.members] == [(member, b"subscription")]
        synced = await wire.call(SYNC, other, sync_request(other, group, 1, member,
                                                           [(member, b"assignment")]))
        assert synced.error_code == 0 and synced.assignment == b"assignment"
        beat = await wire.call(HEARTBEAT, other, heartbeat_request(other, group, 1, member))
        assert beat.error_code == 0
        stale = await wire.call(HEARTBEAT, other, heartbeat_request(other, group, 0, member))
        assert stale.error_code == ErrorCode.ILLEGAL_GENERATION
        left = await wire.call(LEAVE, other, leave_request(other, group, member))
        assert left.error_code == 0
        if other == 3:
            assert [(m.member_id, m.error_code) for m in left.members] == [(member, 0)]
        gone = await wire.call(HEARTBEAT, other, heartbeat_request(other, group, 2, member))
        assert gone.error_code == ErrorCode.UNKNOWN_MEMBER_ID
        again = await wire.call(LEAVE, other, leave_request(other, group, member))
        if other < 3:                       # v0-v2 fold the member's error into the answer
            assert again.error_code == ErrorCode.UNKNOWN_MEMBER_ID
        else:
            assert again.error_code == 0 and again.members[0].error_code == \
                ErrorCode.UNKNOWN_MEMBER_ID
    with_broker(tmp_path, scenario)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
def test_a_second_member_on_another_connection_rebalances_the_group(tmp_path, version):
    sync_version = min(version, 3)

    async def scenario(broker, connect):
        first, second = await connect(), await connect()
        group = f"rebalance-{version}"
        a = await join_group(first, version, group)
        await first.call(SYNC, sync_version, sync_request(sync_version, group, 1, a.member_id,
                                                          [(a.member_id, b"all")]))
        if version >= 4:
            required = await second.call(JOIN, version, join_request(version, group))
            b_id = required.member_id
        else:
            b_id = ""
        held = second.send(JOIN, version, join_request(version, group, b_id, metadata=b"b"))
        await asyncio.sleep(0.05)
        hb_version = min(version, 3)
        beat = await first.call(HEARTBEAT, hb_version,
                                heartbeat_request(hb_version, group, 1, a.member_id))
        assert beat.error_code == ErrorCode.REBALANCE_IN_PROGRESS
        a2 = await first.call(JOIN, version, join_request(version, group, a.member_id))
        b = await second.receive(held)
        assert a2.generation_id == b.generation_id == 2
        assert a2.leader == b.leader == a.member_id
        assert sorted(m.member_id for m in a2.members) == sorted([a.member_id, b.member_id])
        assert b.members == ()
        follower = second.send(SYNC, sync_version, sync_request(sync_version, group, 2,
                                                                b.member_id))
        await asyncio.sleep(0.05)
        await first.call(SYNC, sync_version, sync_request(
            sync_version, group, 2, a.member_id, [(a.member_id, b"A"), (b.member_id, b"B")]))
        assert (await second.receive(follower)).assignment == b"B"
    with_broker(tmp_path, scenario)


def test_join_group_refusals(tmp_path):
    async def scenario(broker, connect):
        wire = await connect()
        static = await wire.call(JOIN, 5, join_request(5, "g", instance="instance-1"))
        assert static.error_code == ErrorCode.INVALID_REQUEST
        short = await wire.call(JOIN, 1, join_request(1, "g", session=500))
        assert short.error_code == ErrorCode.INVALID_SESSION_TIMEOUT
        assert short.generation_id == -1 and short.protocol_name == ""
        empty = await wire.call(JOIN, 2, join_request(2, ""))
        assert empty.error_code == ErrorCode.INVALID_GROUP_ID
        ghost = await wire.call(JOIN, 3, join_request(3, "g", "ghost"))
        assert ghost.error_code == ErrorCode.UNKNOWN_MEMBER_ID and ghost.member_id == "ghost"
    with_broker(tmp_path, scenario)


def test_broker_settings_reach_the_coordinator(tmp_path):
    async def scenario(broker, connect):
        wire = await connect()
        for session, code in ((1999, ErrorCode.INVALID_SESSION_TIMEOUT), (2000, 0),
                              (5000, 0), (5001, ErrorCode.INVALID_SESSION_TIMEOUT)):
            answer = await wire.call(JOIN, 2, join_request(2, f"g-{session}", session=session))
            assert answer.error_code == code, session
        assert len(broker.controller.metadata.topics[OFFSETS_TOPIC].partitions) == 2
    with_broker(tmp_path, scenario, group_min_session_timeout_ms=2000,
                group_max_session_timeout_ms=5000, offsets_topic_num_partitions=2)


# ---- OffsetCommit / OffsetFetch --------------------------------------------------------------

@pytest.mark.parametrize("commit_version", range(2, 8))
def test_commit_and_fetch_at_every_version(tmp_path, commit_version):
    """OffsetCommit v2-v7 with OffsetFetch v1-v5 (commit_version - 1, at most 5)."""
    fetch_version = min(commit_version - 1, 5)

    async def scenario(broker, connect):
        broker.controller.create_topic("t", 2, 1)
        wire = await connect()
        group = f"offsets-{commit_version}"
        member = await join_group(wire, 5, group)
        await wire.call(SYNC, 3, sync_request(3, group, 1, member.member_id))
        answer = await wire.call(COMMIT, commit_version, commit_request(
            commit_version, group, {"t": [(0, 42, 7, "meta"), (1, 43, -1, None)],
                                    "missing": [(0, 1, -1, "")]},
            generation=1, member=member.member_id))
        codes = {(t.name, p.partition_index): p.error_code
                 for t in answer.topics for p in t.partitions}
        assert codes == {("t", 0): 0, ("t", 1): 0,
                         ("missing", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
        got = fetched(await wire.call(FETCH, fetch_version, fetch_request(
            fetch_version, group, {"t": [0, 1, 5], "missing": [0]})))
        epoch = 7 if commit_version >= 6 else -1                 # v6+ carry the epoch
        expected = {("t", 0): (42, "meta", 0, epoch if fetch_version >= 5 else None),
                    ("t", 1): (43, "", 0, -1 if fetch_version >= 5 else None),
                    ("t", 5): (-1, "", 0, -1 if fetch_version >= 5 else None),
                    ("missing", 0): (-1, "", 0, -1 if fetch_version >= 5 else None)}
        assert got == expected
        stale = await wire.call(COMMIT, commit_version, commit_request(
            commit_version, group, {"t": [(0, 50, -1, "")]}, generation=0,
            member=member.member_id))
        assert stale.topics[0].partitions[0].error_code == ErrorCode.ILLEGAL_GENERATION
        if fetch_version >= 2:
            every = await wire.call(FETCH, fetch_version, fetch_request(fetch_version, group,
                                                                        None))
            assert every.error_code == 0
            assert {k: v[0] for k, v in fetched(every).items()} == {("t", 0): 42, ("t", 1): 43}
    with_broker(tmp_path, scenario)


def test_a_huge_retention_time_is_read_and_ignored(tmp_path):
    """kio cannot hold an INT64 retention_time_ms past Python's timedelta range; Kafka takes
    any value, and so does pylog (it keeps offsets for ever)."""
    async def scenario(broker, connect):
        broker.controller.create_topic("t", 1, 1)
        wire = await connect()
        request = commit_request(2, "g", {"t": [(0, 5, -1, "")]})
        frame = bytearray(encode_request(COMMIT, 2, 1, "c", request))
        retention_at = len(frame) - (4 + 2 + 1 + 4 + 4 + 8 + 2) - 8
        assert frame[retention_at:retention_at + 8] == struct.pack(">q", -1)
        frame[retention_at:retention_at + 8] = struct.pack(">q", 2**63 - 1)
        wire.writer.write(bytes(frame))
        wire.correlation_id = 1
        answer = await wire.receive((COMMIT, 2, 1))
        assert answer.topics[0].partitions[0].error_code == 0
    with_broker(tmp_path, scenario)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_offset_fetch_errors_by_version(tmp_path, version):
    async def scenario(broker, connect):
        wire = await connect()
        await broker.group_coordinator.close()
        answer = await wire.call(FETCH, version, fetch_request(version, "g", {"t": [0, 1]}))
        if version < 2:                     # no top-level error: every partition carries it
            assert {k: v[2] for k, v in fetched(answer).items()} == {
                ("t", 0): ErrorCode.COORDINATOR_NOT_AVAILABLE,
                ("t", 1): ErrorCode.COORDINATOR_NOT_AVAILABLE}
        else:
            assert answer.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
            assert answer.topics == ()
        commit_answer = await wire.call(COMMIT, 7, commit_request(7, "g", {"t": [(0, 1, -1, "")]}))
        assert commit_answer.topics[0].partitions[0].error_code == \
            ErrorCode.COORDINATOR_NOT_AVAILABLE
    with_broker(tmp_path, scenario)


# ---- ListGroups, DescribeGroups, DeleteGroups ------------------------------------------------

def test_list_describe_and_delete_at_every_version(tmp_path):
    async def scenario(broker, connect):
        broker.controller.create_topic("t", 1, 1)
        wire = await connect()
        member = await join_group(wire, 5, "live")
        await wire.call(SYNC, 3, sync_request(3, "live", 1, member.member_id,
                                              [(member.member_id, b"asg")]))
        await wire.call(COMMIT, 7, commit_request(7, "simple", {"t": [(0, 3, -1, "")]}))
        for version in range(3):
            listed = await wire.call(LIST, version, body(LIST, version))
            assert listed.error_code == 0
            assert sorted((g.group_id, g.protocol_type) for g in listed.groups) == [
                ("live", "consumer"), ("simple", "")]
        for version in range(5):
            for asked in (False, True):
                described = await wire.call(DESCRIBE, version, body(
                    DESCRIBE, version, groups=("live", "unknown"),
                    include_authorized_operations=asked))
                live, unknown = described.groups
                assert (live.error_code, live.group_state, live.protocol_type,
                        live.protocol_data) == (0, "Stable", "consumer", "range")
                (m,) = live.members
                assert (m.member_id, m.client_id, m.member_metadata, m.member_assignment) == \
                    (member.member_id, "wire-client", b"meta", b"asg")
                assert (unknown.error_code, unknown.group_state, unknown.members) == \
                    (0, "Dead", ())
                if version >= 3:
                    assert live.authorized_operations == (
                        GROUP_AUTHORIZED_OPERATIONS if asked else AUTHORIZED_OPERATIONS_OMITTED)
        for version in range(2):
            deleted = await wire.call(DELETE, version, body(
                DELETE, version, groups_names=("live", "unknown")))
            assert [(r.group_id, r.error_code) for r in deleted.results] == [
                ("live", ErrorCode.NON_EMPTY_GROUP), ("unknown", ErrorCode.GROUP_ID_NOT_FOUND)]
        deleted = await wire.call(DELETE, 1, body(DELETE, 1, groups_names=("simple",)))
        assert deleted.results[0].error_code == 0
        after = await wire.call(FETCH, 5, fetch_request(5, "simple", None))
        assert after.topics == ()
    with_broker(tmp_path, scenario)


# ---- __consumer_offsets from the outside -----------------------------------------------------

def test_the_offsets_topic_is_internal_and_clients_cannot_write_it(tmp_path):
    async def scenario(broker, connect):
        wire = await connect()
        metadata = await wire.call(3, 8, body(3, 8, topics=None, allow_auto_topic_creation=False,
                                              include_cluster_authorized_operations=False,
                                              include_topic_authorized_operations=False))
        (offsets,) = [t for t in metadata.topics if t.name == OFFSETS_TOPIC]
        assert offsets.is_internal and len(offsets.partitions) == 4
        assert broker.controller.metadata.topics[OFFSETS_TOPIC].configs["cleanup.policy"] == \
            "compact"
        batch = build_batch([(b"k", b"v", (), None)])
        from kio.static.primitive import Records
        produce = await wire.call(0, 8, body(
            0, 8, transactional_id=None, acks=1, timeout=1000, topic_data=(entity(
                0, 8, "topic_data", name=OFFSETS_TOPIC, partition_data=(entity(
                    0, 8, "topic_data.partition_data", index=0, records=Records(batch)),)),)))
        assert produce.responses[0].partition_responses[0].error_code == \
            ErrorCode.INVALID_TOPIC_EXCEPTION
    with_broker(tmp_path, scenario)

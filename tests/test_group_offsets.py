"""Committed offsets: the OffsetCommit/OffsetFetch rules of KAFKA-PROTOCOL.md §4, the records
in ``__consumer_offsets`` byte for byte as Kafka's schemas, commits answered only once the
high watermark passed them, loading on start (offsets and groups survive a restart), and
DeleteGroups tombstones. On a virtual-time loop over a real log (tests/group_stack.py)."""
from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from group_stack import GroupStack, commit, join, joined, stable_member, start_stack, sync
from pylog.broker.group import OFFSETS_TOPIC, GroupState, OffsetCommitEntry, partition_for
from pylog.broker.group.loader import PartitionLoader
from pylog.broker.group.offsets_topic import AppendOutcome
from pylog.broker.group.schemas import (GroupMetadataKey, GroupMetadataValue,
                                        MemberMetadataValue, OffsetCommitKey, OffsetCommitValue,
                                        OtherKey, RecordSchemaError,
                                        decode_group_metadata_value, decode_key,
                                        decode_offset_commit_value, group_metadata_key,
                                        group_metadata_value, offset_commit_key,
                                        offset_commit_value)
from pylog.protocol import ErrorCode
from pylog.records import Record
from replica_stack import fetch_request
from virtual_time import run


def scenario(tmp_path, body, **settings_):
    async def main(loop):
        stack = await start_stack(tmp_path / "data", loop, **settings_)
        try:
            await body(stack, stack.coordinator, loop)
        finally:
            await stack.close()
    run(main)


def fetched(coordinator, group, partitions=None):
    result = coordinator.fetch_offsets(group, partitions)
    assert result.error_code == 0, result
    return {(t, p): (o.offset, o.metadata) if o is not None else None
            for t, p, o in result.offsets}


# ---- Kafka's record schemas, byte for byte ---------------------------------------------------

def _s(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def test_offset_commit_key_and_value_bytes():
    key = offset_commit_key("grp", "topic", 3)
    assert key == b"\x00\x01" + _s("grp") + _s("topic") + b"\x00\x00\x00\x03"
    value = offset_commit_value(OffsetCommitValue(42, 7, "meta", 1_700_000_000_000))
    assert value == (b"\x00\x03" + struct.pack(">q", 42) + struct.pack(">i", 7) + _s("meta")
                     + struct.pack(">q", 1_700_000_000_000))
    assert decode_key(key) == OffsetCommitKey("grp", "topic", 3)
    assert decode_offset_commit_value(value) == OffsetCommitValue(42, 7, "meta",
                                                                  1_700_000_000_000)


def test_group_metadata_key_and_value_bytes():
    assert group_metadata_key("grp") == b"\x00\x02" + _s("grp")
    value = GroupMetadataValue("consumer", 5, "range", "m1", 123, (
        MemberMetadataValue("m1", None, "client", "/10.0.0.1", 60000, 3000, b"sub", b"asg"),))
    data = group_metadata_value(value)
    assert data == (b"\x00\x03" + _s("consumer") + struct.pack(">i", 5) + _s("range")
                    + _s("m1") + struct.pack(">q", 123) + struct.pack(">i", 1)
                    + _s("m1") + b"\xff\xff" + _s("client") + _s("/10.0.0.1")
                    + struct.pack(">ii", 60000, 3000) + struct.pack(">i", 3) + b"sub"
                    + struct.pack(">i", 3) + b"asg")
    assert decode_group_metadata_value(data) == value
    empty = GroupMetadataValue("consumer", 6, None, None, 124, ())
    assert decode_group_metadata_value(group_metadata_value(empty)) == empty


def test_older_value_versions_are_read():
    v0 = b"\x00\x00" + struct.pack(">q", 9) + _s("m") + struct.pack(">q", 5)
    v1 = b"\x00\x01" + struct.pack(">q", 9) + _s("m") + struct.pack(">qq", 5, 99)
    assert decode_offset_commit_value(v0) == OffsetCommitValue(9, -1, "m", 5)
    assert decode_offset_commit_value(v1) == OffsetCommitValue(9, -1, "m", 5, 99)
    member_v0 = _s("m1") + _s("c") + _s("h") + struct.pack(">i", 3000) + \
        struct.pack(">i", 1) + b"s" + struct.pack(">i", 1) + b"a"
    group_v0 = (b"\x00\x00" + _s("consumer") + struct.pack(">i", 2) + _s("range") + _s("m1")
                + struct.pack(">i", 1) + member_v0)
    decoded = decode_group_metadata_value(group_v0)
    assert decoded.current_state_timestamp == -1
    assert decoded.members[0].rebalance_timeout_ms == 3000      # v0: the session timeout
    assert decode_key(b"\x00\x00" + _s("g") + _s("t") + b"\x00\x00\x00\x01") == \
        OffsetCommitKey("g", "t", 1)
    assert decode_key(b"\x00\x05whatever") == OtherKey(5)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00\x01\x00\x05ab", b"\x00\x02\xff\xfe", b"\x00\x02\x00\x01g!",
    b"\xff\xff", b"\x00\x02\x00\x02\xff\xfe",
])
def test_bad_keys_are_refused(data):
    with pytest.raises(RecordSchemaError):
        decode_key(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_ever_raise_record_schema_error(data):
    for decode in (decode_key, decode_offset_commit_value, decode_group_metadata_value):
        try:
            decode(data)
        except RecordSchemaError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20), st.integers(-2**31, 2**31 - 1),
       st.integers(-2**63, 2**63 - 1), st.integers(-2**31, 2**31 - 1), st.text(max_size=40))
def test_offset_records_round_trip(group, topic, partition, offset, epoch, metadata):
    assert decode_key(offset_commit_key(group, topic, partition)) == \
        OffsetCommitKey(group, topic, partition)
    value = OffsetCommitValue(offset, epoch, metadata, 1)
    assert decode_offset_commit_value(offset_commit_value(value)) == value


def test_partition_for_is_murmur2_to_positive_modulo():
    from pylog.client.partitioner import murmur2
    for group in ("", "g", "consumer-group-1", "ключ"):
        assert partition_for(group, 16) == (murmur2(group.encode()) & 0x7FFFFFFF) % 16
    assert partition_for("test-group", 16) == 7


# ---- OffsetCommit rules -----------------------------------------------------------------------

def test_standalone_commit_without_group_management(tmp_path):
    async def body(stack, coordinator, loop):
        codes = await commit(coordinator, "solo", {("t", 0): 10, ("t", 1): 20})
        assert codes == {("t", 0): 0, ("t", 1): 0}
        assert fetched(coordinator, "solo", [("t", 0), ("t", 1), ("t", 2)]) == {
            ("t", 0): (10, ""), ("t", 1): (20, ""), ("t", 2): None}
        assert fetched(coordinator, "solo") == {("t", 0): (10, ""), ("t", 1): (20, "")}
        assert coordinator.group("solo").state is GroupState.EMPTY
        assert (await commit(coordinator, "", {("t", 0): 1})) == {("t", 0): 0}  # "" is valid
        error, groups = coordinator.list_groups()
        assert [(g.group_id, g.protocol_type, g.state) for g in groups] == [
            ("", "", "Empty"), ("solo", "", "Empty")]
    scenario(tmp_path, body)


def test_commit_rules_follow_the_group_state(tmp_path):
    async def body(stack, coordinator, loop):
        tp = ("t", 0)
        assert await commit(coordinator, "nope", {tp: 1}, generation=3, member="m") == \
            {tp: ErrorCode.ILLEGAL_GENERATION}
        first = await joined(coordinator, "g")
        a, gen = first.member_id, first.generation_id
        # CompletingRebalance: the only state that refuses a member's commit.
        assert await commit(coordinator, "g", {tp: 1}, generation=gen, member=a) == \
            {tp: ErrorCode.REBALANCE_IN_PROGRESS}
        await sync(coordinator, "g", gen, a, {a: b""})
        assert await commit(coordinator, "g", {tp: 2}, generation=gen, member=a) == {tp: 0}
        # Members exist: a commit without generation and member id is refused.
        assert await commit(coordinator, "g", {tp: 3}) == {tp: ErrorCode.UNKNOWN_MEMBER_ID}
        assert await commit(coordinator, "g", {tp: 3}, generation=gen, member="ghost") == \
            {tp: ErrorCode.UNKNOWN_MEMBER_ID}
        assert await commit(coordinator, "g", {tp: 3}, generation=gen + 1, member=a) == \
            {tp: ErrorCode.ILLEGAL_GENERATION}
        assert await commit(coordinator, "g", {tp: 3}, generation=-1, member=a) == \
            {tp: ErrorCode.ILLEGAL_GENERATION}
        join(coordinator, "g")                       # PreparingRebalance: commit-on-revoke
        await asyncio.sleep(0)
        assert coordinator.group("g").state is GroupState.PREPARING_REBALANCE
        assert await commit(coordinator, "g", {tp: 4}, generation=gen, member=a) == {tp: 0}
        assert fetched(coordinator, "g", [tp]) == {tp: (4, "")}
    scenario(tmp_path, body)


def test_a_commit_is_a_sign_of_life(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", session=3000)
        for i in range(5):
            await asyncio.sleep(2)
            assert await commit(coordinator, "g", {("t", 0): i}, generation=gen, member=a) == \
                {("t", 0): 0}
        assert coordinator.group("g").has(a)
    scenario(tmp_path, body)


def test_metadata_limit_and_leader_epoch(tmp_path):
    async def body(stack, coordinator, loop):
        codes = await commit(coordinator, "g", {
            ("t", 0): OffsetCommitEntry(5, 3, "x" * 4096),
            ("t", 1): OffsetCommitEntry(6, -1, "x" * 4097),
            ("t", 2): OffsetCommitEntry(7, -1, None)})
        assert codes == {("t", 0): 0, ("t", 1): ErrorCode.OFFSET_METADATA_TOO_LARGE,
                         ("t", 2): 0}
        result = {(t, p): o for t, p, o in coordinator.fetch_offsets("g", None).offsets}
        assert (result[("t", 0)].offset, result[("t", 0)].leader_epoch) == (5, 3)
        assert result[("t", 2)].metadata == ""       # null metadata is stored as ""
        assert ("t", 1) not in result
    scenario(tmp_path, body)


def test_write_errors_are_mapped_as_kafka_maps_them(tmp_path):
    async def body(stack, coordinator, loop):
        for written, answered in (
                (ErrorCode.NOT_ENOUGH_REPLICAS, ErrorCode.COORDINATOR_NOT_AVAILABLE),
                (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.COORDINATOR_NOT_AVAILABLE),
                (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.NOT_COORDINATOR),
                (ErrorCode.KAFKA_STORAGE_ERROR, ErrorCode.NOT_COORDINATOR),
                (ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.INVALID_COMMIT_OFFSET_SIZE),
                (ErrorCode.REQUEST_TIMED_OUT, ErrorCode.REQUEST_TIMED_OUT)):
            async def failing(partition, records, code=written):
                return AppendOutcome(code)
            stack.offsets.append = failing
            assert await commit(coordinator, "g", {("t", 0): 1}) == {("t", 0): answered}
        assert fetched(coordinator, "g") == {}       # nothing failed counts as committed
    scenario(tmp_path, body)


def test_a_failed_generation_write_sends_members_back_to_rejoin(tmp_path):
    async def body(stack, coordinator, loop):
        first = await joined(coordinator, "g")

        async def failing(partition, records):
            return AppendOutcome(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        stack.offsets.append = failing
        result = await sync(coordinator, "g", first.generation_id, first.member_id,
                            {first.member_id: b"x"})
        assert result.error_code == ErrorCode.NOT_COORDINATOR and result.assignment == b""
        assert coordinator.group("g").state is GroupState.PREPARING_REBALANCE
    scenario(tmp_path, body)


# ---- through the log --------------------------------------------------------------------------

def test_commits_and_generations_are_kafka_records_in_the_groups_partition(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", client="cli")
        await commit(coordinator, "g", {("t", 0): 11, ("t", 1): OffsetCommitEntry(12, 4, "m")},
                     generation=gen, member=a)
        records = stack.records("g")
        keys = [decode_key(r.key) for r in records]
        assert keys == [GroupMetadataKey("g"), OffsetCommitKey("g", "t", 0),
                        OffsetCommitKey("g", "t", 1)]
        group_value = decode_group_metadata_value(records[0].value)
        assert (group_value.protocol_type, group_value.generation, group_value.protocol,
                group_value.leader) == ("consumer", gen, "range", a)
        assert [(m.member_id, m.client_id, m.session_timeout_ms, m.subscription, m.assignment)
                for m in group_value.members] == [(a, "cli", 3000, b"range-meta", b"all")]
        assert decode_offset_commit_value(records[2].value) == \
            OffsetCommitValue(12, 4, "m", stack.wall_ms)
        assert records[1].timestamp == stack.wall_ms
        home = coordinator.partition_for("g")
        assert [p for p in range(4) if stack.records_in(p)] == [home]
    scenario(tmp_path, body)


def test_a_commit_is_answered_once_the_high_watermark_passed_it(tmp_path):
    """Offsets partitions replicated to a (simulated) second broker: the commit waits in the
    purgatory until the follower has fetched it; until then OffsetFetch does not show it."""
    async def main(loop):
        stack = await GroupStack(tmp_path / "data", loop, partitions=4, brokers=(1, 2)).start()
        try:
            coordinator = stack.coordinator
            owned = sorted(coordinator.owned_partitions)
            assert owned and len(owned) < 4                 # broker 2 leads the others
            group = next(g for g in (f"g{i}" for i in range(100))
                         if coordinator.partition_for(g) in owned)
            partition = stack.stack.rm.partition(OFFSETS_TOPIC, coordinator.partition_for(group))
            assert partition.isr == (1, 2)
            pending = asyncio.ensure_future(commit(coordinator, group, {("t", 0): 7}))
            await asyncio.sleep(1)
            assert not pending.done() and fetched(coordinator, group, [("t", 0)]) == \
                {("t", 0): None}
            await stack.stack.rm.fetch(2, 0, 1, 1 << 20, 0, [fetch_request(
                OFFSETS_TOPIC, partition.index, partition.log_end_offset)])
            assert await pending == {("t", 0): 0}
            assert fetched(coordinator, group, [("t", 0)]) == {("t", 0): (7, "")}
            elsewhere = next(g for g in (f"h{i}" for i in range(100))
                             if coordinator.partition_for(g) not in owned)
            assert await commit(coordinator, elsewhere, {("t", 0): 1}) == \
                {("t", 0): ErrorCode.NOT_COORDINATOR}
            assert (await joined(coordinator, elsewhere)).error_code == \
                ErrorCode.NOT_COORDINATOR
            assert coordinator.fetch_offsets(elsewhere, None).error_code == \
                ErrorCode.NOT_COORDINATOR
        finally:
            await stack.close()
    run(main)


def test_offsets_and_groups_survive_a_restart(tmp_path):
    async def main(loop):
        stack = await start_stack(tmp_path / "data", loop)
        coordinator = stack.coordinator
        a, gen = await stable_member(coordinator, "live", session=3000)
        await commit(coordinator, "live", {("t", 0): 100}, generation=gen, member=a)
        await commit(coordinator, "solo", {("t", 0): 1, ("t", 1): 2})
        await commit(coordinator, "solo", {("t", 0): 5})            # the later record wins
        b, gen_b = await stable_member(coordinator, "gone")
        coordinator.leave_group("gone", [(b, None)])                 # Empty, generation + 1
        await asyncio.sleep(0.01)
        await stack.close()

        stack = await start_stack(tmp_path / "data", loop)
        coordinator = stack.coordinator
        try:
            assert fetched(coordinator, "solo") == {("t", 0): (5, ""), ("t", 1): (2, "")}
            assert fetched(coordinator, "live") == {("t", 0): (100, "")}
            live = coordinator.group("live")
            assert live.state is GroupState.STABLE and live.generation_id == gen
            assert live.leader_id == a and live.protocol_name == "range"
            assert live.members[a].assignment == b"all"
            assert coordinator.heartbeat("live", gen, a) == 0        # the member carries on
            gone = coordinator.group("gone")
            assert gone.state is GroupState.EMPTY and gone.generation_id == gen_b + 1
            # Restored members have sessions: without heartbeats, this one expires.
            await asyncio.sleep(3.01)
            assert live.state is GroupState.EMPTY and not live.members
        finally:
            await stack.close()
    run(main)


# ---- DeleteGroups -----------------------------------------------------------------------------

def test_delete_groups(tmp_path):
    async def main(loop):
        stack = await start_stack(tmp_path / "data", loop)
        coordinator = stack.coordinator
        a, gen = await stable_member(coordinator, "busy")
        b, _ = await stable_member(coordinator, "done")
        await commit(coordinator, "done", {("t", 0): 3, ("u", 1): 4}, generation=1, member=b)
        coordinator.leave_group("done", [(b, None)])
        await commit(coordinator, "solo", {("t", 0): 9})
        await asyncio.sleep(0.01)
        codes = await coordinator.delete_groups(["busy", "done", "solo", "nope", ""])
        assert codes == {"busy": ErrorCode.NON_EMPTY_GROUP, "done": 0, "solo": 0,
                         "nope": ErrorCode.GROUP_ID_NOT_FOUND,
                         "": ErrorCode.GROUP_ID_NOT_FOUND}
        assert coordinator.group("done") is None and coordinator.group("solo") is None
        assert fetched(coordinator, "done", [("t", 0)]) == {("t", 0): None}
        tail = stack.records("done")[-3:]
        assert [(decode_key(r.key), r.value) for r in tail] == [
            (OffsetCommitKey("done", "t", 0), None), (OffsetCommitKey("done", "u", 1), None),
            (GroupMetadataKey("done"), None)]
        last_solo = stack.records("solo")[-1]           # offsets only: no group record
        assert (decode_key(last_solo.key), last_solo.value) == \
            (OffsetCommitKey("solo", "t", 0), None)
        await stack.close()

        stack = await start_stack(tmp_path / "data", loop)
        try:
            assert stack.coordinator.group("done") is None
            assert stack.coordinator.group("solo") is None
            assert stack.coordinator.group("busy").state is GroupState.STABLE
        finally:
            await stack.close()
    run(main)


# ---- loading ----------------------------------------------------------------------------------

def _record(offset, key, value):
    return Record(offset, 0, key, value)


def test_loader_replays_to_the_latest_value_per_key():
    loader = PartitionLoader(3)
    value = lambda o: offset_commit_value(OffsetCommitValue(o, -1, "", 0))  # noqa: E731
    loader.apply(_record(0, offset_commit_key("g", "t", 0), value(1)))
    loader.apply(_record(1, offset_commit_key("g", "t", 1), value(2)))
    loader.apply(_record(2, offset_commit_key("g", "t", 0), value(3)))
    loader.apply(_record(3, offset_commit_key("g", "t", 1), None))           # tombstone
    loader.apply(_record(4, b"\x00\x01garbage", value(4)))                   # skipped
    loader.apply(_record(5, offset_commit_key("h", "t", 0), b"\x00\x09"))    # skipped
    loader.apply(_record(6, None, value(5)))                                 # skipped
    loader.apply(_record(7, b"\x00\x04anything", b"whatever"))               # other type
    loader.apply(_record(8, group_metadata_key("x"), group_metadata_value(
        GroupMetadataValue("consumer", 2, None, None, 5, ()))))
    loader.apply(_record(9, group_metadata_key("y"), group_metadata_value(
        GroupMetadataValue("consumer", 2, None, None, 5, ()))))
    loader.apply(_record(10, group_metadata_key("y"), None))
    assert (loader.records, loader.skipped) == (11, 3)
    groups = {g.group_id: g for g in loader.groups(now_ms=0)}
    assert sorted(groups) == ["g", "x"]
    assert {tp: o.offset for tp, o in groups["g"].offsets.items()} == {("t", 0): 3}
    assert groups["g"].offsets[("t", 0)].log_offset == 2
    assert groups["g"].state is GroupState.EMPTY and groups["g"].generation_id == 0
    assert groups["x"].state is GroupState.EMPTY and groups["x"].generation_id == 2
    assert all(g.partition == 3 for g in groups.values())


def test_groups_answer_load_in_progress_while_their_partition_loads(tmp_path):
    async def main(loop):
        stack = GroupStack(tmp_path / "data", loop)
        gate = asyncio.Event()
        real_read = stack.offsets.read

        async def slow_read(partition):
            await gate.wait()
            async for record in real_read(partition):
                yield record
        stack.offsets.read = slow_read
        coordinator = stack.coordinator
        coordinator.start(stack.stack.controller)
        try:
            await asyncio.sleep(0.1)
            assert coordinator.loading_partitions == frozenset(range(4))
            assert (await joined(coordinator, "g")).error_code == \
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
            assert await commit(coordinator, "g", {("t", 0): 1}) == \
                {("t", 0): ErrorCode.COORDINATOR_LOAD_IN_PROGRESS}
            assert coordinator.heartbeat("g", 1, "m") == 0       # answered blindly
            assert (await sync(coordinator, "g", 1, "m")).error_code == \
                ErrorCode.REBALANCE_IN_PROGRESS
            assert coordinator.list_groups()[0] == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
            gate.set()
            await coordinator.wait_loaded()
            assert coordinator.owned_partitions == frozenset(range(4))
            assert (await joined(coordinator, "g")).error_code == 0
        finally:
            await stack.close()
    run(main)

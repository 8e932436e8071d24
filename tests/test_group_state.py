"""The classic group state machine: the Group on its own, and the GroupCoordinator driving it
on a virtual-time loop over a real offsets log (tests/group_stack.py). Every transition and
every error code of JoinGroup, SyncGroup, Heartbeat and LeaveGroup; rebalances on join,
leave and session expiry; MEMBER_ID_REQUIRED; protocol selection; the timers (session,
rebalance, pending member, pending sync, initial delay) run on virtual time."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from group_stack import RANGE, join, joined, stable_member, start_stack, sync
from pylog.broker.group import Group, GroupState, Member
from pylog.broker.group.group import IllegalGroupStateError
from pylog.protocol import ErrorCode
from virtual_time import run

S = GroupState


def scenario(tmp_path, body, **settings):
    """Run ``body(stack, coordinator, loop)`` on a started stack, on virtual time."""
    async def main(loop):
        stack = await start_stack(tmp_path / "data", loop, **settings)
        try:
            await body(stack, stack.coordinator, loop)
        finally:
            await stack.close()
    run(main)


async def settle():
    """Let callbacks and tasks queued now run (no virtual time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


# ---- the Group on its own ---------------------------------------------------------------------

def _member(member_id: str, protocols=RANGE, **kw) -> Member:
    return Member(member_id, None, "c", "", kw.get("rebalance", 10_000), kw.get("session", 3000),
                  "consumer", tuple(protocols))


def test_only_kafkas_transitions_are_allowed():
    allowed = {
        (S.EMPTY, S.PREPARING_REBALANCE), (S.STABLE, S.PREPARING_REBALANCE),
        (S.COMPLETING_REBALANCE, S.PREPARING_REBALANCE),
        (S.PREPARING_REBALANCE, S.COMPLETING_REBALANCE), (S.PREPARING_REBALANCE, S.EMPTY),
        (S.COMPLETING_REBALANCE, S.STABLE),
        *((state, S.DEAD) for state in S),
    }
    for source, target in itertools.product(S, S):
        group = Group("g", 0, now_ms=0, state=source)
        if (source, target) in allowed:
            group.transition_to(target, 5)
            assert group.state is target and group.state_timestamp == 5
        else:
            with pytest.raises(IllegalGroupStateError):
                group.transition_to(target, 5)
            assert group.state is source


def test_protocol_selection_votes_among_the_protocols_every_member_supports():
    group = Group("g", 0, now_ms=0)
    group.add(_member("a", [("range", b"1"), ("roundrobin", b"2"), ("sticky", b"3")]), None)
    group.add(_member("b", [("roundrobin", b"4"), ("range", b"5")]), None)
    group.add(_member("c", [("roundrobin", b"6"), ("range", b"7")]), None)
    assert group.candidate_protocols() == ["range", "roundrobin"]   # sticky: only a has it
    assert group.select_protocol() == "roundrobin"                  # two votes against one
    assert group.supports_protocols("consumer", ["sticky", "range"])
    assert not group.supports_protocols("consumer", ["sticky"])
    assert not group.supports_protocols("connect", ["range"])


def test_protocol_selection_tie_goes_to_the_first_members_preference():
    group = Group("g", 0, now_ms=0)
    group.add(_member("a", [("roundrobin", b""), ("range", b"")]), None)
    group.add(_member("b", [("range", b""), ("roundrobin", b"")]), None)
    assert group.select_protocol() == "roundrobin"


def test_membership_bookkeeping():
    group = Group("g", 0, now_ms=0)
    assert group.supports_protocols("consumer", ["x"]) and not group.supports_protocols("", ["x"])
    assert not group.supports_protocols("consumer", [])
    group.add(_member("a"), lambda result: None)
    group.add(_member("b", rebalance=20_000), None)
    assert group.leader_id == "a" and group.protocol_type == "consumer"
    assert group.num_members_awaiting_join == 1 and not group.has_all_members_joined()
    assert [m.member_id for m in group.not_yet_rejoined_members()] == ["b"]
    assert group.rebalance_timeout_ms == 20_000
    group.remove("a")
    assert group.leader_id == "b" and group.num_members_awaiting_join == 0
    assert group.supported_protocols == {"range": 1}
    group.remove("b")
    assert group.leader_id is None and not group.supported_protocols


# ---- JoinGroup --------------------------------------------------------------------------------

def test_first_member_forms_generation_one_at_once_and_leads(tmp_path):
    async def body(stack, coordinator, loop):
        result = await joined(coordinator, "g", protocols=(("range", b"m1"), ("rr", b"m2")))
        assert result.error_code == 0 and result.member_id == "client-1"
        assert result.generation_id == 1 and result.protocol_name == "range"
        assert result.leader_id == "client-1" and result.protocol_type == "consumer"
        assert [(m.member_id, m.metadata) for m in result.members] == [("client-1", b"m1")]
        assert coordinator.group("g").state is S.COMPLETING_REBALANCE
    scenario(tmp_path, body)


def test_member_id_required_from_v4_then_join_with_it(tmp_path):
    async def body(stack, coordinator, loop):
        first = await joined(coordinator, "g", v4=True)
        assert first.error_code == ErrorCode.MEMBER_ID_REQUIRED
        assert first.member_id == "client-1" and first.generation_id == -1
        group = coordinator.group("g")
        assert group.state is S.EMPTY and group.pending_members == {"client-1"}
        again = await joined(coordinator, "g", "client-1", v4=True)
        assert again.error_code == 0 and again.generation_id == 1
        assert again.member_id == "client-1" and not group.pending_members
    scenario(tmp_path, body)


def test_a_pending_member_that_never_comes_back_expires(tmp_path):
    async def body(stack, coordinator, loop):
        await joined(coordinator, "g", v4=True, session=2000)
        assert coordinator.group("g") is not None
        await asyncio.sleep(2.001)
        assert coordinator.group("g") is None       # nothing left: the group is forgotten
        late = await joined(coordinator, "g", "client-1", v4=True)
        assert late.error_code == ErrorCode.UNKNOWN_MEMBER_ID
    scenario(tmp_path, body)


def test_a_pending_member_holds_up_a_rebalance_until_it_joins(tmp_path):
    async def body(stack, coordinator, loop):
        a, _ = await stable_member(coordinator, "g")
        b_id = (await joined(coordinator, "g", v4=True)).member_id       # pending
        a_join = join(coordinator, "g", a)     # the leader asks for a rebalance
        await settle()
        assert not a_join.done()               # waits for the pending member
        b_join = join(coordinator, "g", b_id, v4=True)
        result_a, result_b = await asyncio.gather(a_join, b_join)
        assert result_a.generation_id == result_b.generation_id == 2
        assert len(result_a.members) == 2 and result_b.members == ()
    scenario(tmp_path, body)


def test_session_timeout_bounds(tmp_path):
    async def body(stack, coordinator, loop):
        for session, code in ((999, ErrorCode.INVALID_SESSION_TIMEOUT), (1000, 0),
                              (300_000, 0), (300_001, ErrorCode.INVALID_SESSION_TIMEOUT)):
            result = await joined(coordinator, f"g{session}", session=session)
            assert result.error_code == code, session
    scenario(tmp_path, body)


def test_join_errors(tmp_path):
    async def body(stack, coordinator, loop):
        assert (await joined(coordinator, "")).error_code == ErrorCode.INVALID_GROUP_ID
        assert (await joined(coordinator, "none", "ghost")).error_code == \
            ErrorCode.UNKNOWN_MEMBER_ID
        assert coordinator.group("none") is None
        static = await joined(coordinator, "g", instance="i-1")
        assert static.error_code == ErrorCode.INVALID_REQUEST     # no static membership
        empty = await joined(coordinator, "g", protocols=())
        assert empty.error_code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        no_type = await joined(coordinator, "g", protocol_type="")
        assert no_type.error_code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        assert coordinator.group("g") is None                      # nothing was left in it
        a, _ = await stable_member(coordinator, "g")
        other = await joined(coordinator, "g", protocols=(("sticky", b""),))
        assert other.error_code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        other_type = await joined(coordinator, "g", protocol_type="connect")
        assert other_type.error_code == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        assert (await joined(coordinator, "g", "ghost")).error_code == \
            ErrorCode.UNKNOWN_MEMBER_ID
        assert coordinator.group("g").state is S.STABLE            # none of it rebalanced
    scenario(tmp_path, body)


def test_second_member_is_held_until_the_first_rejoins(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b_join = join(coordinator, "g", protocols=(("range", b"b-meta"),))
        await settle()
        group = coordinator.group("g")
        assert group.state is S.PREPARING_REBALANCE and not b_join.done()
        assert coordinator.heartbeat("g", gen, a) == ErrorCode.REBALANCE_IN_PROGRESS
        a_join = join(coordinator, "g", a)
        result_a, result_b = await asyncio.gather(a_join, b_join)
        assert result_a.generation_id == result_b.generation_id == gen + 1
        assert result_a.leader_id == result_b.leader_id == a
        assert [(m.member_id, m.metadata) for m in result_a.members] == \
            [(a, b"range-meta"), ("client-2", b"b-meta")]
        assert result_b.members == ()               # followers do not get the member list
        assert group.state is S.COMPLETING_REBALANCE
        assert coordinator.heartbeat("g", gen + 1, a) == 0   # 0 in CompletingRebalance
    scenario(tmp_path, body)


def test_members_that_do_not_rejoin_are_removed_at_the_rebalance_timeout(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", rebalance=5000)
        b_join = join(coordinator, "g", rebalance=5000)
        began = loop.time()
        while not b_join.done():                    # a keeps its session but never re-joins
            assert coordinator.heartbeat("g", gen, a) == ErrorCode.REBALANCE_IN_PROGRESS
            await asyncio.wait([b_join], timeout=1)
        assert 5 <= loop.time() - began < 6
        result = b_join.result()
        assert result.generation_id == gen + 1 and result.leader_id == "client-2"
        assert [m.member_id for m in result.members] == ["client-2"]
        assert coordinator.heartbeat("g", gen, a) == ErrorCode.UNKNOWN_MEMBER_ID
    scenario(tmp_path, body)


def test_rejoin_in_completing_rebalance_with_the_same_metadata_answers_again(tmp_path):
    async def body(stack, coordinator, loop):
        first = await joined(coordinator, "g")
        again = await joined(coordinator, "g", first.member_id)
        assert again == first                        # same generation, no rebalance
        changed = join(coordinator, "g", first.member_id, protocols=(("range", b"new"),))
        result = await changed
        assert result.generation_id == first.generation_id + 1
        assert result.members[0].metadata == b"new"
    scenario(tmp_path, body)


def test_stable_rejoin_follower_same_metadata_keeps_generation_leader_rebalances(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b_join, a_join = join(coordinator, "g"), join(coordinator, "g", a)
        b, _ = await asyncio.gather(b_join, a_join)
        gen = b.generation_id
        follower_sync = sync(coordinator, "g", gen, b.member_id)
        await sync(coordinator, "g", gen, a, {a: b"A", b.member_id: b"B"})
        assert (await follower_sync).assignment == b"B"
        again = await joined(coordinator, "g", b.member_id)
        assert again.generation_id == gen and again.members == ()
        assert coordinator.group("g").state is S.STABLE
        leader_again = join(coordinator, "g", a)
        await settle()
        assert coordinator.group("g").state is S.PREPARING_REBALANCE
        assert not leader_again.done()
    scenario(tmp_path, body)


def test_initial_rebalance_delay_gathers_early_members_into_generation_one(tmp_path):
    async def body(stack, coordinator, loop):
        began = loop.time()
        a_join = join(coordinator, "g")
        await asyncio.sleep(1)
        b_join = join(coordinator, "g")
        a, b = await asyncio.gather(a_join, b_join)
        assert a.generation_id == b.generation_id == 1
        # Kafka's InitialDelayedJoin: the first delay ends at 3 s; a member joined during it,
        # so one more delay follows (bounded by the rebalance timeout), then the generation.
        assert loop.time() - began == pytest.approx(6.0)
    scenario(tmp_path, body, initial_rebalance_delay_ms=3000)


# ---- SyncGroup --------------------------------------------------------------------------------

def test_followers_sync_waits_for_the_leaders_assignment(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b_join, a_join = join(coordinator, "g"), join(coordinator, "g", a)
        b, a_result = await asyncio.gather(b_join, a_join)
        gen = b.generation_id
        follower = sync(coordinator, "g", gen, b.member_id)
        await asyncio.sleep(1)
        assert not follower.done()
        leader = sync(coordinator, "g", gen, a, {a: b"for-a", b.member_id: b"for-b"})
        assert (await leader).assignment == b"for-a"
        got = await follower
        assert got.error_code == 0 and got.assignment == b"for-b"
        assert got.protocol_name == "range" and got.protocol_type == "consumer"
        group = coordinator.group("g")
        assert group.state is S.STABLE
        again = await sync(coordinator, "g", gen, b.member_id)   # Stable: the same answer
        assert again.assignment == b"for-b"
    scenario(tmp_path, body)


def test_a_member_left_out_of_the_assignment_gets_an_empty_one(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b, _ = await asyncio.gather(join(coordinator, "g"), join(coordinator, "g", a))
        follower = sync(coordinator, "g", b.generation_id, b.member_id)
        await sync(coordinator, "g", b.generation_id, a, {a: b"x", "stranger": b"y"})
        assert (await follower).assignment == b""
    scenario(tmp_path, body)


def test_sync_errors(tmp_path):
    async def body(stack, coordinator, loop):
        assert (await sync(coordinator, "nope", 1, "m")).error_code == \
            ErrorCode.UNKNOWN_MEMBER_ID
        assert (await sync(coordinator, "", 1, "m")).error_code == ErrorCode.INVALID_GROUP_ID
        a, gen = await stable_member(coordinator, "g")
        assert (await sync(coordinator, "g", gen, "ghost")).error_code == \
            ErrorCode.UNKNOWN_MEMBER_ID
        assert (await sync(coordinator, "g", gen + 1, a)).error_code == \
            ErrorCode.ILLEGAL_GENERATION
        join(coordinator, "g")                        # a rebalance starts
        await settle()
        assert (await sync(coordinator, "g", gen, a)).error_code == \
            ErrorCode.REBALANCE_IN_PROGRESS
    scenario(tmp_path, body)


def test_a_rebalance_answers_held_syncs_with_rebalance_in_progress(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b, _ = await asyncio.gather(join(coordinator, "g"), join(coordinator, "g", a))
        follower = sync(coordinator, "g", b.generation_id, b.member_id)
        await settle()
        join(coordinator, "g")                        # a third member, before the leader syncs
        result = await follower
        assert result.error_code == ErrorCode.REBALANCE_IN_PROGRESS
        assert result.assignment == b""
    scenario(tmp_path, body)


def test_members_that_never_sync_are_removed_after_the_rebalance_timeout(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", rebalance=4000)
        b, _ = await asyncio.gather(join(coordinator, "g", rebalance=4000),
                                    join(coordinator, "g", a, rebalance=4000))
        leader = sync(coordinator, "g", b.generation_id, a, {a: b"x", b.member_id: b"y"})
        assert (await leader).error_code == 0
        for _ in range(5):                            # both heartbeat, b never syncs
            await asyncio.sleep(1)
            coordinator.heartbeat("g", b.generation_id, a)
            code = coordinator.heartbeat("g", b.generation_id, b.member_id)
        assert code == ErrorCode.UNKNOWN_MEMBER_ID
        assert coordinator.group("g").state is S.PREPARING_REBALANCE
        assert coordinator.heartbeat("g", b.generation_id, a) == \
            ErrorCode.REBALANCE_IN_PROGRESS
    scenario(tmp_path, body)


# ---- Heartbeat and sessions -------------------------------------------------------------------

def test_heartbeat_error_codes(tmp_path):
    async def body(stack, coordinator, loop):
        assert coordinator.heartbeat("", 0, "m") == ErrorCode.INVALID_GROUP_ID
        assert coordinator.heartbeat("nope", 0, "m") == ErrorCode.UNKNOWN_MEMBER_ID
        first = await joined(coordinator, "g")
        a, gen = first.member_id, first.generation_id
        assert coordinator.heartbeat("g", gen, a) == 0             # CompletingRebalance
        await sync(coordinator, "g", gen, a, {a: b""})
        assert coordinator.heartbeat("g", gen, a) == 0             # Stable
        assert coordinator.heartbeat("g", gen, "ghost") == ErrorCode.UNKNOWN_MEMBER_ID
        assert coordinator.heartbeat("g", gen + 1, a) == ErrorCode.ILLEGAL_GENERATION
        assert coordinator.heartbeat("g", gen - 1, a) == ErrorCode.ILLEGAL_GENERATION
        join(coordinator, "g")
        await settle()
        assert coordinator.heartbeat("g", gen, a) == ErrorCode.REBALANCE_IN_PROGRESS
    scenario(tmp_path, body)


def test_heartbeats_keep_a_member_past_its_session_timeout(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", session=3000)
        for _ in range(10):
            await asyncio.sleep(2)
            assert coordinator.heartbeat("g", gen, a) == 0
        assert coordinator.group("g").state is S.STABLE
    scenario(tmp_path, body)


def test_session_expiry_removes_the_member_and_rebalances_the_others(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", session=3000)
        b_join = join(coordinator, "g", session=3000)
        a_again = join(coordinator, "g", a, session=3000)
        b, _ = await asyncio.gather(b_join, a_again)
        gen = b.generation_id
        follower = sync(coordinator, "g", gen, b.member_id)
        await sync(coordinator, "g", gen, a, {a: b"", b.member_id: b""})
        await follower
        for _ in range(2):                       # only a heartbeats
            await asyncio.sleep(1.4)
            assert coordinator.heartbeat("g", gen, a) == 0
        await asyncio.sleep(0.4)                 # b's 3 s session is over
        assert coordinator.heartbeat("g", gen, a) == ErrorCode.REBALANCE_IN_PROGRESS
        assert not coordinator.group("g").has(b.member_id)
        result = await joined(coordinator, "g", a, session=3000)
        assert result.generation_id == gen + 1 and [m.member_id for m in result.members] == [a]
    scenario(tmp_path, body)


def test_the_last_member_expiring_empties_the_group(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", session=1000)
        await asyncio.sleep(1.001)
        group = coordinator.group("g")
        assert group.state is S.EMPTY and group.generation_id == gen + 1
        assert not group.members and group.leader_id is None and group.protocol_name is None
        assert group.protocol_type == "consumer"        # kept while Empty
        assert coordinator.heartbeat("g", gen + 1, a) == ErrorCode.UNKNOWN_MEMBER_ID
    scenario(tmp_path, body)


def test_a_new_member_whose_join_is_held_is_kept_by_the_rebalance(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g", session=1000, rebalance=8000)
        for _ in range(3):
            await asyncio.sleep(0.5)
            coordinator.heartbeat("g", gen, a)
        b_join = join(coordinator, "g", session=1000, rebalance=8000)
        a_join = join(coordinator, "g", a, session=1000, rebalance=8000)
        await settle()
        # Both wait in PreparingRebalance far beyond their 1 s sessions: nobody expires.
        b, a_result = await asyncio.gather(b_join, a_join)
        assert b.error_code == 0 and a_result.error_code == 0
    scenario(tmp_path, body)


# ---- LeaveGroup -------------------------------------------------------------------------------

def test_leave_rebalances_the_rest(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b, _ = await asyncio.gather(join(coordinator, "g"), join(coordinator, "g", a))
        follower = sync(coordinator, "g", b.generation_id, b.member_id)
        await sync(coordinator, "g", b.generation_id, a, {})
        await follower
        result = coordinator.leave_group("g", [(a, None)])
        assert result.error_code == 0 and [m.error_code for m in result.members] == [0]
        group = coordinator.group("g")
        assert group.state is S.PREPARING_REBALANCE and group.leader_id == b.member_id
        assert coordinator.heartbeat("g", b.generation_id, b.member_id) == \
            ErrorCode.REBALANCE_IN_PROGRESS
        again = await joined(coordinator, "g", b.member_id)
        assert again.generation_id == b.generation_id + 1 and again.leader_id == b.member_id
        last = coordinator.leave_group("g", [(b.member_id, None)])
        assert last.members[0].error_code == 0
        assert group.state is S.EMPTY and group.generation_id == b.generation_id + 2
    scenario(tmp_path, body)


def test_leave_errors_and_several_members_at_once(tmp_path):
    async def body(stack, coordinator, loop):
        assert coordinator.leave_group("", [("m", None)]).error_code == \
            ErrorCode.INVALID_GROUP_ID
        unknown_group = coordinator.leave_group("nope", [("m", None)])
        assert unknown_group.error_code == 0
        assert unknown_group.members[0].error_code == ErrorCode.UNKNOWN_MEMBER_ID
        a, gen = await stable_member(coordinator, "g")
        pending = (await joined(coordinator, "g", v4=True)).member_id
        result = coordinator.leave_group("g", [(a, None), ("ghost", None), (pending, None),
                                               ("", "instance-1")])
        assert [m.error_code for m in result.members] == [
            0, ErrorCode.UNKNOWN_MEMBER_ID, 0, ErrorCode.UNKNOWN_MEMBER_ID]
        assert coordinator.group("g").state is S.EMPTY
    scenario(tmp_path, body)


def test_leave_while_held_in_a_rebalance_answers_the_held_join(tmp_path):
    async def body(stack, coordinator, loop):
        a, gen = await stable_member(coordinator, "g")
        b_join = join(coordinator, "g")
        await settle()
        coordinator.leave_group("g", [("client-2", None)])
        result = await b_join
        assert result.error_code == ErrorCode.UNKNOWN_MEMBER_ID
        a_join = await joined(coordinator, "g", a)    # a alone now
        assert a_join.generation_id == gen + 1 and len(a_join.members) == 1
    scenario(tmp_path, body)


# ---- admin views ------------------------------------------------------------------------------

def test_describe_and_list_groups(tmp_path):
    async def body(stack, coordinator, loop):
        dead = coordinator.describe_group("nope")
        assert (dead.error_code, dead.state, dead.protocol_type, dead.members) == \
            (0, "Dead", "", ())
        first = await joined(coordinator, "g", client="consumer-1")
        completing = coordinator.describe_group("g")
        assert completing.state == "CompletingRebalance" and completing.protocol == ""
        assert [(m.client_id, m.metadata, m.assignment) for m in completing.members] == \
            [("consumer-1", b"", b"")]
        await sync(coordinator, "g", first.generation_id, first.member_id,
                   {first.member_id: b"assigned"})
        stable = coordinator.describe_group("g")
        assert (stable.state, stable.protocol_type, stable.protocol) == \
            ("Stable", "consumer", "range")
        assert [(m.member_id, m.metadata, m.assignment) for m in stable.members] == \
            [(first.member_id, b"range-meta", b"assigned")]
        error, groups = coordinator.list_groups()
        assert error == 0 and [(g.group_id, g.protocol_type, g.state) for g in groups] == \
            [("g", "consumer", "Stable")]
    scenario(tmp_path, body)


def test_a_coordinator_that_is_not_serving(tmp_path):
    async def body(stack, coordinator, loop):
        held = join(coordinator, "g")
        await held
        pending = join(coordinator, "g")
        await settle()
        await coordinator.close()
        assert (await pending).error_code == ErrorCode.NOT_COORDINATOR
        assert (await joined(coordinator, "g")).error_code == \
            ErrorCode.COORDINATOR_NOT_AVAILABLE
        assert coordinator.heartbeat("g", 1, "m") == ErrorCode.COORDINATOR_NOT_AVAILABLE
        assert coordinator.list_groups() == (ErrorCode.COORDINATOR_NOT_AVAILABLE, [])
    scenario(tmp_path, body)

"""The purgatory on its own, and long-poll fetches parked in it (virtual time, no sleeps)."""
from __future__ import annotations

import asyncio

import pytest

from pylog.broker.purgatory import DelayedOperation, Purgatory, PurgatoryClosedError
from replica_stack import Stack, batch, fetch_request, offsets_of
from virtual_time import run


class WaitForCounter(DelayedOperation):
    """Done when ``box[0]`` reaches ``target``."""

    def __init__(self, box: list, target: int):
        super().__init__()
        self.box, self.target = box, target
        self.expired = self.closed = False

    def try_complete(self) -> bool:
        if self.box[0] >= self.target:
            return self.finish(("done", self.box[0]))
        return False

    def on_expire(self) -> None:
        self.expired = True
        self.finish(("expired", self.box[0]))

    def on_close(self) -> None:
        self.closed = True
        self.finish(("closed", self.box[0]))


# ---- the purgatory ----------------------------------------------------------------------------

def test_completes_at_once_without_parking():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        future = purgatory.watch(WaitForCounter([5], 3), ["k"], 10)
        assert future.done() and future.result() == ("done", 5)
        assert len(purgatory) == 0 and purgatory.watched("k") == 0
    run(main)


def test_check_completes_only_the_key_that_changed():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        box_a, box_b = [0], [0]
        fa = purgatory.watch(WaitForCounter(box_a, 1), ["a"], 10)
        fb = purgatory.watch(WaitForCounter(box_b, 1), ["b"], 10)
        assert len(purgatory) == 2
        box_a[0] = box_b[0] = 1
        assert purgatory.check("a") == 1
        assert fa.done() and not fb.done()
        assert purgatory.watched("a") == 0 and purgatory.watched("b") == 1
        assert purgatory.check("b") == 1 and fb.result() == ("done", 1)
        assert len(purgatory) == 0
        assert purgatory.check("nobody") == 0
    run(main)


def test_expires_exactly_at_the_deadline():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        start = loop.time()
        op = WaitForCounter([0], 1)
        result = await purgatory.watch(op, ["k"], 2.5)
        assert result == ("expired", 0) and op.expired
        assert loop.time() - start == pytest.approx(2.5)
        assert len(purgatory) == 0
        immediate = purgatory.watch(WaitForCounter([0], 1), ["k"], 0)
        assert immediate.done() and immediate.result() == ("expired", 0)
    run(main)


def test_completion_cancels_the_timer():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        box = [0]
        op = WaitForCounter(box, 1)
        future = purgatory.watch(op, ["k"], 5)
        box[0] = 1
        purgatory.check("k")
        assert await future == ("done", 1)
        await asyncio.sleep(10)  # past the old deadline: on_expire must not run
        assert not op.expired
    run(main)


def test_operation_under_several_keys_leaves_all_of_them():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        box = [0]
        future = purgatory.watch(WaitForCounter(box, 1), ["a", "b", "c", "a"], 5)
        assert [purgatory.watched(k) for k in "abc"] == [1, 1, 1]
        box[0] = 1
        purgatory.check("b")
        assert future.done()
        assert [purgatory.watched(k) for k in "abc"] == [0, 0, 0]
        assert len(purgatory) == 0
    run(main)


def test_many_waiters_complete_in_parking_order():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        box = [0]
        order = []
        futures = []
        for i in range(500):
            future = purgatory.watch(WaitForCounter(box, 1 + i % 2), ["k"], 30)
            future.add_done_callback(lambda f, i=i: order.append(i))
            futures.append(future)
        box[0] = 1
        assert purgatory.check("k") == 250
        assert purgatory.watched("k") == 250
        box[0] = 2
        assert purgatory.check("k") == 250
        await asyncio.gather(*futures)
        assert order == list(range(0, 500, 2)) + list(range(1, 500, 2))
    run(main)


def test_cancel_and_close():
    async def main(loop):
        purgatory = Purgatory(loop=loop)
        kept, dropped = WaitForCounter([0], 1), WaitForCounter([0], 1)
        kept_future = purgatory.watch(kept, ["k"], 30)
        dropped_future = purgatory.watch(dropped, ["k"], 30)
        assert purgatory.cancel(dropped) and dropped_future.cancelled()
        assert not purgatory.cancel(dropped)
        assert purgatory.watched("k") == 1
        assert purgatory.close() == 1
        assert kept.closed and kept_future.result() == ("closed", 0)
        assert len(purgatory) == 0
        late = WaitForCounter([9], 1)  # would complete, but the purgatory is closed
        assert purgatory.watch(late, ["k"], 30).result() == ("closed", 9)
    run(main)


def test_close_without_on_close_result_fails_the_waiter():
    class Forgetful(WaitForCounter):
        def on_close(self):
            pass

    async def main(loop):
        purgatory = Purgatory(loop=loop)
        future = purgatory.watch(Forgetful([0], 1), ["k"], 30)
        purgatory.close()
        with pytest.raises(PurgatoryClosedError):
            await future
    run(main)


def test_a_failing_condition_fails_its_waiter_only():
    class Broken(WaitForCounter):
        def try_complete(self):
            if self.box[0]:
                raise ZeroDivisionError("bug")
            return False

    async def main(loop):
        purgatory = Purgatory(loop=loop)
        box = [0]
        broken = purgatory.watch(Broken(box, 1), ["k"], 30)
        fine = purgatory.watch(WaitForCounter(box, 1), ["k"], 30)
        box[0] = 1
        assert purgatory.check("k") == 2
        with pytest.raises(ZeroDivisionError):
            broken.result()
        assert fine.result() == ("done", 1)
        assert len(purgatory) == 0
    run(main)


# ---- long-poll fetch --------------------------------------------------------------------------

TP = ("t", 0)


def make_stack(tmp_path, loop, **kw) -> Stack:
    stack = Stack(tmp_path / "data", clock=loop.time, loop=loop, **kw)
    stack.controller.create_topic("t", 1, 1)
    return stack


def test_long_poll_fetch_wakes_on_append(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        rm = stack.rm
        start = loop.time()
        waiting = loop.create_task(rm.fetch(-1, 5000, 1, 1 << 20, 0, [fetch_request("t", 0, 0)]))
        await asyncio.sleep(0)
        assert not waiting.done() and rm.purgatory.watched(TP) == 1
        await rm.produce(1, 1000, {TP: memoryview(batch(3))})
        [result] = await waiting
        assert result.error_code == 0 and offsets_of(result.records) == [0, 1, 2]
        assert result.high_watermark == 3
        assert loop.time() == start  # woken by the append, not by the clock
        assert len(rm.purgatory) == 0
        await stack.close()
    run(main)


def test_long_poll_fetch_times_out_at_max_wait(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        start = loop.time()
        [result] = await stack.rm.fetch(-1, 500, 1, 1 << 20, 0, [fetch_request("t", 0, 0)])
        assert loop.time() - start == pytest.approx(0.5)
        assert result.error_code == 0 and result.records == b""
        assert result.high_watermark == 0
        assert len(stack.rm.purgatory) == 0
        await stack.close()
    run(main)


def test_long_poll_waits_for_min_bytes(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        rm = stack.rm
        first = batch(1, value_size=10)
        waiting = loop.create_task(rm.fetch(-1, 5000, 2 * len(first), 1 << 20, 0,
                                            [fetch_request("t", 0, 0)]))
        await asyncio.sleep(0)
        await rm.produce(1, 1000, {TP: memoryview(first)})
        await asyncio.sleep(0)
        assert not waiting.done()  # one small batch is not min_bytes yet
        await rm.produce(1, 1000, {TP: memoryview(batch(1, value_size=10))})
        [result] = await waiting
        assert offsets_of(result.records) == [0, 1]
        await stack.close()
    run(main)


def test_many_waiting_fetches_wake_on_one_append(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        rm = stack.rm
        waiting = [loop.create_task(rm.fetch(-1, 5000, 1, 1 << 20, 0,
                                             [fetch_request("t", 0, 0)]))
                   for _ in range(50)]
        await asyncio.sleep(0)
        assert rm.purgatory.watched(TP) == 50
        start = loop.time()
        await rm.produce(1, 1000, {TP: memoryview(batch(2))})
        results = await asyncio.gather(*waiting)
        assert loop.time() == start
        assert all(offsets_of(r[0].records) == [0, 1] for r in results)
        await stack.close()
    run(main)


def test_cancelled_fetch_leaves_the_purgatory(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        rm = stack.rm
        waiting = loop.create_task(rm.fetch(-1, 5000, 1, 1 << 20, 0, [fetch_request("t", 0, 0)]))
        await asyncio.sleep(0)
        assert len(rm.purgatory) == 1
        waiting.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert len(rm.purgatory) == 0
        await stack.close()
    run(main)


def test_close_answers_parked_fetches(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        rm = stack.rm
        waiting = [loop.create_task(rm.fetch(-1, 60000, 1, 1 << 20, 0,
                                             [fetch_request("t", 0, 0)]))
                   for _ in range(3)]
        await asyncio.sleep(0)
        start = loop.time()
        await stack.close()
        results = await asyncio.gather(*waiting)
        assert loop.time() == start  # not at their deadline
        assert all(r[0].error_code == 0 and r[0].records == b"" for r in results)
        assert len(rm.purgatory) == 0
        assert rm.purgatory.closed
    run(main)


def test_consumer_long_poll_wakes_on_high_watermark_not_on_append(tmp_path):
    async def main(loop):
        stack = Stack(tmp_path / "data", brokers=(1, 2), clock=loop.time, loop=loop)
        stack.controller.create_topic("t", -1, -1, assignments={0: [1, 2]})
        rm = stack.rm
        consumer = loop.create_task(rm.fetch(-1, 5000, 1, 1 << 20, 0,
                                             [fetch_request("t", 0, 0)]))
        await asyncio.sleep(0)
        await rm.produce(1, 1000, {TP: memoryview(batch(2))})
        await asyncio.sleep(0)
        assert not consumer.done()  # appended, but the follower has not got it: HW 0
        [follower_read] = await rm.fetch(2, 0, 1, 1 << 20, 0, [fetch_request("t", 0, 0)])
        assert offsets_of(follower_read.records) == [0, 1]  # followers read to the LEO
        assert not consumer.done()
        await rm.fetch(2, 0, 1, 1 << 20, 0, [fetch_request("t", 0, 2)])  # follower at 2
        [result] = await consumer
        assert result.high_watermark == 2 and offsets_of(result.records) == [0, 1]
        await stack.close()
    run(main)


def test_fetch_on_a_deleted_topic_wakes_with_3(tmp_path):
    async def main(loop):
        stack = make_stack(tmp_path, loop)
        waiting = loop.create_task(stack.rm.fetch(-1, 5000, 1, 1 << 20, 0,
                                                  [fetch_request("t", 0, 0)]))
        await asyncio.sleep(0)
        stack.controller.delete_topic("t")
        [result] = await waiting
        assert result.error_code == 3
        await stack.close()
    run(main)

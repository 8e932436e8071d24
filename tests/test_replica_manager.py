"""ReplicaManager end to end on a real LogManager: produce, fetch, list offsets, topics."""
from __future__ import annotations

import asyncio
import os
import struct
from concurrent.futures import Future

import pytest

from pylog.broker.replica_manager import (PARTITION_METADATA_FILE, ReplicaManager,
                                          read_partition_topic_id)
from pylog.controller import Controller, MetadataStore
from pylog.records import build_batch, iter_records
from replica_stack import CLUSTER_ID, Stack, batch, fetch_request, offsets_of
from virtual_time import run

TP = ("t", 0)


def stack_with_topic(tmp_path, loop, partitions=1, configs=None, **kw) -> Stack:
    stack = Stack(tmp_path / "data", clock=loop.time, loop=loop, **kw)
    stack.controller.create_topic("t", partitions, 1, configs)
    return stack


async def fetch_one(rm, offset, *, partition=0, max_bytes=1 << 20, replica=-1):
    [result] = await rm.fetch(replica, 0, 1, max_bytes, 0,
                              [fetch_request("t", partition, offset, max_bytes)])
    return result


# ---- produce and fetch ------------------------------------------------------------------------

def test_produce_then_fetch_round_trip(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        rm = stack.rm
        sent = [batch(3, key=b"a"), batch(1, key=b"b"), batch(4, key=b"c")]
        originals = [bytes(b) for b in sent]
        bases = []
        for records in sent:
            result = (await rm.produce(1, 1000, {TP: memoryview(records)}))[TP]
            assert result.error_code == 0 and result.log_start_offset == 0
            bases.append(result.base_offset)
        assert bases == [0, 3, 4]
        # the base offsets were stamped into the request buffers themselves
        assert [struct.unpack_from(">q", b)[0] for b in sent] == [0, 3, 4]
        read = await fetch_one(rm, 0)
        assert read.error_code == 0 and read.high_watermark == read.last_stable_offset == 8
        assert read.log_start_offset == 0
        records = list(iter_records(read.records))
        assert [r.offset for r in records] == list(range(8))
        expected = [r for o in originals for r in iter_records(o)]
        assert [(r.key, r.value, r.headers) for r in records] == \
            [(r.key, r.value, r.headers) for r in expected]
        assert bytes(read.records) == b"".join(bytes(b) for b in sent)  # bytes unchanged
        assert offsets_of((await fetch_one(rm, 5)).records) == [4, 5, 6, 7]  # whole batch
        await stack.close()
    run(main)


def test_acks_values(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        rm = stack.rm
        assert (await rm.produce(0, 1000, {TP: memoryview(batch(2))}))[TP].error_code == 0
        assert (await rm.produce(-1, 1000, {TP: memoryview(batch(2))}))[TP].base_offset == 2
        result = (await rm.produce(2, 1000, {TP: memoryview(batch(2))}))[TP]
        assert result.error_code == 21
        assert rm.partition(*TP).log_end_offset == 4
        await stack.close()
    run(main)


def test_read_only_records_are_accepted(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        data = bytes(batch(2))
        result = (await stack.rm.produce(1, 1000, {TP: memoryview(data)}))[TP]
        assert result.error_code == 0
        assert offsets_of((await fetch_one(stack.rm, 0)).records) == [0, 1]
        await stack.close()
    run(main)


def test_unknown_topic_or_partition_is_3(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        rm = stack.rm
        for tp in (("nope", 0), ("t", 1), ("t", -1)):
            assert (await rm.produce(1, 1000, {tp: memoryview(batch(1))}))[tp].error_code == 3
            [read] = await rm.fetch(-1, 0, 1, 1 << 20, 0, [fetch_request(*tp, 0)])
            assert read.error_code == 3 and read.records == b""
            assert rm.list_offsets(*tp, -1, 0).error_code == 3
        await stack.close()
    run(main)


def test_auto_create_on_produce(tmp_path):
    async def main(loop):
        stack = Stack(tmp_path / "data", clock=loop.time, loop=loop, default_partitions=2)
        rm = stack.rm
        tp = ("fresh", 1)
        result = (await rm.produce(1, 1000, {tp: memoryview(batch(1))},
                                   allow_auto_create=True))[tp]
        assert result.error_code == 0
        assert len(stack.controller.metadata.topics["fresh"].partitions) == 2
        bad = ("bad/name", 0)
        assert (await rm.produce(1, 1000, {bad: memoryview(batch(1))},
                                 allow_auto_create=True))[bad].error_code == 17
        beyond = ("fresh", 5)
        assert (await rm.produce(1, 1000, {beyond: memoryview(batch(1))},
                                 allow_auto_create=True))[beyond].error_code == 3
        await stack.close()
    run(main)


def corrupt_crc(data: bytearray) -> bytearray:
    data[17] ^= 0xFF
    return data


def bad_magic(data: bytearray) -> bytearray:
    data[16] = 1
    return data


def bad_record_count(data: bytearray) -> bytearray:
    """A record count that disagrees with lastOffsetDelta, with the CRC fixed up."""
    from pylog.core import crc32c
    struct.pack_into(">i", data, 57, 5)
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    return data


@pytest.mark.parametrize("damage", [
    corrupt_crc, bad_magic, bad_record_count,
    lambda d: d[:-3],                                   # truncated
    lambda d: d + bytearray(b"\x00\x00"),               # trailing garbage
    lambda d: bytearray(os.urandom(200)),               # random bytes
    lambda d: d[:10],                                   # shorter than a header
])
def test_corrupt_batches_are_2_and_nothing_is_stored(tmp_path, damage):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        rm = stack.rm
        await rm.produce(1, 1000, {TP: memoryview(batch(2))})
        size = rm.partition(*TP).size_bytes
        result = (await rm.produce(1, 1000, {TP: memoryview(damage(batch(3)))}))[TP]
        assert result.error_code == 2 and result.error_message
        partition = rm.partition(*TP)
        assert partition.log_end_offset == 2 and partition.size_bytes == size
        assert offsets_of((await fetch_one(rm, 0)).records) == [0, 1]
        await stack.close()
    run(main)


def test_one_bad_partition_does_not_fail_the_others(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, partitions=2)
        results = await stack.rm.produce(1, 1000, {("t", 0): memoryview(corrupt_crc(batch(1))),
                                                    ("t", 1): memoryview(batch(1))})
        assert results[("t", 0)].error_code == 2 and results[("t", 1)].error_code == 0
        await stack.close()
    run(main)


def test_oversize_batch_is_10_and_nothing_is_stored(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, configs={"max.message.bytes": "300"})
        rm = stack.rm
        big = batch(1, value_size=400)
        assert (await rm.produce(1, 1000, {TP: memoryview(big)}))[TP].error_code == 10
        assert rm.partition(*TP).log_end_offset == 0 and rm.partition(*TP).size_bytes == 0
        assert (await rm.produce(1, 1000, {TP: memoryview(batch(1))}))[TP].error_code == 0
        await stack.close()
    run(main)


def test_empty_records_are_87(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        for records in (b"", None):
            result = (await stack.rm.produce(1, 1000, {TP: records}))[TP]
            assert result.error_code == 87
        await stack.close()
    run(main)


# ---- fetch edges --------------------------------------------------------------------------------

def test_fetch_offset_edges(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, configs={"segment.bytes": "200"})
        rm = stack.rm
        for _ in range(6):
            await rm.produce(1, 1000, {TP: memoryview(batch(2, value_size=40))})
        partition = rm.partition(*TP)
        assert partition.log_end_offset == 12 and len(partition.log.segments) > 2
        at_end = await fetch_one(rm, 12)
        assert (at_end.error_code, at_end.records, at_end.high_watermark) == (0, b"", 12)
        assert (await fetch_one(rm, 13)).error_code == 1
        assert (await fetch_one(rm, -1)).error_code == 1
        partition.log.delete_records_before(4)
        assert partition.log_start_offset == 4
        assert (await fetch_one(rm, 3)).error_code == 1
        read = await fetch_one(rm, 4)
        assert read.error_code == 0 and read.log_start_offset == 4
        assert offsets_of(read.records)[0] == 4
        assert rm.list_offsets("t", 0, -2, 0).offset == 4
        await stack.close()
    run(main)


def test_kip74_first_batch_whole_even_over_the_limits(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, partitions=2)
        rm = stack.rm
        for p in (0, 1):
            await rm.produce(1, 1000, {("t", p): memoryview(batch(1, value_size=1000))})
        results = await rm.fetch(-1, 0, 1, 100, 0, [fetch_request("t", 0, 0, 100),
                                                    fetch_request("t", 1, 0, 100)])
        assert offsets_of(results[0].records) == [0]      # over both limits, yet whole
        assert len(results[0].records) > 1000
        assert results[1].records == b"" and results[1].error_code == 0
        # the first partition with data gets the batch, even if it is not the first asked
        results = await rm.fetch(-1, 0, 1, 100, 0, [fetch_request("t", 0, 1, 100),
                                                    fetch_request("t", 1, 0, 100)])
        assert results[0].records == b"" and offsets_of(results[1].records) == [0]
        await stack.close()
    run(main)


def test_max_bytes_bounds_the_whole_response(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, partitions=3)
        rm = stack.rm
        one = len(batch(1, value_size=250))
        for p in range(3):
            for _ in range(3):
                await rm.produce(1, 1000, {("t", p): memoryview(batch(1, value_size=250))})
        requests = [fetch_request("t", p, 0, 10 * one) for p in range(3)]
        results = await rm.fetch(-1, 0, 1, 4 * one, 0, requests)
        sizes = [len(r.records) for r in results]
        assert sizes == [3 * one, one, 0]
        assert sum(sizes) <= 4 * one
        # partition_max_bytes bounds each partition too
        requests = [fetch_request("t", p, 0, 2 * one) for p in range(3)]
        results = await rm.fetch(-1, 0, 1, 100 * one, 0, requests)
        assert [len(r.records) for r in results] == [2 * one] * 3
        await stack.close()
    run(main)


# ---- list offsets -------------------------------------------------------------------------------

def test_list_offsets(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        rm = stack.rm
        empty = rm.list_offsets("t", 0, -1, 0)
        assert (empty.error_code, empty.offset, empty.timestamp) == (0, 0, -1)
        for stamp in (1000, 2000, 3000):
            records = bytearray(build_batch([(b"k", b"v", (), stamp), (b"k", b"v", (), stamp + 1)]))
            await rm.produce(1, 1000, {TP: memoryview(records)})
        latest = rm.list_offsets("t", 0, -1, 0)
        assert (latest.offset, latest.timestamp, latest.leader_epoch) == (6, -1, 0)
        assert rm.list_offsets("t", 0, -1, 1).offset == 6  # read_committed: LSO = HW
        earliest = rm.list_offsets("t", 0, -2, 0)
        assert (earliest.offset, earliest.timestamp) == (0, -1)
        by_time = rm.list_offsets("t", 0, 1500, 0)
        assert (by_time.offset, by_time.timestamp, by_time.leader_epoch) == (2, 2000, 0)
        exact = rm.list_offsets("t", 0, 2001, 0)
        assert (exact.offset, exact.timestamp) == (3, 2001)
        assert rm.list_offsets("t", 0, 0, 0).offset == 0
        none = rm.list_offsets("t", 0, 5000, 0)
        assert (none.error_code, none.offset, none.timestamp) == (0, -1, -1)
        assert rm.list_offsets("t", 0, -7, 0).error_code == 42
        await stack.close()
    run(main)


# ---- topics come and go ---------------------------------------------------------------------

def test_topic_deletion_removes_the_log(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, partitions=2)
        rm = stack.rm
        await rm.produce(1, 1000, {TP: memoryview(batch(1))})
        directory = rm.partition(*TP).log.directory
        assert os.path.isdir(directory)
        stack.controller.delete_topic("t")
        assert rm.partition(*TP) is None and rm.partitions() == []
        assert not os.path.exists(directory)
        assert (await rm.produce(1, 1000, {TP: memoryview(batch(1))}))[TP].error_code == 3
        stack.controller.create_topic("t", 1, 1)  # a new topic of the same name: empty
        assert rm.partition(*TP).log_end_offset == 0
        await stack.close()
    run(main)


def test_restart_keeps_data_and_high_watermark(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, partitions=2, configs={"retention.ms": "-1"})
        for i in range(5):
            await stack.rm.produce(1, 1000, {TP: memoryview(batch(i + 1))})
        before = bytes((await fetch_one(stack.rm, 0)).records)
        hw = stack.rm.partition(*TP).high_watermark
        topic_id = stack.controller.metadata.topics["t"].topic_id
        await stack.close()

        again = Stack(tmp_path / "data", clock=loop.time, loop=loop)
        rm = again.rm
        partition = rm.partition(*TP)
        assert partition.high_watermark == hw == 15 and partition.log_end_offset == 15
        assert partition.log.config.retention_ms == -1  # the topic config came back
        assert again.controller.metadata.topics["t"].topic_id == topic_id
        assert bytes((await fetch_one(rm, 0)).records) == before
        assert rm.list_offsets("t", 0, -1, 0).offset == 15
        result = (await rm.produce(-1, 1000, {TP: memoryview(batch(1))}))[TP]
        assert result.base_offset == 15
        await again.close()
    run(main)


def test_log_of_a_deleted_topic_is_not_served_as_a_new_one(tmp_path):
    """The topic was deleted while the broker was down (metadata committed, the log still on
    disk), then re-created: the old log must not come back as the new topic's data."""
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop)
        await stack.rm.produce(1, 1000, {TP: memoryview(batch(4))})
        directory = stack.rm.partition(*TP).log.directory
        old_id = read_partition_topic_id(directory)
        assert old_id == stack.controller.metadata.topics["t"].topic_id
        await stack.close()

        data_dir = str(tmp_path / "data")
        controller = Controller(MetadataStore.in_data_dir(data_dir), cluster_id=CLUSTER_ID,
                                node_id=1)
        controller.delete_topic("t")
        controller.create_topic("t", 1, 1)
        assert os.path.exists(os.path.join(directory, PARTITION_METADATA_FILE))

        again = Stack(tmp_path / "data", clock=loop.time, loop=loop)
        partition = again.rm.partition(*TP)
        assert partition.log_end_offset == 0
        assert read_partition_topic_id(directory) == partition.topic_id != old_id
        await again.close()
    run(main)


def test_parked_acks_all_is_answered_at_close(tmp_path):
    async def main(loop):
        stack = Stack(tmp_path / "data", brokers=(1, 2), clock=loop.time, loop=loop)
        stack.controller.create_topic("t", -1, -1, assignments={0: [1, 2]})
        waiting = loop.create_task(stack.rm.produce(-1, 60000, {TP: memoryview(batch(1))}))
        await asyncio.sleep(0)
        assert not waiting.done()
        await stack.close()
        assert (await waiting)[TP].error_code == 6
        assert (await stack.rm.produce(1, 1000, {TP: memoryview(batch(1))}))[TP].error_code \
            == 6
    run(main)


def test_close_answers_fetches_at_once_and_lets_fsyncs_in_flight_finish(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, configs={"flush.messages": "1"})
        rm = stack.rm
        partition = rm.partition(*TP)
        fsyncs: list[Future] = []

        def slow_disk(log, up_to):  # an fsync that completes when the test says so
            future: Future = Future()
            fsyncs.append(future)
            return future

        partition.log._flush_requester = slow_disk
        fetching = loop.create_task(rm.fetch(-1, 60000, 1, 1 << 20, 0,
                                             [fetch_request("t", 0, 0)]))
        producing = loop.create_task(rm.produce(1, 30000, {TP: memoryview(batch(2))}))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(fsyncs) == 1 and not producing.done()
        assert not fetching.done()  # appended, but not durable: HW still 0
        closing = loop.create_task(rm.close())
        for _ in range(5):
            await asyncio.sleep(0)
        assert fetching.done() and (await fetching)[0].records == b""
        assert not closing.done() and not producing.done()  # waiting for the disk
        fsyncs[0].set_result(partition.log.flush())
        await closing
        assert (await producing)[TP].error_code == 0  # its fsync finished: success
        stack.log_manager.close()
    run(main)


def test_fsync_always_acknowledges_only_durable_appends(tmp_path):
    async def main():
        stack = Stack(tmp_path / "data", fsync="always")
        stack.controller.create_topic("t", 1, 1)
        rm = stack.rm
        partition = rm.partition(*TP)
        for acks in (1, -1, 1):
            result = (await rm.produce(acks, 30000, {TP: memoryview(batch(3))}))[TP]
            end = result.base_offset + 3
            assert result.error_code == 0
            assert partition.log.recovery_point >= end  # fsynced before the answer
            assert partition.high_watermark >= end
        await stack.close()
    asyncio.run(main())


def test_periodic_checkpoint_writes_the_high_watermark(tmp_path):
    """Real time (the write runs on the Flusher thread): a 20 ms interval, and a bounded
    wait for the condition."""
    from pylog.storage.checkpoint import read_offset_checkpoint

    async def main():
        stack = Stack(tmp_path / "data")
        stack.controller.create_topic("t", 1, 1)
        rm = stack.rm
        rm.checkpoint_interval_ms = 20
        path = os.path.join(stack.data_dir, "replication-offset-checkpoint")
        await rm.produce(1, 1000, {TP: memoryview(batch(3))})
        assert read_offset_checkpoint(path).get(TP) is None  # nothing wrote it yet
        rm.start()
        deadline = asyncio.get_running_loop().time() + 10
        while read_offset_checkpoint(path).get(TP) != 3:
            assert asyncio.get_running_loop().time() < deadline, "no checkpoint written"
            await asyncio.sleep(0.01)
        await stack.close()
    asyncio.run(main())


def test_manager_built_on_existing_metadata_opens_every_partition(tmp_path):
    async def main(loop):
        stack = stack_with_topic(tmp_path, loop, partitions=3)
        second = ReplicaManager(1, stack.log_manager, stack.controller, clock=loop.time,
                                loop=loop)
        assert sorted((p.topic, p.index) for p in second.partitions()) == \
            [("t", 0), ("t", 1), ("t", 2)]
        assert all(p.is_leader and p.isr == (1,) for p in second.partitions())
        await second.close()
        await stack.close()
    run(main)

"""Per-operation cost of the protocol layer (sans IO).

    pytest bench/bench_protocol.py --benchmark-only --benchmark-columns=median,ops

Each benchmark records its median in µs as ``extra_info["us"]``. The record bytes are opaque
to this layer, so random bytes stand in for record batches.
"""
import datetime
import os
import struct

import pytest
from kio.schema.fetch.v11.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v8 import response as metadata
from kio.schema.produce.v8.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v8.response import (
    PartitionProduceResponse,
    ProduceResponse,
    TopicProduceResponse,
)

from pylog.protocol import (
    ADVERTISED_VERSIONS,
    ErrorCode,
    FetchPartitionResponse,
    FetchTopicResponse,
    FrameDecoder,
    decode_request,
    encode_fetch_response,
    encode_request,
    encode_response,
)
from pylog.protocol.header import RequestHeader

MIB = 1 << 20
BATCH = os.urandom(MIB)


def _us(benchmark) -> None:
    benchmark.extra_info["us"] = round(benchmark.stats.stats.median * 1e6, 2)


def _frame_view(framed: bytes) -> memoryview:
    """The frame as the broker sees it: a view into the FrameDecoder's buffer."""
    decoder = FrameDecoder()
    decoder.feed(framed)
    return decoder.next_frame()


def _produce_v8_frame(records: bytes) -> memoryview:
    body = ProduceRequest(transactional_id=None, acks=-1,
                          timeout=datetime.timedelta(seconds=30),
                          topic_data=(TopicProduceData(name="bench", partition_data=(
                              PartitionProduceData(index=0, records=records),)),))
    return _frame_view(encode_request(0, 8, 1, "bench-client", body))


def test_decode_produce_v8_1mib(benchmark):
    frame = _produce_v8_frame(BATCH)
    request = benchmark(decode_request, frame, ADVERTISED_VERSIONS)
    assert request.body.topic_data[0].partition_data[0].records == BATCH
    benchmark.extra_info["MB/s"] = round(MIB / benchmark.stats.stats.median / 1e6)
    _us(benchmark)


def test_decode_produce_v8_small(benchmark):
    frame = _produce_v8_frame(BATCH[:1000])
    benchmark(decode_request, frame, ADVERTISED_VERSIONS)
    _us(benchmark)


@pytest.mark.parametrize("topics,partitions", [(1, 1), (10, 10)])
def test_decode_fetch_v11(benchmark, topics, partitions):
    body = FetchRequest(
        replica_id=-1, max_wait=datetime.timedelta(milliseconds=500), min_bytes=1,
        max_bytes=50 * MIB, isolation_level=1, session_id=0, session_epoch=-1,
        topics=tuple(FetchTopic(topic=f"topic-{t}", partitions=tuple(
            FetchPartition(partition=p, current_leader_epoch=-1, fetch_offset=1000,
                           log_start_offset=-1, partition_max_bytes=MIB)
            for p in range(partitions))) for t in range(topics)),
        forgotten_topics_data=(), rack_id="")
    frame = _frame_view(encode_request(1, 11, 1, "bench-client", body))
    benchmark(decode_request, frame, ADVERTISED_VERSIONS)
    _us(benchmark)


def _metadata_v8(topics: int, partitions: int):
    return metadata.MetadataResponse(
        throttle_time=datetime.timedelta(0),
        brokers=(metadata.MetadataResponseBroker(node_id=1, host="127.0.0.1", port=9092,
                                                 rack=None),),
        cluster_id="pylog-bench", controller_id=1,
        topics=tuple(metadata.MetadataResponseTopic(
            error_code=ErrorCode.NONE, name=f"topic-{t}", is_internal=False,
            partitions=tuple(metadata.MetadataResponsePartition(
                error_code=ErrorCode.NONE, partition_index=p, leader_id=1, leader_epoch=0,
                replica_nodes=(1,), isr_nodes=(1,), offline_replicas=())
                for p in range(partitions)),
            topic_authorized_operations=-2**31) for t in range(topics)),
        cluster_authorized_operations=-2**31)


@pytest.mark.parametrize("topics,partitions", [(1, 1), (10, 4)])
def test_encode_metadata_v8_response(benchmark, topics, partitions):
    body = _metadata_v8(topics, partitions)
    header = RequestHeader(3, 8, 1, "bench-client", 1)
    benchmark(encode_response, header, body)
    _us(benchmark)


def test_encode_produce_v8_response(benchmark):
    body = ProduceResponse(responses=(TopicProduceResponse(name="bench", partition_responses=(
        PartitionProduceResponse(index=0, error_code=ErrorCode.NONE, base_offset=1000,
                                 log_append_time=None, log_start_offset=0, record_errors=(),
                                 error_message=None),)),),
        throttle_time=datetime.timedelta(0))
    benchmark(encode_response, RequestHeader(0, 8, 1, "bench-client", 1), body)
    _us(benchmark)


def test_frame_fetch_v11_response_1mib(benchmark):
    records = memoryview(BATCH)
    topics = [FetchTopicResponse("bench", [FetchPartitionResponse(
        0, high_watermark=5000, last_stable_offset=5000, log_start_offset=0,
        records=[records])])]
    parts = benchmark(encode_fetch_response, 1, 11, topics)
    assert parts[1] is records
    _us(benchmark)


def test_frame_decoder_pipelined_small_frames(benchmark):
    """Split 100 pipelined 200-byte frames (one read) with the BufferedProtocol calls."""
    stream = (struct.pack(">i", 200) + bytes(200)) * 100
    decoder = FrameDecoder()

    def split():
        room = decoder.get_buffer(-1)
        room[:len(stream)] = stream
        room.release()
        decoder.buffer_updated(len(stream))
        count = 0
        for _ in decoder.frames():
            count += 1
        return count

    assert benchmark(split) == 100
    benchmark.extra_info["us_per_frame"] = round(benchmark.stats.stats.median * 1e6 / 100, 3)
    _us(benchmark)

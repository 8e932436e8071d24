"""Produce (key 0, v3-v8): record batches in, offsets out, without copying the batches.

The request is parsed by hand (pylog.protocol.produce_request) so that each partition's
records are a writable view into the receive buffer: the ReplicaManager validates them in C,
stamps baseOffset and the leader epoch in place and appends those very bytes.

Before anything is appended the handler checks what Kafka checks at the door:
  - acks must be -1, 0 or 1, else INVALID_REQUIRED_ACKS (21) for every partition;
  - a topic name must be legal, else INVALID_TOPIC_EXCEPTION (17); so must a topic that is
    not internal (``__consumer_offsets`` is written by the group coordinator only);
  - records must not be null (CORRUPT_MESSAGE, 2: there is no batch to store);
  - an unknown topic is auto-created when ``auto.create.topics.enable`` is on (then written
    to like any other), else UNKNOWN_TOPIC_OR_PARTITION (3).
Everything else (unknown partition, CRC, sizes, message.max.bytes, acks=all waiting) is the
ReplicaManager's.

acks=0 has no response. When such a request fails, the client cannot be told, so the
connection is closed, as Kafka does: the producer sees the disconnect and refreshes its
metadata.
"""
from __future__ import annotations

import datetime
import logging
import struct
from typing import Any

from pylog.protocol.codec import encode_response
from pylog.protocol.errors import ErrorCode
from pylog.protocol.produce_request import ProduceRequestData, parse_produce_request
from pylog.protocol.versions import ApiKey
from pylog.storage.names import InvalidTopicError, validate_topic_name

from pylog.broker.handlers.base import (CloseConnection, Handler, Response, as_error_code,
                                        build, nested, response_type, topic_error_code)
from pylog.broker.handlers.metadata import INTERNAL_TOPICS

log = logging.getLogger("pylog.broker.handlers.produce")

_BATCH_LENGTH = struct.Struct(">i")       # batchLength at byte 8
_RECORD_COUNT = struct.Struct(">i")       # recordCount at byte 57
_BATCH_HEADER_BYTES = 61
_LENGTH_PREFIX_BYTES = 12                 # baseOffset + batchLength
_VALID_ACKS = (-1, 0, 1)


class _Outcome:
    """One partition's answer: ``error_code`` and, once appended, the ProduceResult fields."""

    __slots__ = ("error_code", "base_offset", "log_append_time", "log_start_offset",
                 "error_message")

    def __init__(self, error_code: int, error_message: str | None = None):
        self.error_code = error_code
        self.base_offset = -1
        self.log_append_time = -1
        self.log_start_offset = -1
        self.error_message = error_message


class ProduceHandler(Handler):
    api_key = ApiKey.PRODUCE

    def decode(self, frame: memoryview) -> ProduceRequestData:
        return parse_produce_request(frame)

    def expects_response(self, request: ProduceRequestData) -> bool:
        return request.acks != 0

    async def handle(self, request: ProduceRequestData) -> Response:
        outcomes: dict[tuple[str, int], _Outcome] = {}
        entries: dict[tuple[str, int], memoryview] = {}
        if request.acks not in _VALID_ACKS:
            for topic in request.topics:
                for partition in topic.partitions:
                    outcomes[(topic.name, partition.index)] = _Outcome(
                        ErrorCode.INVALID_REQUIRED_ACKS, f"acks must be -1, 0 or 1, "
                        f"not {request.acks}")
        else:
            for topic in request.topics:
                refusal = self._check_topic(topic.name)
                for partition in topic.partitions:
                    key = (topic.name, partition.index)
                    if refusal is not None:
                        outcomes[key] = refusal
                    elif partition.records is None:
                        outcomes[key] = _Outcome(ErrorCode.CORRUPT_MESSAGE, "null records")
                    else:
                        entries[key] = partition.records
        if entries:
            results = await self.broker.replica_manager.produce(
                request.acks, request.timeout_ms, entries)
            metrics = self.broker.metrics
            for key, result in results.items():
                outcome = _Outcome(result.error_code, result.error_message)
                outcome.base_offset = result.base_offset
                outcome.log_append_time = result.log_append_time
                outcome.log_start_offset = result.log_start_offset
                outcomes[key] = outcome
                if result.error_code == ErrorCode.NONE and metrics is not None:
                    records = entries[key]
                    metrics.add_bytes_in(key[0], records.nbytes, _record_count(records))
        if request.acks == 0:
            failed = [key for key, o in outcomes.items() if o.error_code != ErrorCode.NONE]
            if failed:
                raise CloseConnection(f"acks=0 produce failed for {failed[:5]} "
                                      f"(error {outcomes[failed[0]].error_code})")
            return None
        return self._encode(request, outcomes)

    def _check_topic(self, name: str) -> _Outcome | None:
        """None if ``name`` may be written (auto-creating it if needed), else its refusal."""
        try:
            validate_topic_name(name)
        except InvalidTopicError as exc:
            return _Outcome(ErrorCode.INVALID_TOPIC_EXCEPTION, str(exc))
        if name in INTERNAL_TOPICS:  # written by the broker only (Kafka's answer too)
            return _Outcome(ErrorCode.INVALID_TOPIC_EXCEPTION,
                            f"cannot append to internal topic {name}")
        controller = self.broker.controller
        if name in controller.metadata.topics:
            return None
        config = self.broker.config
        if not config.auto_create_topics_enable:
            return _Outcome(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        try:
            controller.create_topic(name, config.num_partitions,
                                    config.default_replication_factor)
        except Exception as exc:  # the controller's refusal carries its Kafka code
            code = topic_error_code(exc)
            if code != ErrorCode.TOPIC_ALREADY_EXISTS:
                log.warning("auto-creating topic %r failed: %s", name, exc)
                return _Outcome(code, str(exc))
        else:
            log.info("auto-created topic %r on produce", name)
        return None

    def _encode(self, request: ProduceRequestData, outcomes: dict[tuple[str, int], _Outcome]
                ) -> bytes:
        schema = response_type(request)
        topic_type = nested(schema, "responses")
        partition_type = nested(topic_type, "partition_responses")
        version = request.api_version
        topics = []
        for topic in request.topics:
            partitions = []
            for partition in topic.partitions:
                o = outcomes[(topic.name, partition.index)]
                partitions.append(build(
                    partition_type, index=partition.index, error_code=as_error_code(o.error_code),
                    base_offset=o.base_offset,
                    log_append_time=_timestamp(o.log_append_time),
                    log_start_offset=o.log_start_offset, record_errors=(),
                    error_message=o.error_message if version >= 8 else None))
            topics.append(build(topic_type, name=topic.name,
                                partition_responses=tuple(partitions)))
        return encode_response(request.header, build(
            schema, responses=tuple(topics), throttle_time=datetime.timedelta(0)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        if not isinstance(request, ProduceRequestData) or request.acks == 0:
            return None
        outcomes = {(topic.name, partition.index): _Outcome(error_code)
                    for topic in request.topics for partition in topic.partitions}
        return self._encode(request, outcomes)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _timestamp(ms: int) -> datetime.datetime | None:
    """Kafka's INT64 ms as the datetime kio writes (None = -1, CreateTime topics)."""
    if ms < 0:
        return None
    return _EPOCH + datetime.timedelta(milliseconds=ms)


def _record_count(records: memoryview) -> int:
    """Records in validated batches (per batch header, never per record)."""
    count = 0
    position = 0
    end = records.nbytes
    while position + _BATCH_HEADER_BYTES <= end:
        (length,) = _BATCH_LENGTH.unpack_from(records, position + 8)
        (in_batch,) = _RECORD_COUNT.unpack_from(records, position + 57)
        count += max(in_batch, 0)
        position += _LENGTH_PREFIX_BYTES + max(length, 0)
        if length <= 0:
            break
    return count

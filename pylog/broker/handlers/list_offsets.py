"""ListOffsets (key 2, v1-v5): the offset for a timestamp, or the log's start or end.

timestamp -2 (EARLIEST) is the log start offset, -1 (LATEST) the high watermark (the last
stable offset for read_committed: the same here, no transactions), both with timestamp -1;
a timestamp >= 0 is the first offset whose batch max timestamp reaches it, or offset -1 and
timestamp -1 when there is none (KAFKA-PROTOCOL.md §4). The ReplicaManager answers each
partition; an illegal topic name is INVALID_TOPIC_EXCEPTION (17). v0 has another shape and is
not advertised.
"""
from __future__ import annotations

import datetime
from typing import Any

from pylog.protocol.codec import Request, encode_response
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ApiKey
from pylog.storage.names import InvalidTopicError, validate_topic_name

from pylog.broker.handlers.base import (Handler, Response, as_error_code, build, nested,
                                        response_type)


class ListOffsetsHandler(Handler):
    api_key = ApiKey.LIST_OFFSETS

    def handle(self, request: Request) -> Response:
        body = request.body
        isolation_level = getattr(body, "isolation_level", 0)
        replica_manager = self.broker.replica_manager
        answers = {}
        for topic in body.topics:
            try:
                validate_topic_name(topic.name)
            except InvalidTopicError:
                for p in topic.partitions:
                    answers[(topic.name, p.partition_index)] = (
                        ErrorCode.INVALID_TOPIC_EXCEPTION, -1, -1, -1)
                continue
            for p in topic.partitions:
                result = replica_manager.list_offsets(
                    topic.name, p.partition_index, p.timestamp, isolation_level,
                    getattr(p, "current_leader_epoch", -1))
                answers[(topic.name, p.partition_index)] = (
                    result.error_code, result.timestamp, result.offset, result.leader_epoch)
        return self._encode(request, answers)

    def _encode(self, request: Request, answers: dict) -> bytes:
        schema = response_type(request)
        topic_type = nested(schema, "topics")
        partition_type = nested(topic_type, "partitions")
        topics = tuple(
            build(topic_type, name=topic.name, partitions=tuple(
                build(partition_type, partition_index=p.partition_index,
                      error_code=as_error_code(answers[(topic.name, p.partition_index)][0]),
                      timestamp=answers[(topic.name, p.partition_index)][1],
                      offset=answers[(topic.name, p.partition_index)][2],
                      leader_epoch=answers[(topic.name, p.partition_index)][3])
                for p in topic.partitions))
            for topic in request.body.topics)
        return encode_response(request.header, build(
            schema, throttle_time=datetime.timedelta(0), topics=topics))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        answers = {(topic.name, p.partition_index): (error_code, -1, -1, -1)
                   for topic in request.body.topics for p in topic.partitions}
        return self._encode(request, answers)

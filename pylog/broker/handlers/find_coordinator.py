"""FindCoordinator (key 10, v0-v2): the broker that coordinates a group.

Advertised from v0 because librdkafka before 2.11.1 (kcat) turns LZ4 and the group
coordinator off without FindCoordinator v0 in the range (KAFKA-PROTOCOL.md §1). A group's
coordinator is the leader of its partition of ``__consumer_offsets`` (pylog.broker.group:
``partition_for``), at the address that broker registered; while that partition has no leader
(or the topic does not exist yet) the answer is COORDINATOR_NOT_AVAILABLE (15), which every
client retries. key_type 1
(a transaction coordinator) is refused with INVALID_REQUEST (42): transactions are out of
scope (see init_producer_id). On error Kafka sends node -1, host "" and port -1, and from v1
an error message.
"""
from __future__ import annotations

import datetime
from typing import Any

from pylog.protocol.codec import Request, encode_response
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ApiKey

from pylog.broker.group.config import OFFSETS_TOPIC
from pylog.broker.handlers.base import Handler, Response, build, response_type

GROUP_KEY_TYPE = 0
TRANSACTION_KEY_TYPE = 1


class FindCoordinatorHandler(Handler):
    api_key = ApiKey.FIND_COORDINATOR

    def handle(self, request: Request) -> Response:
        key_type = getattr(request.body, "key_type", GROUP_KEY_TYPE)
        if key_type == TRANSACTION_KEY_TYPE:
            return self._encode(request, ErrorCode.INVALID_REQUEST,
                                "transactions are not supported by this broker")
        if key_type != GROUP_KEY_TYPE:
            return self._encode(request, ErrorCode.INVALID_REQUEST,
                                f"unknown coordinator key type {key_type}")
        coordinator = getattr(self.broker, "group_coordinator", None)
        metadata = self.broker.controller.metadata
        offsets = metadata.topics.get(OFFSETS_TOPIC)
        if coordinator is None or offsets is None:
            return self._encode(request, ErrorCode.COORDINATOR_NOT_AVAILABLE,
                                f"{OFFSETS_TOPIC} is not ready")
        state = offsets.partitions.get(coordinator.partition_for(request.body.key))
        leader = metadata.brokers.get(state.leader) if state is not None else None
        if leader is None:
            return self._encode(request, ErrorCode.COORDINATOR_NOT_AVAILABLE,
                                "the group's offsets partition has no leader")
        return encode_response(request.header, build(
            response_type(request), throttle_time=datetime.timedelta(0),
            error_code=ErrorCode.NONE, error_message=None, node_id=leader.node_id,
            host=leader.host, port=leader.port))

    def _encode(self, request: Request, error_code: ErrorCode, message: str | None) -> bytes:
        return encode_response(request.header, build(
            response_type(request), throttle_time=datetime.timedelta(0), error_code=error_code,
            error_message=message, node_id=-1, host="", port=-1))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, error_code, None)

"""CreateTopics (key 19, v2-v4) and DeleteTopics (key 20, v0-v3): topic admin through the
embedded controller.

The controller validates and commits (its errors carry the Kafka code and a message), so the
handlers add only what belongs to the wire:
  - a topic named twice in one request is INVALID_REQUEST (42) for each of its entries, as
    Kafka answers (which of the two would win is not the client's to guess);
  - CreateTopics -1 partitions / replication factor mean the broker's defaults only from v4
    (KIP-464); before that they are INVALID_PARTITIONS (37) / INVALID_REPLICATION_FACTOR (38);
  - ``validate_only`` runs every check and changes nothing;
  - DeleteTopics of an unknown topic is UNKNOWN_TOPIC_OR_PARTITION (3), an illegal name 17.
Errors seen: 36 TOPIC_ALREADY_EXISTS, 37, 38 (more replicas than brokers), 17
INVALID_TOPIC_EXCEPTION, 40 INVALID_CONFIG, 39 INVALID_REPLICA_ASSIGNMENT, 42.
Creation is synchronous here (the controller commits before answering), so ``timeout_ms`` has
nothing to wait for. DeleteTopics v0 is v1 without the throttle field (pylog.protocol.legacy):
the handler builds v1's entity and the codec leaves the field out.
"""
from __future__ import annotations

import datetime
import logging
from collections import Counter
from typing import Any

from pylog.protocol.codec import Request, encode_response
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ApiKey
from pylog.storage.names import InvalidTopicError, validate_topic_name

from pylog.broker.handlers.base import (Handler, Response, build, nested, response_type,
                                        topic_error_code)

log = logging.getLogger("pylog.broker.handlers.topics")

_DEFAULT = -1
_DEFAULTS_FROM_VERSION = 4


class CreateTopicsHandler(Handler):
    api_key = ApiKey.CREATE_TOPICS

    def handle(self, request: Request) -> Response:
        body = request.body
        counts = Counter(topic.name for topic in body.topics)
        results = []
        for topic in body.topics:
            if counts[topic.name] > 1:
                results.append((topic.name, ErrorCode.INVALID_REQUEST,
                                f"topic {topic.name!r} appears more than once in the request"))
                continue
            results.append((topic.name, *self._create(topic, request.api_version,
                                                      body.validate_only)))
        return self._encode(request, results)

    def _create(self, topic: Any, version: int, validate_only: bool
                ) -> tuple[ErrorCode, str | None]:
        if version < _DEFAULTS_FROM_VERSION:
            if topic.num_partitions == _DEFAULT and not topic.assignments:
                return (ErrorCode.INVALID_PARTITIONS,
                        "num_partitions -1 (the broker's default) needs CreateTopics v4")
            if topic.replication_factor == _DEFAULT and not topic.assignments:
                return (ErrorCode.INVALID_REPLICATION_FACTOR,
                        "replication_factor -1 (the broker's default) needs CreateTopics v4")
        assignments = None
        if topic.assignments:
            assignments = {a.partition_index: list(a.broker_ids) for a in topic.assignments}
        configs = {c.name: c.value for c in topic.configs}
        try:
            self.broker.controller.create_topic(
                topic.name, topic.num_partitions, topic.replication_factor, configs,
                assignments, validate_only=validate_only)
        except Exception as exc:  # the controller's refusal carries its Kafka code
            code = topic_error_code(exc)
            if code == ErrorCode.UNKNOWN_SERVER_ERROR:
                log.exception("creating topic %r failed", topic.name)
            return code, str(exc)
        if not validate_only:
            log.info("created topic %r (%d partitions, replication factor %d)", topic.name,
                     topic.num_partitions, topic.replication_factor)
        return ErrorCode.NONE, None

    def _encode(self, request: Request, results: list[tuple[str, ErrorCode, str | None]]
                ) -> bytes:
        schema = response_type(request)
        result_type = nested(schema, "topics")
        return encode_response(request.header, build(
            schema, throttle_time=datetime.timedelta(0), topics=tuple(
                build(result_type, name=name, error_code=code, error_message=message)
                for name, code, message in results)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, [(topic.name, error_code, None)
                                      for topic in request.body.topics])


class DeleteTopicsHandler(Handler):
    api_key = ApiKey.DELETE_TOPICS

    def handle(self, request: Request) -> Response:
        names = request.body.topic_names
        counts = Counter(names)
        results = []
        for name in names:
            if counts[name] > 1:
                results.append((name, ErrorCode.INVALID_REQUEST))
                continue
            results.append((name, self._delete(name)))
        return self._encode(request, results)

    def _delete(self, name: str) -> ErrorCode:
        try:
            validate_topic_name(name)
        except InvalidTopicError:
            return ErrorCode.INVALID_TOPIC_EXCEPTION
        controller = self.broker.controller
        if name not in controller.metadata.topics:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        try:
            controller.delete_topic(name)
        except Exception as exc:  # the controller's refusal carries its Kafka code
            code = topic_error_code(exc)
            if code == ErrorCode.UNKNOWN_SERVER_ERROR:
                log.exception("deleting topic %r failed", name)
            return code
        log.info("deleted topic %r", name)
        return ErrorCode.NONE

    def _encode(self, request: Request, results: list[tuple[str, ErrorCode]]) -> bytes:
        schema = response_type(request)
        result_type = nested(schema, "responses")
        return encode_response(request.header, build(
            schema, throttle_time=datetime.timedelta(0), responses=tuple(
                build(result_type, name=name, error_code=code) for name, code in results)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, [(name, error_code) for name in request.body.topic_names])

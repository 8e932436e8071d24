"""Metadata (key 3, v0-v8): brokers, the controller, and topics with their partitions.

Which topics (KAFKA-PROTOCOL.md §4): v0 an empty list means all topics; v1+ null means all,
an empty list none (clients send ``[]`` to learn brokers and the controller).

A named topic that does not exist is created when ``auto.create.topics.enable`` is on and,
from v4, the request allows it (``allow_auto_topic_creation``; librdkafka consumers send
false). The first answer for it is LEADER_NOT_AVAILABLE (5) with no partitions, as Kafka
answers; every client refreshes and finds the topic ready. Otherwise it is
UNKNOWN_TOPIC_OR_PARTITION (3); an invalid name is INVALID_TOPIC_EXCEPTION (17) and is never
created.

Authorized operations (v8) are INT32_MIN unless asked for, then every operation is allowed
(no ACLs yet): topic 3576 (READ .. ALTER_CONFIGS), cluster 8096. kafka-python 2.3's admin
crashes on INT32_MIN when it asked.

The leader epoch is the controller's (0 on a single node); ``offline_replicas`` lists replicas
on brokers that are not registered.
"""
from __future__ import annotations

import datetime
import logging

from pylog.protocol.codec import Request, encode_response
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ApiKey
from pylog.storage.names import InvalidTopicError, validate_topic_name

from pylog.broker.handlers.base import (AUTHORIZED_OPERATIONS_OMITTED, ZERO_THROTTLE, Handler,
                                        Response, build, nested, response_type, topic_error_code)

log = logging.getLogger("pylog.broker.handlers.metadata")

#: Every topic operation (READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS,
#: ALTER_CONFIGS) as Kafka's AclOperation bit set.
TOPIC_AUTHORIZED_OPERATIONS = 3576
#: Every cluster operation (CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS,
#: ALTER_CONFIGS, IDEMPOTENT_WRITE).
CLUSTER_AUTHORIZED_OPERATIONS = 8096

INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})


class MetadataHandler(Handler):
    api_key = ApiKey.METADATA

    def handle(self, request: Request) -> Response:
        body = request.body
        version = request.api_version
        names = _requested_names(body, version)
        allow_create = (self.broker.config.auto_create_topics_enable
                        and (version < 4 or body.allow_auto_topic_creation))
        schema = response_type(request)
        topic_type = nested(schema, "topics")
        partition_type = nested(topic_type, "partitions")
        include_topic_ops = version >= 8 and body.include_topic_authorized_operations
        include_cluster_ops = version >= 8 and body.include_cluster_authorized_operations
        topic_ops = TOPIC_AUTHORIZED_OPERATIONS if include_topic_ops \
            else AUTHORIZED_OPERATIONS_OMITTED

        metadata = self.broker.controller.metadata
        topics = []
        if names is None:
            wanted = sorted(metadata.topics)
        else:
            wanted = list(dict.fromkeys(names))   # once each, in request order
        for name in wanted:
            info = metadata.topics.get(name)
            if info is None:
                error = self._missing_topic(name, allow_create)
                topics.append(build(topic_type, error_code=error, name=name,
                                    is_internal=False, partitions=(),
                                    topic_authorized_operations=topic_ops))
                metadata = self.broker.controller.metadata
                continue
            live = metadata.brokers
            partitions = tuple(
                build(partition_type,
                      error_code=(ErrorCode.NONE if state.leader >= 0
                                  else ErrorCode.LEADER_NOT_AVAILABLE),
                      partition_index=index, leader_id=state.leader,
                      leader_epoch=state.leader_epoch, replica_nodes=tuple(state.replicas),
                      isr_nodes=tuple(state.isr),
                      offline_replicas=tuple(r for r in state.replicas if r not in live))
                for index, state in sorted(info.partitions.items()))
            topics.append(build(topic_type, error_code=ErrorCode.NONE, name=name,
                                is_internal=name in INTERNAL_TOPICS, partitions=partitions,
                                topic_authorized_operations=topic_ops))

        broker_type = nested(schema, "brokers")
        brokers = tuple(build(broker_type, node_id=info.node_id, host=info.host, port=info.port,
                              rack=info.rack)
                        for _, info in sorted(metadata.brokers.items()))
        response = build(
            schema, throttle_time=ZERO_THROTTLE, brokers=brokers, cluster_id=metadata.cluster_id,
            controller_id=metadata.controller_id, topics=tuple(topics),
            cluster_authorized_operations=(CLUSTER_AUTHORIZED_OPERATIONS if include_cluster_ops
                                           else AUTHORIZED_OPERATIONS_OMITTED))
        return encode_response(request.header, response)

    def _missing_topic(self, name: str, allow_create: bool) -> ErrorCode:
        try:
            validate_topic_name(name)
        except InvalidTopicError:
            return ErrorCode.INVALID_TOPIC_EXCEPTION
        if not allow_create:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        config = self.broker.config
        try:
            self.broker.controller.create_topic(name, config.num_partitions,
                                                config.default_replication_factor)
        except Exception as exc:  # the controller's refusal carries its Kafka code
            code = topic_error_code(exc)
            if code == ErrorCode.TOPIC_ALREADY_EXISTS:
                return ErrorCode.LEADER_NOT_AVAILABLE
            log.warning("auto-creating topic %r failed: %s", name, exc)
            return code
        log.info("auto-created topic %r (%d partitions, replication factor %d)", name,
                 config.num_partitions, config.default_replication_factor)
        return ErrorCode.LEADER_NOT_AVAILABLE

    def error_response(self, request: Request, error_code: ErrorCode) -> Response:
        """Every requested topic with ``error_code`` (Metadata has no top-level error)."""
        schema = response_type(request)
        topic_type = nested(schema, "topics")
        names = _requested_names(request.body, request.api_version) or ()
        topics = tuple(build(topic_type, error_code=error_code, name=name, is_internal=False,
                             partitions=(), topic_authorized_operations=AUTHORIZED_OPERATIONS_OMITTED)
                       for name in dict.fromkeys(names))
        metadata = self.broker.controller.metadata
        response = build(schema, throttle_time=datetime.timedelta(0), brokers=(),
                         cluster_id=metadata.cluster_id, controller_id=metadata.controller_id,
                         topics=topics,
                         cluster_authorized_operations=AUTHORIZED_OPERATIONS_OMITTED)
        return encode_response(request.header, response)


def _requested_names(body, version: int) -> list[str] | None:
    """The topic names asked for; None = all topics."""
    if body.topics is None:
        return None
    if version == 0 and not body.topics:
        return None
    return [topic.name for topic in body.topics]

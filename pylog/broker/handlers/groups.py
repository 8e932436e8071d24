"""The group apis, over the broker's GroupCoordinator (pylog.broker.group).

JoinGroup (key 11, v0-5), SyncGroup (14, v0-3), Heartbeat (12, v0-3), LeaveGroup (13, v0-3),
OffsetCommit (8, v2-7), OffsetFetch (9, v1-5), ListGroups (16, v0-2), DescribeGroups
(15, v0-4), DeleteGroups (42, v0-1): all non-flexible, every version from kio's schemas
(KAFKA-PROTOCOL.md §1 and §4). The handlers translate kio bodies to coordinator calls and
results back; every rule lives in the coordinator.

Per version:
- JoinGroup v0 has no rebalance timeout: the session timeout stands for it (as in Kafka).
  v4+ with an empty member id is answered MEMBER_ID_REQUIRED with the id to join with
  (KIP-394). Errors carry generation -1, protocol "" and leader "" (v0-v6 have no null).
- LeaveGroup v0-v2 name one member and answer one error code (the member's error when the
  request itself was fine, as Kafka folds it); v3 names members and answers each.
- OffsetCommit v2-v4 carry retention_time_ms, which is ignored (offsets do not expire here);
  v6+ carry the committed leader epoch. A partition of a topic the cluster does not have is
  UNKNOWN_TOPIC_OR_PARTITION (3) and is not written.
- OffsetFetch: no committed offset is offset -1, metadata "", error 0; v2+ may ask for every
  offset of the group with null topics; an error of the whole request goes to the top-level
  error code (v2+, the last field) or, in v1, to every partition asked.
- DescribeGroups v3+ authorized operations: every group operation (READ, DELETE, DESCRIBE =
  328) when asked, INT32_MIN when not.

client_host is "" for members: the connection's peer address does not reach handlers.
"""
from __future__ import annotations

import datetime
import logging
import struct
from typing import Any

from pylog.protocol.codec import Request, encode_response
from pylog.protocol.errors import ErrorCode, MalformedRequestError
from pylog.protocol.header import parse_request_header_after_prefix, read_request_prefix
from pylog.protocol.versions import ApiKey

from pylog.broker.group import (GroupDescription, JoinGroupResult, LeaveGroupResult,
                                OffsetCommitEntry, SyncGroupResult)
from pylog.broker.handlers.base import (AUTHORIZED_OPERATIONS_OMITTED, ZERO_THROTTLE, Handler,
                                        Response, as_error_code, build, group_by_topic, nested,
                                        response_type)

__all__ = ["JoinGroupHandler", "SyncGroupHandler", "HeartbeatHandler", "LeaveGroupHandler",
           "OffsetCommitHandler", "OffsetFetchHandler", "ListGroupsHandler",
           "DescribeGroupsHandler", "DeleteGroupsHandler", "GROUP_HANDLERS",
           "GROUP_AUTHORIZED_OPERATIONS"]

log = logging.getLogger("pylog.broker.handlers.groups")

#: READ (3), DELETE (6), DESCRIBE (8): every operation on a group, as Kafka's bit set.
GROUP_AUTHORIZED_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8)
_MS = datetime.timedelta(milliseconds=1)
_INT16 = struct.Struct(">h")
_INT64 = struct.Struct(">q")


def _ms(value: datetime.timedelta) -> int:
    return value // _MS


class _GroupHandler(Handler):
    """A handler that needs the coordinator (None until the broker has one)."""

    def coordinator(self) -> Any:
        coordinator = getattr(self.broker, "group_coordinator", None)
        return coordinator if coordinator is not None and coordinator.active else None


# ---- JoinGroup / SyncGroup / Heartbeat / LeaveGroup -----------------------------------------

class JoinGroupHandler(_GroupHandler):
    api_key = ApiKey.JOIN_GROUP

    async def handle(self, request: Request) -> Response:
        body = request.body
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        version = request.api_version
        session_timeout = _ms(body.session_timeout)
        rebalance_timeout = _ms(body.rebalance_timeout) if version >= 1 else session_timeout
        instance_id = getattr(body, "group_instance_id", None)
        future = coordinator.join_group(
            body.group_id, body.member_id, instance_id, request.header.client_id or "", "",
            session_timeout, rebalance_timeout, body.protocol_type,
            [(p.name, p.metadata) for p in body.protocols],
            require_known_member_id=version >= 4 and instance_id is None)
        return self._encode(request, await future)

    def _encode(self, request: Request, result: JoinGroupResult) -> bytes:
        schema = response_type(request)
        member_type = nested(schema, "members")
        return encode_response(request.header, build(
            schema, throttle_time=ZERO_THROTTLE, error_code=as_error_code(result.error_code),
            generation_id=result.generation_id, protocol_type=result.protocol_type,
            protocol_name=result.protocol_name or "", leader=result.leader_id,
            skip_assignment=False, member_id=result.member_id,
            members=tuple(build(member_type, member_id=m.member_id,
                                group_instance_id=m.group_instance_id, metadata=m.metadata)
                          for m in result.members)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, JoinGroupResult.error(request.body.member_id, error_code))


class SyncGroupHandler(_GroupHandler):
    api_key = ApiKey.SYNC_GROUP

    async def handle(self, request: Request) -> Response:
        body = request.body
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        assignments = {a.member_id: a.assignment for a in body.assignments}
        future = coordinator.sync_group(body.group_id, body.generation_id, body.member_id,
                                        getattr(body, "group_instance_id", None), assignments)
        return self._encode(request, await future)

    def _encode(self, request: Request, result: SyncGroupResult) -> bytes:
        return encode_response(request.header, build(
            response_type(request), throttle_time=ZERO_THROTTLE,
            error_code=as_error_code(result.error_code), protocol_type=result.protocol_type,
            protocol_name=result.protocol_name, assignment=result.assignment))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, SyncGroupResult(error_code))


class HeartbeatHandler(_GroupHandler):
    api_key = ApiKey.HEARTBEAT

    def handle(self, request: Request) -> Response:
        body = request.body
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        code = coordinator.heartbeat(body.group_id, body.generation_id, body.member_id,
                                     getattr(body, "group_instance_id", None))
        return self._encode(request, code)

    def _encode(self, request: Request, code: int) -> bytes:
        return encode_response(request.header, build(
            response_type(request), throttle_time=ZERO_THROTTLE, error_code=as_error_code(code)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, error_code)


class LeaveGroupHandler(_GroupHandler):
    api_key = ApiKey.LEAVE_GROUP

    def handle(self, request: Request) -> Response:
        body = request.body
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        return self._encode(request, coordinator.leave_group(body.group_id, _leaving(request)))

    def _encode(self, request: Request, result: LeaveGroupResult) -> bytes:
        schema = response_type(request)
        if request.api_version < 3:
            # One member: its error is the answer unless the request failed as a whole.
            code = result.error_code or next(
                (m.error_code for m in result.members if m.error_code), ErrorCode.NONE)
            return encode_response(request.header, build(
                schema, throttle_time=ZERO_THROTTLE, error_code=as_error_code(code)))
        member_type = nested(schema, "members")
        return encode_response(request.header, build(
            schema, throttle_time=ZERO_THROTTLE, error_code=as_error_code(result.error_code),
            members=tuple(build(member_type, member_id=m.member_id,
                                group_instance_id=m.group_instance_id,
                                error_code=as_error_code(m.error_code))
                          for m in result.members)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, LeaveGroupResult(error_code))


def _without_retention(frame: memoryview) -> bytearray | None:
    """A copy of an OffsetCommit v2-v4 frame with retention_time_ms set to -1, or None if the
    frame is not one or ends before that field."""
    try:
        api_key, version, correlation_id = read_request_prefix(frame)
        if api_key != ApiKey.OFFSET_COMMIT or not 2 <= version <= 4:
            return None
        _, position = parse_request_header_after_prefix(frame, 1, api_key, version,
                                                        correlation_id)
        (group_length,) = _INT16.unpack_from(frame, position)
        position += 2 + max(group_length, 0) + 4          # group_id, generation_id
        (member_length,) = _INT16.unpack_from(frame, position)
        position += 2 + max(member_length, 0)             # member_id
        if group_length < 0 or member_length < 0 or position + 8 > len(frame):
            return None
    except (MalformedRequestError, struct.error):
        return None
    patched = bytearray(frame)
    patched[position:position + 8] = _INT64.pack(-1)
    return patched


def _leaving(request: Request) -> list[tuple[str, str | None]]:
    body = request.body
    if request.api_version < 3:
        return [(body.member_id, None)]
    return [(m.member_id, m.group_instance_id) for m in body.members]


# ---- offsets --------------------------------------------------------------------------------

class OffsetCommitHandler(_GroupHandler):
    api_key = ApiKey.OFFSET_COMMIT

    def decode(self, frame: memoryview) -> Any:
        """kio's decode, except that a v2-v4 retention_time_ms beyond what a Python timedelta
        holds (Kafka takes any INT64; it is ignored here) is read as -1 instead of refusing
        the request."""
        try:
            return super().decode(frame)
        except MalformedRequestError:
            patched = _without_retention(frame)
            if patched is None:
                raise
            return super().decode(patched)

    async def handle(self, request: Request) -> Response:
        body = request.body
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        topics = self.broker.controller.metadata.topics
        codes: dict[tuple[str, int], int] = {}
        entries: dict[tuple[str, int], OffsetCommitEntry] = {}
        for topic in body.topics:
            info = topics.get(topic.name)
            for p in topic.partitions:
                tp = (topic.name, p.partition_index)
                if info is None or p.partition_index not in info.partitions:
                    codes[tp] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    entries.pop(tp, None)
                    continue
                codes.pop(tp, None)
                entries[tp] = OffsetCommitEntry(
                    p.committed_offset, getattr(p, "committed_leader_epoch", -1),
                    p.committed_metadata)
        if entries:
            codes.update(await coordinator.commit_offsets(
                body.group_id, body.generation_id_or_member_epoch, body.member_id,
                getattr(body, "group_instance_id", None), entries))
        return self._encode(request, codes)

    def _encode(self, request: Request, codes: dict[tuple[str, int], int] | int) -> bytes:
        schema = response_type(request)
        topic_type = nested(schema, "topics")
        partition_type = nested(topic_type, "partitions")
        topics = []
        for topic in request.body.topics:
            partitions = tuple(
                build(partition_type, partition_index=p.partition_index,
                      error_code=as_error_code(
                          codes if isinstance(codes, int)
                          else codes[(topic.name, p.partition_index)]))
                for p in topic.partitions)
            topics.append(build(topic_type, name=topic.name, partitions=partitions))
        return encode_response(request.header, build(schema, throttle_time=ZERO_THROTTLE,
                                                     topics=tuple(topics)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, int(error_code))


class OffsetFetchHandler(_GroupHandler):
    api_key = ApiKey.OFFSET_FETCH

    def handle(self, request: Request) -> Response:
        body = request.body
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        asked = None if body.topics is None else [
            (t.name, p) for t in body.topics for p in t.partition_indexes]
        result = coordinator.fetch_offsets(body.group_id, asked)
        if result.error_code:
            return self.error_response(request, result.error_code)
        rows = [(topic, partition, o.offset if o is not None else -1,
                 o.leader_epoch if o is not None else -1, o.metadata if o is not None else "",
                 ErrorCode.NONE) for topic, partition, o in result.offsets]
        return self._encode(request, rows, ErrorCode.NONE)

    def _encode(self, request: Request, rows: list[tuple], error_code: int) -> bytes:
        schema = response_type(request)
        topic_type = nested(schema, "topics")
        partition_type = nested(topic_type, "partitions")
        grouped = group_by_topic([(row[0], row) for row in rows])
        topics = tuple(
            build(topic_type, name=name, partitions=tuple(
                build(partition_type, partition_index=partition, committed_offset=offset,
                      committed_leader_epoch=epoch, metadata=metadata,
                      error_code=as_error_code(code))
                for _, partition, offset, epoch, metadata, code in partitions))
            for name, partitions in grouped.items())
        return encode_response(request.header, build(
            schema, throttle_time=ZERO_THROTTLE, topics=topics,
            error_code=as_error_code(error_code)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        """v2+: the top-level error and no topics; v1 has no top-level error: every partition
        asked carries it (Kafka's OffsetFetchRequest.getErrorResponse)."""
        rows = []
        topics = request.body.topics
        if request.api_version < 2 and topics is not None:
            rows = [(t.name, p, -1, -1, "", error_code) for t in topics
                    for p in t.partition_indexes]
        return self._encode(request, rows, error_code)


# ---- admin ----------------------------------------------------------------------------------

class ListGroupsHandler(_GroupHandler):
    api_key = ApiKey.LIST_GROUPS

    def handle(self, request: Request) -> Response:
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        code, groups = coordinator.list_groups()
        return self._encode(request, code, groups)

    def _encode(self, request: Request, code: int, groups: list) -> bytes:
        schema = response_type(request)
        group_type = nested(schema, "groups")
        return encode_response(request.header, build(
            schema, throttle_time=ZERO_THROTTLE, error_code=as_error_code(code),
            groups=tuple(build(group_type, group_id=g.group_id, protocol_type=g.protocol_type,
                               group_state=g.state) for g in groups)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, error_code, [])


class DescribeGroupsHandler(_GroupHandler):
    api_key = ApiKey.DESCRIBE_GROUPS

    def handle(self, request: Request) -> Response:
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        return self._encode(request, [coordinator.describe_group(group_id)
                                      for group_id in request.body.groups])

    def _encode(self, request: Request, descriptions: list[GroupDescription]) -> bytes:
        schema = response_type(request)
        group_type = nested(schema, "groups")
        member_type = nested(group_type, "members")
        operations = GROUP_AUTHORIZED_OPERATIONS \
            if getattr(request.body, "include_authorized_operations", False) \
            else AUTHORIZED_OPERATIONS_OMITTED
        groups = tuple(
            build(group_type, error_code=as_error_code(d.error_code), group_id=d.group_id,
                  group_state=d.state, protocol_type=d.protocol_type, protocol_data=d.protocol,
                  members=tuple(build(member_type, member_id=m.member_id,
                                      group_instance_id=m.group_instance_id,
                                      client_id=m.client_id, client_host=m.client_host,
                                      member_metadata=m.metadata,
                                      member_assignment=m.assignment)
                                for m in d.members),
                  authorized_operations=operations)
            for d in descriptions)
        return encode_response(request.header, build(schema, throttle_time=ZERO_THROTTLE,
                                                     groups=groups))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, [GroupDescription(error_code, group_id, state="")
                                      for group_id in request.body.groups])


class DeleteGroupsHandler(_GroupHandler):
    api_key = ApiKey.DELETE_GROUPS

    async def handle(self, request: Request) -> Response:
        coordinator = self.coordinator()
        if coordinator is None:
            return self.error_response(request, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        codes = await coordinator.delete_groups(request.body.groups_names)
        return self._encode(request, codes)

    def _encode(self, request: Request, codes: dict[str, int] | int) -> bytes:
        schema = response_type(request)
        result_type = nested(schema, "results")
        names = dict.fromkeys(request.body.groups_names)
        return encode_response(request.header, build(
            schema, throttle_time=ZERO_THROTTLE, results=tuple(
                build(result_type, group_id=name, error_code=as_error_code(
                    codes if isinstance(codes, int) else codes[name]))
                for name in names)))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, int(error_code))


GROUP_HANDLERS: tuple[type[Handler], ...] = (
    JoinGroupHandler, SyncGroupHandler, HeartbeatHandler, LeaveGroupHandler,
    OffsetCommitHandler, OffsetFetchHandler, ListGroupsHandler, DescribeGroupsHandler,
    DeleteGroupsHandler,
)

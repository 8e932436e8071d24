"""Fetch (key 1, v4-v11): log bytes out, straight from the log, framed by hand.

The request is small and goes through kio; the ReplicaManager does the work (long-poll until
min_bytes or max_wait_ms, never past the HW for consumers, KIP-74's first whole batch, the
max_bytes and partition_max_bytes bounds, OFFSET_OUT_OF_RANGE only outside [log start, LEO]).
The response is ``encode_fetch_response``'s list of buffers, in which each partition's records
are the very buffer the log returned; the connection writes the list with ``writelines`` so the
log bytes are never joined into a new bytes object. With ``fetch.send.mode=sendfile`` a
partition's records are a FileRegion instead (pylog.broker.file_region), which the connection
sends with sendfile straight from the segment file.

Wire rules kept here (KAFKA-PROTOCOL.md §4): ``session_id`` is always 0 (no fetch sessions:
every fetch is a full fetch, which KIP-227 allows a broker to insist on); a request naming a
session (id != 0) gets FETCH_SESSION_ID_NOT_FOUND (70), so the client starts over with a full
fetch. ``preferred_read_replica`` is -1, ``records`` is empty (never null) when there is none,
``last_stable_offset`` is what the ReplicaManager reports (the HW: no transactions).
An illegal topic name is INVALID_TOPIC_EXCEPTION (17) and never reaches the log.
"""
from __future__ import annotations

from typing import Any

from pylog.protocol.codec import Request
from pylog.protocol.errors import ErrorCode
from pylog.protocol.fetch_response import (FetchPartitionResponse, FetchTopicResponse,
                                           encode_fetch_response)
from pylog.protocol.versions import ApiKey
from pylog.storage.names import InvalidTopicError, validate_topic_name

from pylog.broker.handlers.base import Handler, Response
from pylog.broker.replica_manager import FetchPartitionRequest

_MS = 1000


class FetchHandler(Handler):
    api_key = ApiKey.FETCH

    async def handle(self, request: Request) -> Response:
        body = request.body
        version = request.api_version
        if version >= 7 and body.session_id != 0:
            return encode_fetch_response(request.correlation_id, version, [],
                                         error_code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND)
        wanted: list[FetchPartitionRequest] = []
        refused: dict[tuple[str, int], ErrorCode] = {}
        for topic in body.topics:
            try:
                validate_topic_name(topic.topic)
                legal = True
            except InvalidTopicError:
                legal = False
            for p in topic.partitions:
                if not legal:
                    refused[(topic.topic, p.partition)] = ErrorCode.INVALID_TOPIC_EXCEPTION
                    continue
                wanted.append(FetchPartitionRequest(
                    topic.topic, p.partition, p.fetch_offset, p.partition_max_bytes,
                    getattr(p, "current_leader_epoch", -1), getattr(p, "log_start_offset", -1)))
        results = []
        if wanted:
            max_wait_ms = max(0, int(body.max_wait.total_seconds() * _MS))
            results = await self.broker.replica_manager.fetch(
                body.replica_id, max_wait_ms, body.min_bytes, body.max_bytes,
                body.isolation_level, wanted,
                zero_copy=self.broker.config.fetch_send_mode == "sendfile")
        found = {(r.topic, r.partition): r for r in results}
        metrics = self.broker.metrics
        responses = []
        for topic in body.topics:
            partitions = []
            bytes_out = 0
            for p in topic.partitions:
                key = (topic.topic, p.partition)
                result = found.get(key)
                if result is None:
                    partitions.append(FetchPartitionResponse(
                        p.partition, refused.get(key, ErrorCode.UNKNOWN_SERVER_ERROR)))
                    continue
                records = result.records
                size = len(records)  # bytes, or a FileRegion (fetch.send.mode=sendfile)
                bytes_out += size
                partitions.append(FetchPartitionResponse(
                    partition_index=p.partition, error_code=result.error_code,
                    high_watermark=result.high_watermark,
                    last_stable_offset=result.last_stable_offset,
                    log_start_offset=result.log_start_offset,
                    records=(records,) if size else (),
                    preferred_read_replica=-1))
            if bytes_out and metrics is not None:
                metrics.add_bytes_out(topic.topic, bytes_out)
            responses.append(FetchTopicResponse(topic.topic, partitions))
        return encode_fetch_response(request.correlation_id, version, responses)

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        """v7+: the top-level error; before that, the error on every partition asked for."""
        version = request.api_version
        if version >= 7:
            return encode_fetch_response(request.correlation_id, version, [],
                                         error_code=error_code)
        responses = [FetchTopicResponse(topic.topic, [FetchPartitionResponse(
            p.partition, error_code) for p in topic.partitions]) for topic in request.body.topics]
        return encode_fetch_response(request.correlation_id, version, responses)

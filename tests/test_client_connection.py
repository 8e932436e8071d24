"""The client's broker connection against scripted fake brokers: ApiVersions negotiation (and
the KIP-511 downgrade), per-api version choice, pipelined requests matched in order, a wrong
correlation id, a request timeout that closes the connection, a peer that hangs up, and the
one-line error for an unreachable broker."""
import asyncio
import struct

import pytest

from client_support import FakeBroker
from pylog.client.connection import BrokerConnection
from pylog.client.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    ProtocolViolationError,
    UnsupportedVersionError,
)
from pylog.protocol import (
    ApiKey,
    ErrorCode,
    VersionRange,
    api_versions_fallback_response,
    api_versions_response,
    decode_request,
    encode_response,
)

ALL = {ApiKey.API_VERSIONS: VersionRange(0, 4), ApiKey.METADATA: VersionRange(0, 12),
       ApiKey.PRODUCE: VersionRange(0, 11), ApiKey.FETCH: VersionRange(0, 17)}


def run(coro, timeout=20):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def versions_handler(ranges, *, max_api_versions=2, seen=None):
    """Answers ApiVersions like a broker whose ApiVersions range is 0..max_api_versions."""
    async def handler(frame, writer):
        key, version, correlation_id = struct.unpack_from(">hhi", frame)
        if seen is not None:
            seen.append((key, version))
        if key == ApiKey.API_VERSIONS and version > max_api_versions:
            writer.write(api_versions_fallback_response(correlation_id, ranges))
        else:
            request = decode_request(frame, {**ALL, **ranges})
            writer.write(encode_response(request.header,
                                         api_versions_response(version, ranges)))
        await writer.drain()
    return handler


def test_negotiates_the_highest_common_version_per_api():
    ranges = {ApiKey.API_VERSIONS: VersionRange(0, 3), ApiKey.METADATA: VersionRange(1, 5),
              ApiKey.PRODUCE: VersionRange(0, 11), ApiKey.FETCH: VersionRange(0, 2),
              ApiKey.LIST_OFFSETS: VersionRange(7, 9)}

    async def scenario():
        async with FakeBroker(versions_handler(ranges, max_api_versions=3)) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port)
            await conn.connect()
            try:
                assert conn.api_versions[ApiKey.API_VERSIONS] == 2
                assert conn.api_version(ApiKey.METADATA) == 5     # ours 0-8, theirs 1-5
                assert conn.api_version(ApiKey.PRODUCE) == 8      # ours 3-8
                assert ApiKey.FETCH not in conn.api_versions      # ours 4-11, theirs 0-2
                assert ApiKey.LIST_OFFSETS not in conn.api_versions  # ours 1-5, theirs 7-9
                with pytest.raises(UnsupportedVersionError, match="FETCH"):
                    conn.api_version(ApiKey.FETCH)
                assert ApiKey.CREATE_TOPICS not in conn.api_versions  # not offered
            finally:
                conn.close()
    run(scenario())


def test_downgrades_api_versions_after_error_35():
    seen = []
    ranges = {ApiKey.API_VERSIONS: VersionRange(0, 1), ApiKey.METADATA: VersionRange(0, 8)}

    async def scenario():
        async with FakeBroker(versions_handler(ranges, max_api_versions=1, seen=seen)) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port)
            await conn.connect()
            conn.close()
            return conn.api_versions
    chosen = run(scenario())
    assert seen == [(ApiKey.API_VERSIONS, 2), (ApiKey.API_VERSIONS, 1)]
    assert chosen == {ApiKey.API_VERSIONS: 1, ApiKey.METADATA: 8}


def _metadata_handler(mangle_correlation=False, answer=True):
    ranges = {ApiKey.API_VERSIONS: VersionRange(0, 2), ApiKey.METADATA: VersionRange(0, 8)}
    negotiate = versions_handler(ranges)

    async def handler(frame, writer):
        key = struct.unpack_from(">h", frame)[0]
        if key == ApiKey.API_VERSIONS:
            return await negotiate(frame, writer)
        request = decode_request(frame, {**ALL, **ranges})
        if not answer:
            return
        from kio.index import load_response_schema
        from pylog.client.messages import build
        body = build(load_response_schema(key, request.api_version), {
            "throttle_time": 0, "brokers": [], "cluster_id": f"c{request.correlation_id}",
            "controller_id": request.correlation_id, "topics": []})
        header = request.header
        if mangle_correlation:
            header = header._replace(correlation_id=header.correlation_id + 1000)
        writer.write(encode_response(header, body))
        await writer.drain()
    return handler


def _metadata_request():
    return {"topics": [], "allow_auto_topic_creation": False,
            "include_cluster_authorized_operations": False,
            "include_topic_authorized_operations": False}


def test_pipelined_requests_are_matched_in_order():
    async def scenario():
        async with FakeBroker(_metadata_handler()) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port)
            await conn.connect()
            futures = [conn.send(ApiKey.METADATA, _metadata_request()) for _ in range(50)]
            assert conn.in_flight == 50
            answers = await asyncio.gather(*futures)
            conn.close()
            return answers
    answers = run(scenario())
    controller_ids = [a.controller_id for a in answers]
    assert controller_ids == sorted(controller_ids) and len(set(controller_ids)) == 50


def test_wrong_correlation_id_is_a_protocol_violation():
    async def scenario():
        async with FakeBroker(_metadata_handler(mangle_correlation=True)) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port)
            await conn.connect()
            first = conn.send(ApiKey.METADATA, _metadata_request())
            second = conn.send(ApiKey.METADATA, _metadata_request())
            with pytest.raises(ProtocolViolationError, match="correlation id"):
                await first
            with pytest.raises(ProtocolViolationError):
                await second
            assert conn.closed
    run(scenario())


def test_timeout_fails_the_request_and_closes_the_connection():
    async def scenario():
        async with FakeBroker(_metadata_handler(answer=False)) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port, request_timeout_ms=200)
            await conn.connect()
            loop = asyncio.get_running_loop()
            started = loop.time()
            first = conn.send(ApiKey.METADATA, _metadata_request())
            second = conn.send(ApiKey.METADATA, _metadata_request(), timeout_ms=10_000)
            with pytest.raises(KafkaTimeoutError):
                await first
            assert 0.15 < loop.time() - started < 5
            with pytest.raises(KafkaConnectionError) as caught:
                await second
            assert caught.value.retriable
            assert conn.closed
            with pytest.raises(KafkaConnectionError):
                conn.send(ApiKey.METADATA, _metadata_request())
    run(scenario())


def test_peer_hanging_up_fails_requests_in_flight():
    async def hang_up(frame, writer):
        key = struct.unpack_from(">h", frame)[0]
        if key == ApiKey.API_VERSIONS:
            return await versions_handler({ApiKey.API_VERSIONS: VersionRange(0, 2),
                                           ApiKey.METADATA: VersionRange(0, 8)})(frame, writer)
        writer.close()

    async def scenario():
        async with FakeBroker(hang_up) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port)
            await conn.connect()
            with pytest.raises(KafkaConnectionError, match="lost|closed"):
                await conn.request(ApiKey.METADATA, _metadata_request())
            await conn.wait_closed()
    run(scenario())


def test_remote_error_in_api_versions():
    async def refuse(frame, writer):
        request = decode_request(frame, ALL)
        writer.write(encode_response(request.header, api_versions_response(
            request.api_version, {}, error_code=ErrorCode.UNKNOWN_SERVER_ERROR)))
        await writer.drain()

    async def scenario():
        async with FakeBroker(refuse) as fake:
            conn = BrokerConnection("127.0.0.1", fake.port)
            with pytest.raises(Exception) as caught:
                await conn.connect()
            assert getattr(caught.value, "error_code", None) == ErrorCode.UNKNOWN_SERVER_ERROR
            assert conn.closed
    run(scenario())


def test_unreachable_broker():
    async def scenario():
        conn = BrokerConnection("127.0.0.1", 1)
        with pytest.raises(KafkaConnectionError) as caught:
            await conn.connect()
        assert str(caught.value) == "cannot reach 127.0.0.1:1: connection refused"
        assert caught.value.retriable and (caught.value.host, caught.value.port) == ("127.0.0.1", 1)
    run(scenario())

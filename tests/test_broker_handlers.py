"""The request handlers in process, over a real Broker on free ports: every handler answers
every advertised version with a response that decodes; its error response (what a handler bug
turns into) decodes and carries the error; generated requests never make a handler raise."""
import asyncio
import dataclasses
import datetime
import itertools
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.static.primitive import Records

from pylog.broker.app import Broker
from pylog.broker.config import BrokerConfig
from pylog.broker.handlers import HANDLER_CLASSES, CloseConnection
from pylog.protocol.codec import decode_response, encode_request, request_schema
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import advertised

SERVED = advertised(cls.api_key for cls in HANDLER_CLASSES)
PAIRS = [(int(k), v) for k, r in SERVED.items() for v in range(r.min, r.max + 1)]
IDS = [f"{k}-v{v}" for k, v in PAIRS]
DEADLINE_S = 20


def _value(kafka_type: str, n: int):
    return {"int8": 0, "int16": 1, "int32": 1, "int64": 0, "string": f"topic-{n}",
            "bytes": b"", "records": Records(b"\x00" * 70), "bool": False,
            "timedelta_i32": datetime.timedelta(0), "timedelta_i64": datetime.timedelta(0),
            "uint16": 0, "uint32": 0, "uint64": 0, "float64": 0.0}[kafka_type]


def example(schema, counter=None):
    """A request with one element in every array and small values everywhere."""
    counter = counter if counter is not None else iter(range(1, 10_000))
    values = {}
    for field in dataclasses.fields(schema):
        args = [a for a in typing.get_args(field.type) if a is not type(None)]
        inner = typing.get_args(args[0]) if args and typing.get_args(args[0]) else args
        entity = next((a for a in [field.type, *args, *inner] if dataclasses.is_dataclass(a)),
                      None)
        is_array = "tuple" in str(field.type)
        if entity is not None:
            item = example(entity, counter)
            values[field.name] = (item,) if is_array else item
        elif is_array:
            values[field.name] = (_value(field.metadata["kafka_type"], next(counter)),)
        else:
            values[field.name] = _value(field.metadata["kafka_type"], next(counter))
    return schema(**values)


def _frame_of(api_key, version, body) -> memoryview:
    return memoryview(bytearray(encode_request(api_key, version, 42, "test", body)[4:]))


def _decoded(api_key, version, response):
    data = response if isinstance(response, bytes) else b"".join(bytes(b) for b in response)
    correlation_id, body = decode_response(api_key, version, data[4:])
    assert correlation_id == 42
    return body


def _error_codes(entity):
    if dataclasses.is_dataclass(entity):
        for field in dataclasses.fields(entity):
            value = getattr(entity, field.name)
            if field.name == "error_code":
                yield int(value)
            yield from _error_codes(value)
    elif isinstance(entity, tuple):
        for item in entity:
            yield from _error_codes(item)


def _with_broker(tmp_path, scenario, **config):
    async def run():
        broker = Broker(BrokerConfig(data_dir=str(tmp_path / "data"), port=0, control_port=0,
                                     **config))
        await broker.start()
        try:
            await scenario(broker)
        finally:
            await broker.stop()
    asyncio.run(asyncio.wait_for(run(), DEADLINE_S))


async def _answer(handler, request):
    result = handler.handle(request)
    if asyncio.iscoroutine(result):
        result = await asyncio.wait_for(result, DEADLINE_S)
    return result


def test_every_handler_answers_every_version(tmp_path):
    async def scenario(broker):
        handlers = broker.server.handlers
        for api_key, version in PAIRS:
            body = example(request_schema(api_key, version))
            if api_key == 0:
                body = dataclasses.replace(body, acks=1)
            handler = handlers[api_key]
            request = handler.decode(_frame_of(api_key, version, body))
            response = await _answer(handler, request)
            assert response is not None, (api_key, version)
            _decoded(api_key, version, response)
    _with_broker(tmp_path, scenario)


@pytest.mark.parametrize("api_key,version", PAIRS, ids=IDS)
def test_error_responses_decode_and_carry_the_error(tmp_path, api_key, version):
    async def scenario(broker):
        handler = broker.server.handlers[api_key]
        body = example(request_schema(api_key, version))
        if api_key == 0:
            body = dataclasses.replace(body, acks=-1)
        request = handler.decode(_frame_of(api_key, version, body))
        response = handler.error_response(request, ErrorCode.UNKNOWN_SERVER_ERROR)
        decoded = _decoded(api_key, version, response)
        codes = list(_error_codes(decoded))
        assert codes and set(codes) == {-1}, codes
    _with_broker(tmp_path, scenario)


def test_acks0_produce_errors_close_instead_of_answering(tmp_path):
    async def scenario(broker):
        handler = broker.server.handlers[0]
        body = dataclasses.replace(example(request_schema(0, 8)), acks=0)
        request = handler.decode(_frame_of(0, 8, body))
        assert not handler.expects_response(request)
        assert handler.error_response(request, ErrorCode.UNKNOWN_SERVER_ERROR) is None
        with pytest.raises(CloseConnection):
            await _answer(handler, request)           # 70 zero bytes: a corrupt batch
    _with_broker(tmp_path, scenario)


def _registered_records():
    st.register_type_strategy(Records, st.binary(max_size=80).map(Records))


_registered_records()


_joins = itertools.count()


def _tame(api_key, body):
    """Keep generated requests from asking for unbounded work: no long-poll waits, few
    partitions per created topic, every JoinGroup in a group of its own (a second member
    would rightly be held until the first re-joins or its rebalance timeout passes)."""
    if api_key == 1:
        return dataclasses.replace(body, max_wait=datetime.timedelta(0))
    if api_key == 11:
        return dataclasses.replace(body, group_id=f"{body.group_id}-{next(_joins)}")
    if api_key == 19:
        return dataclasses.replace(body, topics=tuple(
            dataclasses.replace(t, num_partitions=t.num_partitions % 4,
                                replication_factor=t.replication_factor % 3)
            for t in body.topics))
    return body


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_requests_never_make_a_handler_raise(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("fuzz")

    async def scenario(broker):
        handlers = broker.server.handlers
        for _ in range(12):
            api_key, version = data.draw(st.sampled_from(PAIRS))
            body = _tame(api_key, data.draw(st.from_type(request_schema(api_key, version))))
            try:
                frame = _frame_of(api_key, version, body)
            except Exception:
                continue                  # a value the wire cannot carry
            handler = handlers[api_key]
            request = handler.decode(frame)
            try:
                response = await _answer(handler, request)
            except CloseConnection:
                assert api_key == 0 and request.acks == 0
                continue
            if handler.expects_response(request):
                _decoded(api_key, version, response)
            else:
                assert response is None
    _with_broker(tmp_path, scenario)


def test_in_process_broker_start_and_stop(tmp_path):
    async def scenario(broker):
        assert broker.ready and broker.port and broker.control_port
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.controller.metadata.brokers[1].port == broker.port
        assert broker.startup_seconds < 60
    _with_broker(tmp_path, scenario)
    assert (tmp_path / "data" / ".clean_shutdown").exists()


def test_stop_answers_a_parked_long_poll_and_refuses_new_requests(tmp_path):
    """A fetch parked for 30 s when the broker stops gets its (empty) answer at once; the
    listener is closed; the stop is far shorter than the fetch's wait."""
    import struct

    from kafka_wire import body, entity

    async def run():
        broker = Broker(BrokerConfig(data_dir=str(tmp_path / "data"), port=0, control_port=0))
        await broker.start()
        broker.controller.create_topic("parked", 1, 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        fetch = body(1, 11, replica_id=-1, max_wait=30_000, min_bytes=1, max_bytes=1 << 20,
                     isolation_level=0, session_id=0, session_epoch=-1, topics=(
                         entity(1, 11, "topics", topic="parked", partitions=(
                             entity(1, 11, "topics.partitions", partition=0, fetch_offset=0,
                                    partition_max_bytes=1 << 20, current_leader_epoch=-1,
                                    log_start_offset=-1),)),),
                     forgotten_topics_data=(), rack_id="")
        writer.write(encode_request(1, 11, 42, "t", fetch))
        await writer.drain()
        loop = asyncio.get_running_loop()
        while broker.server.inflight() == 0:
            await asyncio.sleep(0.005)
        began = loop.time()
        await broker.stop()
        assert loop.time() - began < 5
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        answer = _decoded(1, 11, struct.pack(">i", size) + await reader.readexactly(size))
        assert answer.responses[0].partitions[0].records == b""
        assert not broker.ready
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", broker.port)
        writer.close()
    asyncio.run(asyncio.wait_for(run(), DEADLINE_S))
    assert (tmp_path / "data" / ".clean_shutdown").exists()

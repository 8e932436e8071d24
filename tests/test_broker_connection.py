"""The connection pipeline in process, with scripted handlers: responses in request order
whatever order handlers finish in, eager handling, flow control (in-flight limit and a client
that does not read), handler failures, and cleanup when the client goes away."""
import asyncio
import struct
from types import SimpleNamespace

import pytest

from pylog.broker.connection import write_buffers
from pylog.broker.handlers.base import CloseConnection, Handler
from pylog.broker.server import KafkaServer
from pylog.protocol.header import read_request_prefix

WAIT, NOW, SILENT, BOOM, BIG = 100, 101, 102, 103, 104
DEADLINE = 5.0


def _response(correlation_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">ii", 4 + len(payload), correlation_id) + payload


def _request(api_key: int, correlation_id: int, body: bytes = b"") -> bytes:
    payload = struct.pack(">hhih", api_key, 0, correlation_id, -1) + body
    return struct.pack(">i", len(payload)) + payload


class Script:
    """Shared state of the scripted handlers: futures the test resolves, calls seen."""

    def __init__(self):
        self.gates: dict[int, asyncio.Future] = {}
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.error_answers = True

    def gate(self, correlation_id: int) -> asyncio.Future:
        if correlation_id not in self.gates:
            self.gates[correlation_id] = asyncio.get_running_loop().create_future()
        return self.gates[correlation_id]


class Scripted(Handler):
    def __init__(self, api_key, script):
        super().__init__(None, {})
        self.api_key = api_key
        self.script = script

    def decode(self, frame):
        _, _, correlation_id = read_request_prefix(frame)
        return SimpleNamespace(correlation_id=correlation_id, api_version=0,
                               body=bytes(frame[10:]))

    def expects_response(self, request):
        return self.api_key != SILENT

    def handle(self, request):
        self.script.started.append(request.correlation_id)
        if self.api_key == NOW:
            return _response(request.correlation_id, b"now")
        if self.api_key == BOOM:
            raise RuntimeError("handler bug")
        if self.api_key == BIG:
            return [_response(request.correlation_id, b"x" * 4096)[:8],
                    memoryview(b"x" * 4096)]
        return self._wait(request)

    async def _wait(self, request):
        try:
            value = await self.script.gate(request.correlation_id)
        except asyncio.CancelledError:
            self.script.cancelled.append(request.correlation_id)
            raise
        if value == "close":
            raise CloseConnection("asked to")
        if value == "fail":
            raise RuntimeError("late failure")
        return None if self.api_key == SILENT else _response(request.correlation_id,
                                                             value.encode())

    def error_response(self, request, error_code):
        if not self.script.error_answers:
            return None
        return _response(request.correlation_id, b"err%d" % error_code)


async def _start(max_inflight=4, write_buffer=1024 * 1024, max_frame=1 << 20):
    script = Script()
    handlers = {key: Scripted(key, script) for key in (WAIT, NOW, SILENT, BOOM, BIG)}
    config = SimpleNamespace(host="127.0.0.1", port=0, socket_request_max_bytes=max_frame,
                             max_inflight_requests_per_connection=max_inflight,
                             connection_write_buffer_bytes=write_buffer)
    server = KafkaServer(config, handlers)
    host, port = await server.start()
    reader, writer = await asyncio.open_connection(host, port)
    await _until(lambda: len(server.connections) == 1)
    return server, script, reader, writer


async def _until(condition, deadline=DEADLINE):
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def _read_response(reader) -> tuple[int, bytes]:
    size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), DEADLINE))[0]
    frame = await asyncio.wait_for(reader.readexactly(size), DEADLINE)
    return struct.unpack_from(">i", frame)[0], frame[4:]


async def _closed(reader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1 << 16), DEADLINE)
    except ConnectionResetError:
        return True
    return data == b""


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_responses_follow_request_order_not_completion_order():
    async def scenario():
        server, script, reader, writer = await _start(max_inflight=8)
        writer.write(_request(WAIT, 1) + _request(NOW, 2) + _request(WAIT, 3) + _request(NOW, 4))
        await _until(lambda: script.started == [1, 2, 3, 4])
        script.gate(3).set_result("third")
        await asyncio.sleep(0.05)
        (connection,) = server.connections
        assert connection.inflight == 4         # 2, 3, 4 done but queued behind 1
        script.gate(1).set_result("first")
        answers = [await _read_response(reader) for _ in range(4)]
        assert answers == [(1, b"first"), (2, b"now"), (3, b"third"), (4, b"now")]
        assert connection.inflight == 0
        writer.close()
        await server.close_all()
    run(scenario())


def test_eager_handling_answers_without_waiting_for_a_task():
    async def scenario():
        server, script, reader, writer = await _start()
        script.gate(9).set_result("ready")      # the handler's await completes at once
        writer.write(_request(WAIT, 9))
        assert await _read_response(reader) == (9, b"ready")
        writer.close()
        await server.close_all()
    run(scenario())


def test_requests_without_response_send_nothing_and_keep_order():
    async def scenario():
        server, script, reader, writer = await _start()
        writer.write(_request(SILENT, 1) + _request(NOW, 2))
        assert await _read_response(reader) == (2, b"now")
        (connection,) = server.connections
        assert connection.inflight == 1          # the silent one still waits
        script.gate(1).set_result("x")
        await _until(lambda: connection.inflight == 0)
        writer.close()
        await server.close_all()
    run(scenario())


def test_inflight_limit_stops_reading_and_resumes():
    async def scenario():
        server, script, reader, writer = await _start(max_inflight=3)
        writer.write(b"".join(_request(WAIT, i) for i in range(1, 11)))
        await _until(lambda: len(script.started) == 3)
        (connection,) = server.connections
        await asyncio.sleep(0.05)
        assert script.started == [1, 2, 3] and connection.inflight == 3
        assert connection.reading_paused
        for i in range(1, 11):
            await _until(lambda: i in script.gates)
            script.gate(i).set_result(str(i))
            assert await _read_response(reader) == (i, str(i).encode())
            assert connection.inflight <= 3
        await _until(lambda: not connection.reading_paused)
        writer.close()
        await server.close_all()
    run(scenario())


def test_client_that_does_not_read_is_not_buffered_without_bound():
    async def scenario():
        server, script, reader, writer = await _start(max_inflight=1000, write_buffer=64 * 1024)
        (connection,) = server.connections
        sent = 0
        # 4 KiB answers, far more than socket buffers and the 64 KiB mark hold.
        for batch in range(40):
            writer.write(b"".join(_request(BIG, batch * 100 + i) for i in range(100)))
            sent += 100
            await asyncio.sleep(0)
        await _until(lambda: connection.reading_paused)
        await asyncio.sleep(0.1)
        answered_while_stuck = len(script.started)
        assert answered_while_stuck < sent
        transport = connection._transport
        assert transport.get_write_buffer_size() < 64 * 1024 + 2 * 4104
        # The broker serves other clients meanwhile.
        reader2, writer2 = await asyncio.open_connection(server.host, server.port)
        writer2.write(_request(NOW, 77))
        assert await _read_response(reader2) == (77, b"now")
        # Once the client reads, everything is answered, in order.
        for expected in range(sent):
            correlation_id, payload = await _read_response(reader)
            assert correlation_id == (expected // 100) * 100 + expected % 100
            assert len(payload) == 4096
        writer.close()
        writer2.close()
        await server.close_all()
    run(scenario())


def test_handler_exceptions_answer_the_error_or_close():
    async def scenario():
        server, script, reader, writer = await _start()
        writer.write(_request(BOOM, 1) + _request(NOW, 2))
        assert await _read_response(reader) == (1, b"err-1")
        assert await _read_response(reader) == (2, b"now")
        writer.write(_request(WAIT, 3))
        await _until(lambda: 3 in script.gates)
        script.gate(3).set_result("fail")       # fails after suspending
        assert await _read_response(reader) == (3, b"err-1")
        script.error_answers = False
        writer.write(_request(BOOM, 4))
        assert await _closed(reader)
        await server.close_all()
    run(scenario())


def test_close_connection_from_a_handler():
    async def scenario():
        server, script, reader, writer = await _start()
        writer.write(_request(WAIT, 1))
        await _until(lambda: 1 in script.gates)
        script.gate(1).set_result("close")
        assert await _closed(reader)
        await _until(lambda: not server.connections)
        await server.close_all()
    run(scenario())


def test_vanishing_client_cancels_its_running_handlers():
    async def scenario():
        server, script, reader, writer = await _start()
        writer.write(_request(WAIT, 1) + _request(WAIT, 2)
                     + _request(WAIT, 3)[:7])          # the third is cut off
        await _until(lambda: script.started == [1, 2])
        writer.transport.abort()
        await _until(lambda: sorted(script.cancelled) == [1, 2])
        await _until(lambda: not server.connections)
        await server.close_all()
    run(scenario())


@pytest.mark.parametrize("raw", [
    struct.pack(">i", -1),                       # negative size
    struct.pack(">i", 2_000_000),                # above the frame limit
    struct.pack(">i", 3) + b"abc",               # shorter than a request header
    _request(999, 1),                            # unknown api key
])
def test_bad_frames_close_only_that_connection(raw):
    async def scenario():
        server, script, reader, writer = await _start()
        reader2, writer2 = await asyncio.open_connection(server.host, server.port)
        writer.write(raw)
        assert await _closed(reader)
        writer2.write(_request(NOW, 5))
        assert await _read_response(reader2) == (5, b"now")
        writer2.close()
        await server.close_all()
    run(scenario())


def test_stop_accepting_lets_taken_requests_finish():
    async def scenario():
        server, script, reader, writer = await _start()
        writer.write(_request(WAIT, 1))
        await _until(lambda: script.started == [1])
        server.stop_accepting()
        writer.write(_request(NOW, 2))                # not taken any more
        assert server.inflight() == 1
        script.gate(1).set_result("done")
        assert await server.drain(DEADLINE)
        assert await _read_response(reader) == (1, b"done")
        assert script.started == [1]
        with pytest.raises(OSError):
            await asyncio.open_connection(server.host, server.port)
        await server.close_all()
    run(scenario())


class _Recorder:
    def __init__(self):
        self.calls = []

    def write(self, data):
        self.calls.append(("write", data))

    def writelines(self, data):
        self.calls.append(("writelines", list(data)))


def test_write_buffers_never_joins_the_buffers():
    records = memoryview(bytearray(b"r" * 100))
    recorder = _Recorder()
    write_buffers(recorder, [b"head", records, b"tail"])
    # A non-stdlib transport (uvloop) gets writelines; the buffers are the same objects.
    assert recorder.calls[0][0] == "writelines"
    assert recorder.calls[0][1][1] is records

"""Test helpers for pylog's client: brokers (pylog serve, or Tansu), a fault-injecting proxy,
scripted fake brokers.

``KafkaProxy`` sits between the client and a real broker on 127.0.0.1. It forwards every frame
unchanged except: Metadata answers are rewritten to advertise the proxy (so the client keeps
talking through it), and a test-supplied ``intercept(api_key, api_version, body, count)`` may
answer a request itself (return a kio response body), drop the connection (return
``CLOSE``), let the broker handle it and then drop the connection before its answer reaches
the client (return ``DROP_ANSWER``: a lost acknowledgement) or let it through (return None),
where ``count`` numbers the requests of that api key seen so far (1, 2, ...). ``rewrite(api_key, api_version, body)`` may replace a broker
answer. Requests seen are counted per api key in ``counts``.

``FakeBroker`` answers each request frame with a coroutine ``handler(frame, writer)``; used
to test the connection layer against behaviours a correct broker never shows (wrong
correlation ids, no answer, a version downgrade).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from broker_fixture import BrokerFactory  # F2's `pylog serve` launcher

from pylog.protocol import (
    ADVERTISED_VERSIONS,
    ApiKey,
    FrameDecoder,
    decode_request,
    decode_response,
    encode_response,
)

CLOSE = object()
DROP_ANSWER = object()


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class KafkaProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *,
                 intercept: Callable[[int, int, Any, int], Any] | None = None,
                 rewrite: Callable[[int, int, Any], Any] | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.intercept = intercept
        self.rewrite = rewrite
        self.counts: collections.Counter[int] = collections.Counter()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> KafkaProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def __aenter__(self) -> KafkaProxy:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _serve(self, client_reader, client_writer) -> None:
        self._writers.add(client_writer)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)
        try:
            while True:
                frame = await _read_frame(client_reader)
                if frame is None:
                    return
                request = decode_request(frame, ADVERTISED_VERSIONS)
                key, version = request.api_key, request.api_version
                self.counts[key] += 1
                action = None
                if self.intercept is not None:
                    action = self.intercept(key, version, request.body, self.counts[key])
                    if action is CLOSE:
                        return
                    if action is not None and action is not DROP_ANSWER:
                        client_writer.write(encode_response(request.header, action))
                        await client_writer.drain()
                        continue
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                if key == ApiKey.PRODUCE and request.body.acks == 0:
                    continue
                answer = await _read_frame(up_reader)
                if answer is None or action is DROP_ANSWER:
                    return
                if key == ApiKey.METADATA or self.rewrite is not None:
                    _, body = decode_response(key, version, answer)
                    if key == ApiKey.METADATA:
                        body = dataclasses.replace(body, brokers=tuple(
                            dataclasses.replace(b, host="127.0.0.1", port=self.port)
                            for b in body.brokers))
                    if self.rewrite is not None:
                        body = self.rewrite(key, version, body)
                    client_writer.write(encode_response(request.header, body))
                else:
                    client_writer.write(struct.pack(">i", len(answer)) + answer)
                await client_writer.drain()
        finally:
            for writer in (client_writer, up_writer):
                self._writers.discard(writer)
                writer.close()


class FakeBroker:
    """A listener on 127.0.0.1 whose every request frame goes to ``handler(frame, writer)``."""

    def __init__(self, handler: Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]):
        self.handler = handler
        self.port = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            while (frame := await _read_frame(reader)) is not None:
                await self.handler(frame, writer)
        finally:
            writer.close()


def frames_of(data: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [bytes(f) for f in decoder.frames()]


# ---- brokers for the client tests -------------------------------------------------------------


class Broker(NamedTuple):
    kind: str            # "pylog" or "tansu"
    host: str
    port: int
    control: str | None  # control-plane URL (pylog only)
    pid: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def start_tansu(workdir: Path) -> Broker:
    """The peer broker (../shared/peers/tansu.sh), when PYLOG_TEST_TANSU=1; else skip."""
    if os.environ.get("PYLOG_TEST_TANSU") != "1":
        pytest.skip("Tansu runs only with PYLOG_TEST_TANSU=1")
    script = Path(__file__).resolve().parents[2] / "shared" / "peers" / "tansu.sh"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(["bash", str(script), str(port)], cwd=workdir, capture_output=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"Tansu unavailable: {result.stderr.decode(errors='replace')[-200:]}")
    return Broker("tansu", "127.0.0.1", port, None, int(result.stdout.split()[-1]))


@pytest.fixture(scope="module", params=["pylog", "tansu"])
def broker(request, tmp_path_factory):
    """One broker shared by a test module: `pylog serve` (through tests/broker_fixture.py), or
    the peer Tansu for comparison (only with PYLOG_TEST_TANSU=1)."""
    workdir = tmp_path_factory.mktemp(request.param)
    if request.param == "pylog":
        factory = BrokerFactory(workdir)
        running = factory.start()
        try:
            yield Broker("pylog", "127.0.0.1", running.port, running.control_url, running.pid)
        finally:
            failed = request.session.testsfailed > 0
            factory.cleanup(failed=failed)
    else:
        info = start_tansu(workdir)
        try:
            yield info
        finally:
            os.kill(info.pid, signal.SIGTERM)

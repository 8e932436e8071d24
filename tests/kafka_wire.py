"""A tiny blocking Kafka wire client for tests: raw frames over a socket, bodies through
pylog.protocol (kio), with a deadline on every read. For probing exact bytes and error codes
that a full client library would hide or retry."""
from __future__ import annotations

import datetime
import socket
import struct
from typing import Any

from pylog.broker.handlers.base import build, nested
from pylog.protocol.codec import decode_response, encode_request, request_schema

DEADLINE_S = 10.0


def body(api_key: int, version: int, **values: Any) -> Any:
    """A kio request body of (api_key, version); values for fields the version lacks are
    dropped, timedelta fields may be given as ints of ms."""
    schema = request_schema(api_key, version)
    for name in ("timeout", "max_wait", "transaction_timeout"):
        if isinstance(values.get(name), int):
            values[name] = datetime.timedelta(milliseconds=values[name])
    return build(schema, **values)


def entity(api_key: int, version: int, path: str, **values: Any) -> Any:
    """A nested kio request entity: ``path`` is dotted field names from the request, e.g.
    "topics" or "topics.partitions"."""
    schema = request_schema(api_key, version)
    for field in path.split("."):
        schema = nested(schema, field)
    return build(schema, **values)


class Wire:
    """One connection; ``call`` sends a request and reads its response."""

    def __init__(self, bootstrap: str, client_id: str | None = "wire-test"):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
        self.sock.settimeout(DEADLINE_S)
        self.client_id = client_id
        self._next_correlation_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, api_key: int, version: int, request_body: Any) -> int:
        correlation_id = self._next_correlation_id
        self._next_correlation_id += 1
        self.sock.sendall(encode_request(api_key, version, correlation_id, self.client_id,
                                         request_body))
        return correlation_id

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        size = struct.unpack(">i", self._read_exactly(4))[0]
        return self._read_exactly(size)

    def receive(self, api_key: int, version: int, correlation_id: int) -> Any:
        got, decoded = decode_response(api_key, version, self.read_frame())
        assert got == correlation_id, f"response {got} where {correlation_id} was expected"
        return decoded

    def call(self, api_key: int, version: int, request_body: Any) -> Any:
        return self.receive(api_key, version, self.send(api_key, version, request_body))

    def _read_exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def is_closed_by_peer(self) -> bool:
        """True once the broker has closed this connection (waits up to the deadline)."""
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return data == b""


def raw_frame(api_key: int, version: int, correlation_id: int, payload: bytes = b"",
              client_id: str | None = None) -> bytes:
    """Size prefix + request header v1 + ``payload`` (any bytes)."""
    name = b"" if client_id is None else client_id.encode()
    header = struct.pack(">hhih", api_key, version, correlation_id,
                         -1 if client_id is None else len(name)) + name
    return struct.pack(">i", len(header) + len(payload)) + header + payload

"""What every request handler shares: the Handler interface, the broker context handlers see,
and helpers to build kio response entities of any version.

A handler serves one api key at every version pylog advertises for it. The connection calls,
in order: ``decode(frame)`` (kio by default; Produce parses by hand), ``expects_response``
(False only for Produce with acks=0), then ``handle(request)``, which returns the response
frame (bytes), a list of buffers (Fetch), None (no response), or a coroutine giving one of
those when the answer must wait (long-poll Fetch, acks=all Produce). If ``handle`` raises,
the connection logs it and sends ``error_response(request, UNKNOWN_SERVER_ERROR)``; a handler
that cannot express an error in its response returns None there, and the connection closes.

The connection runs a coroutine returned by ``handle`` eagerly: its first step (up to the
first real wait) runs at once, outside any asyncio Task, so requests of one connection take
effect in order; only the rest runs in a task. So before its first await a handler (and what
it calls, such as ReplicaManager.produce) must not need ``asyncio.current_task()``
(``asyncio.timeout`` does); ``asyncio.wait_for`` and awaiting futures are fine.

``CloseConnection`` raised by ``handle`` closes the connection on purpose (Kafka's answer to a
failed acks=0 produce, which has no response to carry the error).

kio entities differ per version (fields appear from some version on), so handlers build them
through ``build(schema, **values)``, which drops the values the version has no field for, and
find nested entity classes with ``nested(schema, field)``.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import typing
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, Union

from pylog.protocol.codec import Request, decode_request, response_schema
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import VersionRange

Buffer = Union[bytes, bytearray, memoryview]
#: What a handler gives back: a whole response frame, a Fetch response's buffers, or nothing.
Response = Union[bytes, list[Buffer], None]

ZERO_THROTTLE = datetime.timedelta(0)
#: Authorized operations when the client did not ask for them (KAFKA-PROTOCOL.md §4).
AUTHORIZED_OPERATIONS_OMITTED = -2**31


class CloseConnection(Exception):
    """Raised by a handler to close its connection instead of answering."""


class BrokerContext(Protocol):
    """The parts of the broker handlers use (pylog.broker.app.Broker provides them)."""

    config: Any                  # BrokerConfig
    controller: Any              # pylog.controller Controller
    replica_manager: Any         # ReplicaManager
    producer_ids: Any            # producer-id allocator
    metrics: Any                 # BrokerMetrics

    @property
    def node_id(self) -> int: ...

    @property
    def advertised_host(self) -> str: ...

    @property
    def advertised_port(self) -> int: ...


class Handler:
    """Serves one api key. Subclasses set ``api_key`` and implement ``handle`` and
    ``error_response``."""

    api_key: int

    def __init__(self, broker: BrokerContext, supported: dict[int, VersionRange]):
        self.broker = broker
        self.supported = supported

    def decode(self, frame: memoryview) -> Any:
        """The request object ``handle`` takes. Raises pylog.protocol RequestError subclasses."""
        return decode_request(frame, self.supported)

    def expects_response(self, request: Any) -> bool:
        return True

    def handle(self, request: Any) -> Response | Awaitable[Response]:
        raise NotImplementedError

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        """The answer that reports ``error_code`` for the whole request; None if the api has no
        way to say it (the connection is closed instead)."""
        raise NotImplementedError


# ---- kio entity helpers ---------------------------------------------------------------------


@functools.cache
def field_names(schema: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(schema))


@functools.cache
def nested(schema: type, field: str) -> type:
    """The entity class inside ``schema.field`` (``tuple[X, ...]``, ``X | None`` or ``X``)."""
    for f in dataclasses.fields(schema):
        if f.name == field:
            return _entity_in(f.type, f"{schema.__qualname__}.{field}")
    raise KeyError(f"{schema.__qualname__} has no field {field!r}")


def _entity_in(annotation: Any, where: str) -> type:
    if dataclasses.is_dataclass(annotation):
        return annotation
    for argument in typing.get_args(annotation):
        if argument is not Ellipsis and argument is not type(None):
            try:
                return _entity_in(argument, where)
            except TypeError:
                continue
    raise TypeError(f"{where} holds no entity")


def build(schema: type, **values: Any) -> Any:
    """``schema(**values)`` without the values this version has no field for."""
    names = field_names(schema)
    return schema(**{name: value for name, value in values.items() if name in names})


def response_type(request: Request) -> type:
    """The kio response class answering ``request`` (its api key and version)."""
    return response_schema(request.api_key, request.api_version)


def topic_error_code(exc: Exception) -> ErrorCode:
    """The Kafka error code an exception from the controller or storage stands for: its
    ``error_code`` attribute if it has one, else UNKNOWN_SERVER_ERROR."""
    code = getattr(exc, "error_code", None)
    if code is None:
        return ErrorCode.UNKNOWN_SERVER_ERROR
    try:
        return ErrorCode(int(code))
    except ValueError:
        return ErrorCode.UNKNOWN_SERVER_ERROR


def as_error_code(code: int) -> ErrorCode:
    """An int error code as the ErrorCode kio's writer wants (unknown ones become -1)."""
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.UNKNOWN_SERVER_ERROR


def group_by_topic(items: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Order-keeping grouping of (topic, item) pairs."""
    grouped: dict[str, list[Any]] = {}
    for topic, item in items:
        grouped.setdefault(topic, []).append(item)
    return grouped

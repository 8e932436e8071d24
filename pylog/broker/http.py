"""The broker's control plane: health, Prometheus metrics and the topic admin API over HTTP/JSON.

``create_control_app(broker)`` builds the aiohttp application; the broker (pylog.broker.app)
runs it on the control port, bound to 127.0.0.1 unless configured otherwise, on the same
event loop as the Kafka listener. ``broker`` needs ``.replica_manager``, ``.controller``,
``.metrics`` (a BrokerMetrics), ``.config`` and ``.ready`` (True while it takes traffic).

Routes
------
``GET /health``
    200 ``{"status": "ok", "node_id", "cluster_id", "metadata_version"}`` while the broker takes
    traffic; 503 ``{"status": "unavailable", "node_id"}`` while it starts or stops.
``GET /metrics``
    Every metric in the Prometheus text format (see pylog.broker.metrics).
``GET /v1/cluster``
    ``{"cluster_id", "controller_id", "metadata_version", "brokers": [{"node_id", "host",
    "port", "rack"}]}``.
``GET /v1/topics``
    ``{"topics": [{"name", "topic_id", "partitions", "replication_factor"}]}``, sorted by name.
``POST /v1/topics``
    Body ``{"name": str, "partitions": int, "replication_factor": int, "configs": {str: str}}``;
    all but ``name`` optional (absent or -1: the broker's defaults; config values may also be
    JSON numbers or booleans, sent to the controller as Kafka's strings, or null for the
    broker's default). 201 with the new topic's description (as ``GET /v1/topics/{name}``) and a
    ``Location`` header.
``GET /v1/topics/{name}``
    ``{"name", "topic_id", "configs" (the topic's overrides), "partitions": [{"partition",
    "leader", "replicas", "isr", "observers", "hidden", "leader_epoch", "partition_epoch",
    "log_start_offset", "log_end_offset", "high_watermark", "size_bytes"}]}``; the log fields are
    null for a partition that has no replica on this broker.
``DELETE /v1/topics/{name}``
    200 ``{"deleted": name}``.

Errors
------
Every failure, of any route, is JSON ``{"error": NAME, "message": TEXT}`` where NAME is a
Kafka error name (pylog.protocol.ErrorCode), never an HTML page or a traceback:

- 400: ``INVALID_REQUEST`` (body not a JSON object, unknown or mistyped field),
  ``INVALID_TOPIC_EXCEPTION``, ``INVALID_PARTITIONS``, ``INVALID_REPLICATION_FACTOR``,
  ``INVALID_CONFIG`` and the controller's other non-retriable refusals;
- 404: ``UNKNOWN_TOPIC_OR_PARTITION``; ``INVALID_REQUEST`` for a path that is no route;
- 405: ``INVALID_REQUEST`` for a method the route does not take (with ``Allow``);
- 409: ``TOPIC_ALREADY_EXISTS``;
- 413: ``INVALID_REQUEST`` for a body over 1 MiB;
- 503: ``BROKER_NOT_AVAILABLE`` on ``/v1`` routes while the broker is not ready, and retriable
  controller errors;
- 500: ``UNKNOWN_SERVER_ERROR`` for a bug (logged with its traceback).

Admin calls run the controller's mutation on the event loop, as the Kafka CreateTopics and
DeleteTopics handlers do, so the controller and the ReplicaManager are only ever touched from
that one thread.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pylog.broker.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pylog.controller import MetadataError
from pylog.protocol import ErrorCode
from pylog.storage.names import InvalidTopicError, validate_topic_name

__all__ = ["MAX_BODY_BYTES", "create_control_app"]

log = logging.getLogger("pylog.broker.http")

#: Largest request body accepted (a topic creation is a few hundred bytes).
MAX_BODY_BYTES = 1 << 20

_BROKER_KEY = web.AppKey("broker", object)

# Kafka errors whose HTTP status is not the default (400, or 503 for a retriable error).
_HTTP_STATUS = {
    ErrorCode.UNKNOWN_SERVER_ERROR: 500,
    ErrorCode.KAFKA_STORAGE_ERROR: 500,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: 404,
    ErrorCode.TOPIC_ALREADY_EXISTS: 409,
}

_CREATE_FIELDS = frozenset({"name", "partitions", "replication_factor", "configs"})


class ControlPlaneError(Exception):
    """A refused control-plane request: the Kafka error it maps to and the HTTP status."""

    def __init__(self, error: ErrorCode, message: str, status: int | None = None):
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status if status is not None else _status_for(error)


def _status_for(error: ErrorCode) -> int:
    status = _HTTP_STATUS.get(error)
    if status is not None:
        return status
    return 503 if error.retriable else 400


def _error_response(status: int, error: ErrorCode, message: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error.name, "message": message}, status=status,
                             headers=headers)


def _refusal(exc: MetadataError) -> ControlPlaneError:
    """The ControlPlaneError for a change the controller refused."""
    try:
        error = ErrorCode(exc.error_code)
    except ValueError:  # a controller-to-broker code no client is ever sent
        error = ErrorCode.UNKNOWN_SERVER_ERROR
    return ControlPlaneError(error, str(exc) or error.name)


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Turn every failure into a JSON error body (aiohttp would answer text or HTML)."""
    try:
        return await handler(request)
    except ControlPlaneError as exc:
        return _error_response(exc.status, exc.error, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error_response(exc.status, ErrorCode.INVALID_REQUEST, exc.reason, headers)
    except Exception:
        log.exception("control plane: %s %s failed", request.method, request.path)
        return _error_response(500, ErrorCode.UNKNOWN_SERVER_ERROR,
                               "internal error; the broker log has the details")


def create_control_app(broker: Any) -> web.Application:
    """The aiohttp application of the control plane (see the module docstring for routes)."""
    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY_BYTES)
    app[_BROKER_KEY] = broker
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/cluster", _cluster)
    app.router.add_get("/v1/topics", _list_topics)
    app.router.add_post("/v1/topics", _create_topic)
    app.router.add_get("/v1/topics/{name}", _describe_topic)
    app.router.add_delete("/v1/topics/{name}", _delete_topic)
    return app


def _broker(request: web.Request) -> Any:
    return request.app[_BROKER_KEY]


def _ready_broker(request: web.Request) -> Any:
    broker = _broker(request)
    if not broker.ready:
        raise ControlPlaneError(ErrorCode.BROKER_NOT_AVAILABLE,
                                "the broker is starting or stopping", status=503)
    return broker


def _node_id(broker: Any) -> int:
    return broker.config.node_id


# -- health and metrics ------------------------------------------------------------------------

async def _health(request: web.Request) -> web.Response:
    broker = _broker(request)
    if not broker.ready:
        return web.json_response({"status": "unavailable", "node_id": _node_id(broker)},
                                 status=503)
    metadata = broker.controller.metadata
    return web.json_response({
        "status": "ok",
        "node_id": _node_id(broker),
        "cluster_id": metadata.cluster_id,
        "metadata_version": metadata.version,
    })


async def _metrics(request: web.Request) -> web.Response:
    body = _broker(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


# -- admin -------------------------------------------------------------------------------------

async def _cluster(request: web.Request) -> web.Response:
    metadata = _ready_broker(request).controller.metadata
    brokers = [
        {"node_id": info.node_id, "host": info.host, "port": info.port, "rack": info.rack}
        for _, info in sorted(metadata.brokers.items())
    ]
    return web.json_response({
        "cluster_id": metadata.cluster_id,
        "controller_id": metadata.controller_id,
        "metadata_version": metadata.version,
        "brokers": brokers,
    })


async def _list_topics(request: web.Request) -> web.Response:
    metadata = _ready_broker(request).controller.metadata
    topics = []
    for name, topic in sorted(metadata.topics.items()):
        first = topic.partitions.get(0)
        topics.append({
            "name": name,
            "topic_id": str(topic.topic_id),
            "partitions": len(topic.partitions),
            "replication_factor": len(first.replicas) if first is not None else 0,
        })
    return web.json_response({"topics": topics})


async def _create_topic(request: web.Request) -> web.Response:
    broker = _ready_broker(request)
    name, partitions, replication_factor, configs = await _parse_create_body(request)
    try:
        broker.controller.create_topic(name, partitions, replication_factor, configs)
    except MetadataError as exc:
        raise _refusal(exc) from exc
    description = _describe(broker, name)
    return web.json_response(description, status=201,
                             headers={"Location": f"/v1/topics/{name}"})


async def _describe_topic(request: web.Request) -> web.Response:
    broker = _ready_broker(request)
    return web.json_response(_describe(broker, _topic_name(request)))


async def _delete_topic(request: web.Request) -> web.Response:
    broker = _ready_broker(request)
    name = _topic_name(request)
    try:
        broker.controller.delete_topic(name)
    except MetadataError as exc:
        raise _refusal(exc) from exc
    return web.json_response({"deleted": name})


def _topic_name(request: web.Request) -> str:
    try:
        return validate_topic_name(request.match_info["name"])
    except InvalidTopicError as exc:
        raise ControlPlaneError(ErrorCode.INVALID_TOPIC_EXCEPTION, str(exc)) from exc


def _describe(broker: Any, name: str) -> dict[str, Any]:
    topic = broker.controller.metadata.topics.get(name)
    if topic is None:
        raise ControlPlaneError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                f"topic {name!r} does not exist")
    replica_manager = broker.replica_manager
    partitions = []
    for index, state in sorted(topic.partitions.items()):
        local = replica_manager.partition(name, index)
        partitions.append({
            "partition": index,
            "leader": state.leader,
            "replicas": list(state.replicas),
            "isr": list(state.isr),
            "observers": list(state.observers),
            "hidden": list(state.hidden),
            "leader_epoch": state.leader_epoch,
            "partition_epoch": state.partition_epoch,
            "log_start_offset": None if local is None else local.log_start_offset,
            "log_end_offset": None if local is None else local.log_end_offset,
            "high_watermark": None if local is None else local.high_watermark,
            "size_bytes": None if local is None else local.size_bytes,
        })
    return {
        "name": name,
        "topic_id": str(topic.topic_id),
        "configs": dict(topic.configs),
        "partitions": partitions,
    }


async def _parse_create_body(request: web.Request
                             ) -> tuple[str, int, int, dict[str, str | None]]:
    """(name, partitions, replication_factor, configs) of a topic creation, checked for type.

    -1 stands for the broker's default partitions / replication factor, as in Kafka's
    CreateTopics; the values themselves are the controller's to accept or refuse.
    """
    try:
        body = await request.json()
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
        raise ControlPlaneError(ErrorCode.INVALID_REQUEST, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ControlPlaneError(ErrorCode.INVALID_REQUEST, "body must be a JSON object")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise ControlPlaneError(ErrorCode.INVALID_REQUEST,
                                f"unknown field(s) {', '.join(unknown)}; expected "
                                f"{', '.join(sorted(_CREATE_FIELDS))}")
    name = body.get("name")
    if not isinstance(name, str):
        raise ControlPlaneError(ErrorCode.INVALID_TOPIC_EXCEPTION,
                                "field 'name' (a string) is required")
    partitions = _int_field(body, "partitions", ErrorCode.INVALID_PARTITIONS)
    replication_factor = _int_field(body, "replication_factor",
                                    ErrorCode.INVALID_REPLICATION_FACTOR)
    return name, partitions, replication_factor, _configs_field(body)


def _int_field(body: dict[str, Any], field: str, error: ErrorCode) -> int:
    value = body.get(field, -1)
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlPlaneError(error, f"field {field!r} must be an integer")
    return value


def _configs_field(body: dict[str, Any]) -> dict[str, str | None]:
    configs = body.get("configs")
    if configs is None:
        return {}
    if not isinstance(configs, dict):
        raise ControlPlaneError(ErrorCode.INVALID_CONFIG,
                                "field 'configs' must be an object of config name to value")
    checked: dict[str, str | None] = {}
    for key, value in configs.items():
        if value is None or isinstance(value, str):  # None: the broker's default
            checked[key] = value
        elif isinstance(value, bool):  # before int: bool is an int subclass
            checked[key] = "true" if value else "false"
        elif isinstance(value, (int, float)):
            checked[key] = str(value)
        else:
            raise ControlPlaneError(ErrorCode.INVALID_CONFIG,
                                    f"config {key!r} must be a string, a number or a boolean")
    return checked

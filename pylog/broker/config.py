"""Broker settings: one immutable ``BrokerConfig``, from a Kafka-style properties file and flags.

Theory of operation: settings have Kafka's broker names (server.properties) wherever Kafka has
one, so an operator's muscle memory and config files carry over; the few pylog-only settings
are named in the same style (cluster.id, control.host/port, fsync, connection.*,
shutdown.timeout.ms). A value goes through three layers,
each overriding the one before: the properties file (``--config FILE``), ``--set key=value``
pairs, then the dedicated flags (``--port``, ``--fsync``, ...). Every layer is a mapping
``{kafka-name: string}``, so all three are parsed and checked by the same code: an unknown key
is an error naming the key (a typo must not silently leave a default in force), and a bad
value is an error naming the key and the value.

``BrokerConfig`` is checked once, when built (``__post_init__``); the rest of the broker trusts
it. ``log_config()`` gives the default per-topic ``LogConfig`` (Kafka's ``log.*`` broker
settings are the defaults of the topic settings without the prefix).

Fsync: Kafka's ``log.flush.interval.messages`` / ``log.flush.interval.ms`` set the default flush
policy of topics (a topic config may override it). ``--fsync os|always|N`` is stronger: a
broker-wide promise that overrides every topic (``LogManager(fsync=...)``); see
pylog.storage.config for what each policy means for durability.
"""
from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pylog.storage.config import (DAY_MS, DEFAULT_MESSAGE_MAX_BYTES, GIB, KAFKA_LONG_MAX,
                                  ConfigError, FsyncPolicy, LogConfig, parse_fsync_policy)

__all__ = ["BrokerConfig", "BrokerConfigError", "load_properties", "parse_properties",
           "new_cluster_id", "KNOWN_KEYS"]

_INT32_MAX = 2**31 - 1
_HOUR_MS = 3600 * 1000
_MINUTE_MS = 60 * 1000


#: fetch.send.mode values; DEFAULT_FETCH_SEND_MODE won the measurement in bench/README.md.
FETCH_SEND_MODES = ("copy", "sendfile")
DEFAULT_FETCH_SEND_MODE = "copy"
FETCH_SEND_MODE_ENV = "PYLOG_FETCH_SEND_MODE"


def _default_fetch_send_mode() -> str:
    return os.environ.get(FETCH_SEND_MODE_ENV) or DEFAULT_FETCH_SEND_MODE


class BrokerConfigError(ValueError):
    """A setting pylog does not know or cannot accept. ``key`` names it (None when the problem
    is the file itself)."""

    def __init__(self, key: str | None, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True)
class BrokerConfig:
    """Everything one broker process is configured with. Field docs give the properties key."""

    data_dir: str
    """log.dirs (or log.dir): the data directory (one directory)."""
    node_id: int = 1
    """node.id (or broker.id): this broker's id, 0 .. 2^31-1."""
    cluster_id: str | None = None
    """cluster.id: None = the id in the data directory's meta.properties, or a new one."""
    host: str = "127.0.0.1"
    """listeners=PLAINTEXT://HOST:PORT (or host.name): the Kafka listener's address."""
    port: int = 9092
    """listeners=PLAINTEXT://HOST:PORT (or port): 0 = any free port."""
    advertised_host: str | None = None
    """advertised.listeners (or advertised.host.name): what Metadata and FindCoordinator tell
    clients. None = ``host``, or 127.0.0.1 when ``host`` is a wildcard address."""
    advertised_port: int | None = None
    """advertised.listeners (or advertised.port): None = the port actually bound."""
    control_host: str = "127.0.0.1"
    """control.host: the HTTP control plane's address (pylog)."""
    control_port: int = 9644
    """control.port: the HTTP control plane's port, 0 = any free port (pylog)."""
    auto_create_topics_enable: bool = True
    """auto.create.topics.enable: Metadata and Produce create unknown topics."""
    num_partitions: int = 1
    """num.partitions: partitions of an auto-created topic (and of CreateTopics with -1)."""
    default_replication_factor: int = 1
    """default.replication.factor: replication factor of auto-created topics (and -1)."""
    min_insync_replicas: int = 1
    """min.insync.replicas: default ISR size acks=all requires."""
    producer_id_expiration_ms: int = DAY_MS
    """producer.id.expiration.ms: a partition forgets an idempotent producer idle this long
    (its next batch then needs sequence 0, else UNKNOWN_PRODUCER_ID)."""
    log_segment_bytes: int = GIB
    """log.segment.bytes."""
    log_segment_ms: int = 7 * DAY_MS
    """log.roll.ms (or log.roll.hours)."""
    log_retention_ms: int = 7 * DAY_MS
    """log.retention.ms (or .minutes, .hours); -1 = forever."""
    log_retention_bytes: int = -1
    """log.retention.bytes; -1 = no limit."""
    log_retention_check_interval_ms: int = 300_000
    """log.retention.check.interval.ms: how often retention runs."""
    log_flush_interval_messages: int | None = None
    """log.flush.interval.messages: default flush.messages of topics; None = the OS decides."""
    log_flush_interval_ms: int | None = None
    """log.flush.interval.ms: default flush.ms of topics; None = the OS decides."""
    fsync: FsyncPolicy | None = None
    """fsync ("os" | "always" | N ms): overrides every topic's flush settings (pylog; --fsync).
    None = use the log.flush.* settings and the topics' own."""
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
    """message.max.bytes: the largest record batch accepted (MESSAGE_TOO_LARGE above)."""
    socket_request_max_bytes: int = 104_857_600
    """socket.request.max.bytes: a larger request frame closes the connection."""
    group_initial_rebalance_delay_ms: int = 0
    """group.initial.rebalance.delay.ms: how long the first rebalance of an empty group waits
    for more members (0: none)."""
    group_min_session_timeout_ms: int = 1000
    """group.min.session.timeout.ms: shorter JoinGroup session timeouts are refused (26)."""
    group_max_session_timeout_ms: int = 300_000
    """group.max.session.timeout.ms: longer JoinGroup session timeouts are refused (26)."""
    offsets_topic_num_partitions: int = 16
    """offsets.topic.num.partitions: partitions of __consumer_offsets (fixed at creation)."""
    offsets_topic_replication_factor: int = 3
    """offsets.topic.replication.factor: of __consumer_offsets, capped at the broker count."""
    offsets_topic_segment_bytes: int = 104_857_600
    """offsets.topic.segment.bytes: segment size of __consumer_offsets."""
    offsets_commit_timeout_ms: int = 5000
    """offsets.commit.timeout.ms: how long a commit waits for the offsets partition's HW."""
    offset_metadata_max_bytes: int = 4096
    """offset.metadata.max.bytes: longest commit metadata accepted."""
    replica_lag_time_max_ms: int = 30_000
    """replica.lag.time.max.ms: a follower this far behind leaves the ISR."""
    checkpoint_interval_ms: int = 5_000
    """replica.high.watermark.checkpoint.interval.ms: how often offsets are checkpointed."""
    max_inflight_requests_per_connection: int = 64
    """connection.max.inflight.requests (pylog): requests of one connection being handled or
    waiting to be written; at the limit the broker stops reading that connection."""
    connection_write_buffer_bytes: int = 4 * 1024 * 1024
    """connection.write.buffer.bytes (pylog): unsent response bytes of one connection above
    which the broker stops reading it (the client is not reading its responses)."""
    shutdown_timeout_ms: int = 10_000
    """shutdown.timeout.ms (pylog): how long a clean stop lets in-flight requests finish."""
    fetch_send_mode: str = dataclasses.field(default_factory=lambda: _default_fetch_send_mode())
    """fetch.send.mode (pylog): how Fetch ships log bytes: ``copy`` (pread into bytes, written
    by the transport) or ``sendfile`` (os.sendfile from the segment file to the socket; a
    transport that cannot, e.g. TLS, falls back to copying). The default is the faster on
    loopback (bench/README.md "Fetch: copy vs sendfile"); the environment variable
    PYLOG_FETCH_SEND_MODE overrides the default (tests run the suite in both modes)."""

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise BrokerConfigError("log.dirs", "a data directory is required")
        _check_range("node.id", self.node_id, 0, _INT32_MAX)
        if self.cluster_id is not None:
            _check_cluster_id(self.cluster_id)
        _check_host("listeners", self.host)
        _check_range("listeners", self.port, 0, 65535)
        if self.advertised_host is not None:
            _check_host("advertised.listeners", self.advertised_host)
        if self.advertised_port is not None:
            _check_range("advertised.listeners", self.advertised_port, 1, 65535)
        _check_host("control.host", self.control_host)
        _check_range("control.port", self.control_port, 0, 65535)
        if not isinstance(self.auto_create_topics_enable, bool):
            raise BrokerConfigError("auto.create.topics.enable", "must be true or false")
        _check_range("num.partitions", self.num_partitions, 1, 1_000_000)
        _check_range("default.replication.factor", self.default_replication_factor, 1, 32767)
        _check_range("log.retention.check.interval.ms", self.log_retention_check_interval_ms,
                     1, KAFKA_LONG_MAX)
        _check_range("socket.request.max.bytes", self.socket_request_max_bytes, 1, _INT32_MAX)
        _check_range("group.initial.rebalance.delay.ms", self.group_initial_rebalance_delay_ms,
                     0, _INT32_MAX)
        _check_range("group.min.session.timeout.ms", self.group_min_session_timeout_ms, 0,
                     _INT32_MAX)
        _check_range("group.max.session.timeout.ms", self.group_max_session_timeout_ms, 0,
                     _INT32_MAX)
        _check_range("offsets.topic.num.partitions", self.offsets_topic_num_partitions, 1,
                     1_000_000)
        _check_range("offsets.topic.replication.factor", self.offsets_topic_replication_factor,
                     1, _INT32_MAX)
        _check_range("offsets.topic.segment.bytes", self.offsets_topic_segment_bytes, 61,
                     1 << 30)
        _check_range("offsets.commit.timeout.ms", self.offsets_commit_timeout_ms, 1,
                     _INT32_MAX)
        _check_range("offset.metadata.max.bytes", self.offset_metadata_max_bytes, 0,
                     _INT32_MAX)
        _check_range("replica.lag.time.max.ms", self.replica_lag_time_max_ms, 1, KAFKA_LONG_MAX)
        _check_range("replica.high.watermark.checkpoint.interval.ms",
                     self.checkpoint_interval_ms, 1, KAFKA_LONG_MAX)
        _check_range("connection.max.inflight.requests",
                     self.max_inflight_requests_per_connection, 1, 1_000_000)
        _check_range("connection.write.buffer.bytes", self.connection_write_buffer_bytes,
                     1024, _INT32_MAX)
        _check_range("shutdown.timeout.ms", self.shutdown_timeout_ms, 0, 24 * _HOUR_MS)
        if self.fetch_send_mode not in FETCH_SEND_MODES:
            raise BrokerConfigError("fetch.send.mode", f"{self.fetch_send_mode!r} is not one "
                                    f"of {', '.join(FETCH_SEND_MODES)}")
        if self.fsync is not None:
            try:
                object.__setattr__(self, "fsync", parse_fsync_policy(self.fsync))
            except ConfigError as exc:
                raise BrokerConfigError("fsync", _reason(exc)) from None
        # The topic-level settings are checked by LogConfig itself, under the broker names.
        self.log_config()

    # ---- derived ----------------------------------------------------------------------------

    def log_config(self) -> LogConfig:
        """The default config of a topic's log (topic configs override it per topic)."""
        try:
            return LogConfig(
                segment_bytes=self.log_segment_bytes, segment_ms=self.log_segment_ms,
                retention_ms=self.log_retention_ms, retention_bytes=self.log_retention_bytes,
                flush_messages=self.log_flush_interval_messages,
                flush_ms=self.log_flush_interval_ms, message_max_bytes=self.message_max_bytes,
                min_insync_replicas=self.min_insync_replicas,
                producer_id_expiration_ms=self.producer_id_expiration_ms)
        except ConfigError as exc:
            raise BrokerConfigError(_BROKER_NAME_OF_TOPIC_NAME.get(exc.name, exc.name),
                                    _reason(exc)) from None

    @property
    def advertised_hostname(self) -> str:
        """The host clients are told to connect to."""
        if self.advertised_host is not None:
            return self.advertised_host
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    def replace(self, **changes: Any) -> "BrokerConfig":
        return dataclasses.replace(self, **changes)

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], *,
                        base: "BrokerConfig | None" = None, data_dir: str | None = None
                        ) -> "BrokerConfig":
        """Apply ``{kafka-name: string}`` on top of ``base`` (or the defaults).

        ``data_dir`` stands in for log.dirs when there is no ``base``. Raises
        BrokerConfigError naming the first unknown key or bad value.
        """
        values: dict[str, Any] = {}
        for key, raw in properties.items():
            setter = _SETTERS.get(key)
            if setter is None:
                raise BrokerConfigError(key, "unknown setting" + _did_you_mean(key))
            if not isinstance(raw, str):
                raw = str(raw)
            try:
                setter(values, raw.strip())
            except (ValueError, ConfigError) as exc:
                if isinstance(exc, BrokerConfigError):
                    raise
                raise BrokerConfigError(key, f"bad value {raw!r}: {_reason(exc)}") from None
        if base is None:
            if "data_dir" not in values and data_dir is None:
                raise BrokerConfigError("log.dirs", "a data directory is required")
            values.setdefault("data_dir", data_dir)
            return cls(**values)
        return dataclasses.replace(base, **values)

    @classmethod
    def load(cls, *, config_file: str | None = None,
             overrides: Iterable[tuple[str, str]] | Mapping[str, str] = (),
             **flags: Any) -> "BrokerConfig":
        """File, then ``overrides`` (``--set``), then ``flags`` (field names; None = not
        given). Raises BrokerConfigError (unknown key, bad value, unreadable file)."""
        merged: dict[str, str] = {}
        if config_file is not None:
            merged.update(load_properties(config_file))
        items = overrides.items() if isinstance(overrides, Mapping) else overrides
        for key, value in items:
            merged[key] = value
        given = {name: value for name, value in flags.items() if value is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown BrokerConfig fields: {sorted(unknown)}")
        data_dir = given.get("data_dir")
        config = cls.from_properties(merged, data_dir=data_dir)
        if given:
            config = dataclasses.replace(config, **given)
        return config


def new_cluster_id() -> str:
    """A fresh cluster id in Kafka's form: a random UUID as 22 characters of URL-safe base64."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


# ---- the properties format ------------------------------------------------------------------


def load_properties(path: str) -> dict[str, str]:
    """Read a Java-style properties file. BrokerConfigError if unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise BrokerConfigError(None, f"cannot read config file {path}: "
                                f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BrokerConfigError(None, f"config file {path} is not UTF-8 text") from None
    return parse_properties(text, source=path)


def parse_properties(text: str, *, source: str = "<properties>") -> dict[str, str]:
    """``key=value`` / ``key: value`` / ``key value`` lines; ``#`` and ``!`` comments; a line
    ending in an odd number of backslashes continues on the next. Keys are case-sensitive, as
    in Kafka. A key given twice is an error (one of the two would silently lose)."""
    result: dict[str, str] = {}
    logical: list[str] = []
    first_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip() if not logical else line.lstrip()
        if not logical:
            if not stripped or stripped[0] in "#!":
                continue
            first_line = number
        trailing = len(stripped) - len(stripped.rstrip("\\"))
        if trailing % 2 == 1:
            logical.append(stripped[:-1])
            continue
        logical.append(stripped)
        _add_property(result, "".join(logical), source, first_line)
        logical = []
    if logical:
        _add_property(result, "".join(logical), source, first_line)
    return result


def _add_property(result: dict[str, str], line: str, source: str, number: int) -> None:
    separator_at = len(line)
    for index, char in enumerate(line):
        if char in "=:" or char.isspace():
            separator_at = index
            break
    key = line[:separator_at].strip()
    rest = line[separator_at:].lstrip()
    if rest[:1] in ("=", ":"):
        rest = rest[1:]
    value = rest.strip()
    if not key:
        raise BrokerConfigError(None, f"{source}:{number}: no key in {line!r}")
    if key in result:
        raise BrokerConfigError(key, f"given twice in {source} (line {number})")
    result[key] = value


# ---- keys -----------------------------------------------------------------------------------

Setter = Callable[[dict[str, Any], str], None]


def _int(raw: str) -> int:
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError("expected an integer")
    return int(text)


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError("expected true or false")


def _flush_value(raw: str) -> int | None:
    value = _int(raw)
    return None if value == KAFKA_LONG_MAX else value


def _field(name: str, parse: Callable[[str], Any]) -> Setter:
    def set_field(values: dict[str, Any], raw: str) -> None:
        values[name] = parse(raw)
    return set_field


def _scaled(name: str, factor: int) -> Setter:
    def set_scaled(values: dict[str, Any], raw: str) -> None:
        value = _int(raw)
        values[name] = value if value < 0 else value * factor
    return set_scaled


def _listener(host_field: str, port_field: str) -> Setter:
    """``PLAINTEXT://HOST:PORT`` (one listener; ``[v6]`` brackets allowed)."""
    def set_listener(values: dict[str, Any], raw: str) -> None:
        listeners = [item.strip() for item in raw.split(",") if item.strip()]
        if len(listeners) != 1:
            raise ValueError("exactly one listener is supported")
        scheme, sep, address = listeners[0].partition("://")
        if not sep or scheme.upper() != "PLAINTEXT":
            raise ValueError("expected PLAINTEXT://HOST:PORT (TLS and SASL come later)")
        host, colon, port = address.rpartition(":")
        if not colon:
            raise ValueError("expected PLAINTEXT://HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        values[host_field] = host
        values[port_field] = _int(port)
    return set_listener


def _fsync(values: dict[str, Any], raw: str) -> None:
    values["fsync"] = parse_fsync_policy(raw)


_SETTERS: dict[str, Setter] = {
    "log.dirs": _field("data_dir", str),
    "log.dir": _field("data_dir", str),
    "node.id": _field("node_id", _int),
    "broker.id": _field("node_id", _int),
    "cluster.id": _field("cluster_id", str),
    "listeners": _listener("host", "port"),
    "host.name": _field("host", str),
    "port": _field("port", _int),
    "advertised.listeners": _listener("advertised_host", "advertised_port"),
    "advertised.host.name": _field("advertised_host", str),
    "advertised.port": _field("advertised_port", _int),
    "control.host": _field("control_host", str),
    "control.port": _field("control_port", _int),
    "auto.create.topics.enable": _field("auto_create_topics_enable", _bool),
    "num.partitions": _field("num_partitions", _int),
    "default.replication.factor": _field("default_replication_factor", _int),
    "min.insync.replicas": _field("min_insync_replicas", _int),
    "producer.id.expiration.ms": _field("producer_id_expiration_ms", _int),
    "log.segment.bytes": _field("log_segment_bytes", _int),
    "log.roll.ms": _field("log_segment_ms", _int),
    "log.roll.hours": _scaled("log_segment_ms", _HOUR_MS),
    "log.retention.ms": _field("log_retention_ms", _int),
    "log.retention.minutes": _scaled("log_retention_ms", _MINUTE_MS),
    "log.retention.hours": _scaled("log_retention_ms", _HOUR_MS),
    "log.retention.bytes": _field("log_retention_bytes", _int),
    "log.retention.check.interval.ms": _field("log_retention_check_interval_ms", _int),
    "log.flush.interval.messages": _field("log_flush_interval_messages", _flush_value),
    "log.flush.interval.ms": _field("log_flush_interval_ms", _flush_value),
    "fsync": _fsync,
    "message.max.bytes": _field("message_max_bytes", _int),
    "socket.request.max.bytes": _field("socket_request_max_bytes", _int),
    "group.initial.rebalance.delay.ms": _field("group_initial_rebalance_delay_ms", _int),
    "group.min.session.timeout.ms": _field("group_min_session_timeout_ms", _int),
    "group.max.session.timeout.ms": _field("group_max_session_timeout_ms", _int),
    "offsets.topic.num.partitions": _field("offsets_topic_num_partitions", _int),
    "offsets.topic.replication.factor": _field("offsets_topic_replication_factor", _int),
    "offsets.topic.segment.bytes": _field("offsets_topic_segment_bytes", _int),
    "offsets.commit.timeout.ms": _field("offsets_commit_timeout_ms", _int),
    "offset.metadata.max.bytes": _field("offset_metadata_max_bytes", _int),
    "replica.lag.time.max.ms": _field("replica_lag_time_max_ms", _int),
    "replica.high.watermark.checkpoint.interval.ms": _field("checkpoint_interval_ms", _int),
    "connection.max.inflight.requests": _field("max_inflight_requests_per_connection", _int),
    "connection.write.buffer.bytes": _field("connection_write_buffer_bytes", _int),
    "shutdown.timeout.ms": _field("shutdown_timeout_ms", _int),
    "fetch.send.mode": _field("fetch_send_mode", str),
}

#: Every key a properties file or ``--set`` may use.
KNOWN_KEYS = frozenset(_SETTERS)

_BROKER_NAME_OF_TOPIC_NAME = {
    "segment.bytes": "log.segment.bytes", "segment.ms": "log.roll.ms",
    "retention.ms": "log.retention.ms", "retention.bytes": "log.retention.bytes",
    "flush.messages": "log.flush.interval.messages", "flush.ms": "log.flush.interval.ms",
}


def _reason(exc: Exception) -> str:
    """The message of ``exc`` without the "name: " prefix a ConfigError puts in front."""
    if isinstance(exc, ConfigError):
        return str(exc).split(": ", 1)[-1]
    return str(exc)


def _did_you_mean(key: str) -> str:
    import difflib
    close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_range(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BrokerConfigError(key, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise BrokerConfigError(key, f"{value} is outside {low}..{high}")


def _check_host(key: str, host: Any) -> None:
    if not isinstance(host, str) or any(c.isspace() for c in host) or "/" in host:
        raise BrokerConfigError(key, f"{host!r} is not a host name or address")


def _check_cluster_id(cluster_id: Any) -> None:
    if (not isinstance(cluster_id, str) or not cluster_id or not cluster_id.isprintable()
            or cluster_id != cluster_id.strip() or "=" in cluster_id):
        raise BrokerConfigError("cluster.id", f"{cluster_id!r} must be a non-empty printable "
                                "string without '=' and surrounding whitespace")

"""Per-partition log settings, under Kafka's topic-config names.

Theory of operation: ``LogConfig`` is an immutable value checked once, when it is built; every
other storage module trusts it. Topic configs travel (and are persisted with the topic's
metadata, DESIGN §10) as a ``{kafka-name: string}`` mapping, so ``from_kafka`` parses that
mapping (strings or ints, as Kafka's admin clients send them) and ``to_kafka`` gives it back.
Kafka writes "never" for the two flush settings as Long.MAX_VALUE; here that is ``None``
("leave it to the OS"), and ``to_kafka`` writes Long.MAX_VALUE back so Kafka tools agree.

The fsync policy is a convenience over flush.messages / flush.ms:
  "os"      flush.messages = flush.ms = None: the OS writes back; durability comes from
            replication, and a process crash still loses nothing acknowledged (page cache);
  "always"  flush.messages = 1: every append is fsynced before it is acknowledged;
  <int> ms  flush.ms = that interval: a background fsync at least that often.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "ConfigError", "LogConfig", "FsyncPolicy", "parse_fsync_policy", "KAFKA_LONG_MAX",
    "GIB", "MIB", "DAY_MS",
]

KAFKA_LONG_MAX = 2**63 - 1
KAFKA_INT_MAX = 2**31 - 1
MIB = 1024 * 1024
GIB = 1024 * MIB
DAY_MS = 24 * 3600 * 1000

# The smallest batch a segment can hold is one RecordBatch v2 header (61 bytes); a segment
# smaller than that could never take a batch without rolling.
MIN_SEGMENT_BYTES = 61
# One entry of the larger index (the 12-byte time index) must fit.
MIN_SEGMENT_INDEX_BYTES = 12
# A batch is at least its 61-byte header; Kafka's default is 1 MiB plus 12 bytes of overhead.
MIN_MESSAGE_MAX_BYTES = 61
DEFAULT_MESSAGE_MAX_BYTES = 1048588

# cleanup.policy is a comma-separated list of these (Kafka accepts "compact", "delete",
# "compact,delete" and "delete,compact", spaces around the commas allowed).
SUPPORTED_CLEANUP_POLICIES = ("delete", "compact")

FsyncPolicy = str | int  # "os" | "always" | interval in milliseconds (> 0)


class ConfigError(ValueError):
    """A config name pylog does not know, or a value outside its range (Kafka's
    INVALID_CONFIG, 40)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name


@dataclass(frozen=True)
class LogConfig:
    """Settings of one partition's log. Field docs give Kafka's name and the range allowed."""

    segment_bytes: int = GIB
    """segment.bytes: roll the active segment before it passes this size. 61 .. 1 GiB."""
    segment_ms: int = 7 * DAY_MS
    """segment.ms: roll a non-empty active segment this long after it was opened. >= 1."""
    segment_index_bytes: int = 10 * MIB
    """segment.index.bytes: preallocated size of each index file. 12 .. 2^31-1."""
    index_interval_bytes: int = 4096
    """index.interval.bytes: bytes between two offset-index entries. 0 .. 2^31-1."""
    retention_ms: int = 7 * DAY_MS
    """retention.ms: delete segments whose newest timestamp is older. -1 = forever."""
    retention_bytes: int = -1
    """retention.bytes: delete oldest segments while the log is larger. -1 = no limit."""
    flush_messages: int | None = None
    """flush.messages: fsync after this many records. None = leave it to the OS."""
    flush_ms: int | None = None
    """flush.ms: fsync at least this often (milliseconds, >= 1). None = leave it to the OS."""
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
    """message.max.bytes (Kafka's topic-level spelling: max.message.bytes): largest batch."""
    cleanup_policy: str = "delete"
    """cleanup.policy: "delete" (retention by time and size), "compact" (the log cleaner
    keeps the latest record per key, storage/cleaner.py) or both, comma-separated. Stored
    normalised: no spaces, in the order given."""
    delete_retention_ms: int = DAY_MS
    """delete.retention.ms: a tombstone (null value) in a compacted log survives at least
    this long after the cleaner first passed it. 0 .. 2^63-1."""
    min_cleanable_dirty_ratio: float = 0.5
    """min.cleanable.dirty.ratio: clean a compacted log once dirty bytes / (clean + dirty
    bytes) exceeds this. 0 .. 1."""
    min_compaction_lag_ms: int = 0
    """min.compaction.lag.ms: a record stays uncompacted at least this long (by its
    segment's newest timestamp). 0 .. 2^63-1."""
    max_compaction_lag_ms: int = KAFKA_LONG_MAX
    """max.compaction.lag.ms: a dirty record older than this makes its log cleanable
    whatever its dirty ratio. 1 .. 2^63-1, >= min.compaction.lag.ms."""
    min_insync_replicas: int = 1
    """min.insync.replicas: ISR size that acks=all requires. >= 1."""
    producer_id_expiration_ms: int = DAY_MS
    """producer.id.expiration.ms: idle time after which a partition forgets an idempotent
    producer (pylog.storage.producer_state). A broker setting in Kafka, not a topic config:
    it comes from the broker's defaults and is neither parsed by ``from_kafka`` nor listed by
    ``to_kafka``. >= 1."""

    def __post_init__(self) -> None:
        _int_range("segment.bytes", self.segment_bytes, MIN_SEGMENT_BYTES, GIB)
        _int_range("segment.ms", self.segment_ms, 1, KAFKA_LONG_MAX)
        _int_range("segment.index.bytes", self.segment_index_bytes, MIN_SEGMENT_INDEX_BYTES,
                   KAFKA_INT_MAX)
        _int_range("index.interval.bytes", self.index_interval_bytes, 0, KAFKA_INT_MAX)
        _int_range("retention.ms", self.retention_ms, -1, KAFKA_LONG_MAX)
        _int_range("retention.bytes", self.retention_bytes, -1, KAFKA_LONG_MAX)
        if self.flush_messages is not None:
            _int_range("flush.messages", self.flush_messages, 1, KAFKA_LONG_MAX - 1)
        if self.flush_ms is not None:
            _int_range("flush.ms", self.flush_ms, 1, KAFKA_LONG_MAX - 1)
        _int_range("message.max.bytes", self.message_max_bytes, MIN_MESSAGE_MAX_BYTES,
                   KAFKA_INT_MAX)
        object.__setattr__(self, "cleanup_policy", _cleanup_policy(self.cleanup_policy))
        _int_range("delete.retention.ms", self.delete_retention_ms, 0, KAFKA_LONG_MAX)
        ratio = self.min_cleanable_dirty_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) \
                or not 0.0 <= ratio <= 1.0:   # also refuses NaN
            raise ConfigError("min.cleanable.dirty.ratio",
                              f"{ratio!r} is not a number in 0..1")
        object.__setattr__(self, "min_cleanable_dirty_ratio", float(ratio))
        _int_range("min.compaction.lag.ms", self.min_compaction_lag_ms, 0, KAFKA_LONG_MAX)
        _int_range("max.compaction.lag.ms", self.max_compaction_lag_ms, 1, KAFKA_LONG_MAX)
        if self.min_compaction_lag_ms > self.max_compaction_lag_ms:
            raise ConfigError("min.compaction.lag.ms",
                              f"{self.min_compaction_lag_ms} is greater than "
                              f"max.compaction.lag.ms={self.max_compaction_lag_ms}")
        _int_range("min.insync.replicas", self.min_insync_replicas, 1, KAFKA_INT_MAX)
        _int_range("producer.id.expiration.ms", self.producer_id_expiration_ms, 1,
                   KAFKA_LONG_MAX)

    @property
    def cleanup_compact(self) -> bool:
        """cleanup.policy contains "compact": the log cleaner works on this log, and an
        append of a record without a key is refused (INVALID_RECORD)."""
        return "compact" in self.cleanup_policy.split(",")

    @property
    def cleanup_delete(self) -> bool:
        """cleanup.policy contains "delete": retention.ms and retention.bytes apply."""
        return "delete" in self.cleanup_policy.split(",")

    # ---- Kafka names ------------------------------------------------------------------------

    @classmethod
    def from_kafka(cls, mapping: Mapping[str, Any], *, base: "LogConfig | None" = None,
                   ignore_unknown: bool = False) -> "LogConfig":
        """Build from ``{kafka-name: value}``; names absent keep ``base``'s values (defaults).

        Values may be ints or decimal strings. An unknown name raises ConfigError unless
        ``ignore_unknown`` (for configs pylog stores but does not act on).
        """
        values: dict[str, Any] = {}
        for name, raw in mapping.items():
            field_name = _FIELD_OF.get(name)
            if field_name is None:
                if ignore_unknown:
                    continue
                raise ConfigError(name, "unknown config")
            value = _parse(name, raw)
            if field_name in values and values[field_name] != value:
                raise ConfigError(name, "given twice (as message.max.bytes and "
                                  "max.message.bytes) with different values")
            values[field_name] = value
        return dataclasses.replace(base if base is not None else cls(), **values)

    def to_kafka(self) -> dict[str, str]:
        """``{kafka-name: string}`` for every setting, as Kafka's DescribeConfigs shows them."""
        out = {}
        for name, field_name in _KAFKA_NAMES.items():
            value = getattr(self, field_name)
            if value is None:
                value = KAFKA_LONG_MAX
            out[name] = str(value)
        return out

    def with_overrides(self, mapping: Mapping[str, Any]) -> "LogConfig":
        """This config with the Kafka-named overrides in ``mapping`` applied."""
        return LogConfig.from_kafka(mapping, base=self)

    # ---- fsync policy -----------------------------------------------------------------------

    def with_fsync(self, policy: FsyncPolicy) -> "LogConfig":
        """This config with flush.messages / flush.ms set from an fsync policy (module doc)."""
        policy = parse_fsync_policy(policy)
        if policy == "os":
            return dataclasses.replace(self, flush_messages=None, flush_ms=None)
        if policy == "always":
            return dataclasses.replace(self, flush_messages=1, flush_ms=None)
        return dataclasses.replace(self, flush_messages=None, flush_ms=policy)

    @property
    def fsync_policy(self) -> FsyncPolicy:
        """The fsync policy these flush settings amount to ("always" wins over an interval)."""
        if self.flush_messages == 1:
            return "always"
        if self.flush_ms is not None:
            return self.flush_ms
        return "os"


def parse_fsync_policy(policy: FsyncPolicy) -> FsyncPolicy:
    """Normalise "os", "always", an int of milliseconds or "<n>"/"<n>ms" to "os"|"always"|int."""
    if isinstance(policy, bool):
        raise ConfigError("fsync", f"{policy!r} is not an fsync policy")
    if isinstance(policy, int):
        ms = policy
    elif isinstance(policy, str):
        text = policy.strip().lower()
        if text in ("os", "always"):
            return text
        if text.endswith("ms"):
            text = text[:-2]
        if not text.isascii() or not text.isdigit():
            raise ConfigError("fsync", f"{policy!r} is not 'os', 'always' or an interval in ms")
        ms = int(text)
    else:
        raise ConfigError("fsync", f"{policy!r} is not 'os', 'always' or an interval in ms")
    if ms <= 0:
        raise ConfigError("fsync", f"interval must be positive, got {ms}")
    return ms


# ---- internals ------------------------------------------------------------------------------

_KAFKA_NAMES = {
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "segment.index.bytes": "segment_index_bytes",
    "index.interval.bytes": "index_interval_bytes",
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "flush.messages": "flush_messages",
    "flush.ms": "flush_ms",
    "message.max.bytes": "message_max_bytes",
    "cleanup.policy": "cleanup_policy",
    "delete.retention.ms": "delete_retention_ms",
    "min.cleanable.dirty.ratio": "min_cleanable_dirty_ratio",
    "min.compaction.lag.ms": "min_compaction_lag_ms",
    "max.compaction.lag.ms": "max_compaction_lag_ms",
    "min.insync.replicas": "min_insync_replicas",
}
# Kafka's topic-level spelling of message.max.bytes is max.message.bytes; accept both.
_FIELD_OF = {**_KAFKA_NAMES, "max.message.bytes": "message_max_bytes"}
_NULLABLE = {"flush.messages", "flush.ms"}
_STRINGS = {"cleanup.policy"}
_FLOATS = {"min.cleanable.dirty.ratio"}


def _parse(name: str, raw: Any) -> Any:
    if name in _STRINGS:
        if not isinstance(raw, str):
            raise ConfigError(name, f"expected a string, got {raw!r}")
        return raw.strip()
    if name in _FLOATS:
        return _parse_float(name, raw)
    if isinstance(raw, bool):
        raise ConfigError(name, f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not digits or not digits.isascii() or not digits.isdigit():
            raise ConfigError(name, f"expected an integer, got {raw!r}")
        value = int(text)
    else:
        raise ConfigError(name, f"expected an integer, got {raw!r}")
    if name in _NULLABLE and value == KAFKA_LONG_MAX:
        return None
    return value


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"{value} is outside {low}..{high}")


def _parse_float(name: str, raw: Any) -> float:
    """A finite number from an int, a float or a decimal string ("0.5", "1", "5e-1")."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(name, f"expected a number, got {raw!r}")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except ValueError:
        raise ConfigError(name, f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(name, f"expected a finite number, got {raw!r}")
    return value


def _cleanup_policy(raw: Any) -> str:
    """cleanup.policy normalised ("compact, delete" -> "compact,delete"); ConfigError for an
    empty list, an unknown policy or one named twice."""
    if not isinstance(raw, str):
        raise ConfigError("cleanup.policy", f"expected a string, got {raw!r}")
    items = [item.strip() for item in raw.split(",")]
    for item in items:
        if item not in SUPPORTED_CLEANUP_POLICIES:
            raise ConfigError("cleanup.policy",
                              f"{raw!r}: {item!r} is not a cleanup policy (expected "
                              "\"delete\", \"compact\" or both, comma-separated)")
    if len(set(items)) != len(items):
        raise ConfigError("cleanup.policy", f"{raw!r} names a policy twice")
    return ",".join(items)

"""Names that become paths: topic names and partition directory names.

Theory of operation: a topic name ends up as a directory name under the data directory, so it
is checked once, where it enters (the broker's request handlers and the log manager both call
``validate_topic_name``). Kafka's rule -- ``[a-zA-Z0-9._-]{1,249}`` and neither ``.`` nor
``..`` -- already excludes every path separator, NUL and the two relative-path names, so a valid
name can never reach outside the data directory.
"""
from __future__ import annotations

import re

__all__ = [
    "InvalidTopicError", "MAX_TOPIC_NAME_LENGTH", "validate_topic_name", "validate_partition",
    "partition_dir_name", "parse_partition_dir_name",
]

MAX_TOPIC_NAME_LENGTH = 249
MAX_PARTITION = 2**31 - 1

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class InvalidTopicError(ValueError):
    """A topic name (or partition number) that Kafka would refuse (INVALID_TOPIC_EXCEPTION, 17)."""


def validate_topic_name(name: str) -> str:
    """Return ``name`` unchanged if it is a legal topic name, else raise InvalidTopicError."""
    if not isinstance(name, str):
        raise InvalidTopicError(f"topic name must be a str, not {type(name).__name__}")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name cannot be {name!r}")
    if _TOPIC_NAME.fullmatch(name) is None:
        if not name:
            raise InvalidTopicError("topic name is empty")
        if len(name) > MAX_TOPIC_NAME_LENGTH:
            raise InvalidTopicError(
                f"topic name is {len(name)} characters long, the limit is {MAX_TOPIC_NAME_LENGTH}")
        raise InvalidTopicError(
            f"topic name {name!r} contains characters other than ASCII letters, digits, '.', '_'"
            " and '-'")
    return name


def validate_partition(partition: int) -> int:
    """Return ``partition`` if it is a legal partition number (0 .. 2^31-1)."""
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise InvalidTopicError(f"partition must be an int, not {type(partition).__name__}")
    if not 0 <= partition <= MAX_PARTITION:
        raise InvalidTopicError(f"partition {partition} is outside 0..{MAX_PARTITION}")
    return partition


def partition_dir_name(topic: str, partition: int) -> str:
    """``<topic>-<partition>``, the directory of one partition's log (both validated)."""
    return f"{validate_topic_name(topic)}-{validate_partition(partition)}"


def parse_partition_dir_name(name: str) -> tuple[str, int] | None:
    """The (topic, partition) a directory name stands for, or None if it is not one.

    The partition is after the last '-' (topic names may contain '-'); it must be plain
    decimal digits without a leading zero, so exactly one directory name maps to each pair.
    """
    topic, sep, digits = name.rpartition("-")
    if not sep or not digits.isascii() or not digits.isdigit():
        return None
    if len(digits) > 1 and digits[0] == "0":
        return None
    partition = int(digits)
    try:
        validate_topic_name(topic)
        validate_partition(partition)
    except InvalidTopicError:
        return None
    return topic, partition

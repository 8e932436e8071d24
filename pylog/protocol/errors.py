"""Errors of the Kafka wire protocol, in their two kinds.

Remote errors travel in responses: ``ErrorCode`` is the Kafka error code a handler puts in a
response field (Kafka's own names and numbers, and whether Kafka's clients retry on it).

Local errors are Python exceptions raised by this package (h11's split): ``ProtocolError`` and
its subclasses say that bytes could not be turned into a request or a response. They carry
enough to act on: a ``FrameError`` means the byte stream has lost its framing, so the
connection must be closed; the request errors carry the api key, version and correlation id
(when the bytes got that far) so the broker can log them and answer ApiVersions' fallback.
"""
from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """The Kafka error codes pylog sends or acts on, with Kafka's names and numbers.

    ``retriable`` is Kafka's classification (the exception extends RetriableException): a
    client may retry the same request, usually after refreshing metadata. Checked against
    kio's table (``kio.schema.errors.ErrorCode``, generated from Kafka) by the tests; kio
    names the same codes in lower case. Instances are accepted wherever kio expects an error
    code, because kio's writer only reads ``.value``.
    """

    retriable: bool

    def __new__(cls, code: int, retriable: bool) -> ErrorCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.retriable = retriable
        return member

    UNKNOWN_SERVER_ERROR = -1, False
    NONE = 0, False
    OFFSET_OUT_OF_RANGE = 1, False
    CORRUPT_MESSAGE = 2, True
    UNKNOWN_TOPIC_OR_PARTITION = 3, True
    INVALID_FETCH_SIZE = 4, False
    LEADER_NOT_AVAILABLE = 5, True
    NOT_LEADER_OR_FOLLOWER = 6, True
    REQUEST_TIMED_OUT = 7, True
    BROKER_NOT_AVAILABLE = 8, False
    REPLICA_NOT_AVAILABLE = 9, True
    MESSAGE_TOO_LARGE = 10, False
    OFFSET_METADATA_TOO_LARGE = 12, False
    NETWORK_EXCEPTION = 13, True
    COORDINATOR_LOAD_IN_PROGRESS = 14, True
    COORDINATOR_NOT_AVAILABLE = 15, True
    NOT_COORDINATOR = 16, True
    INVALID_TOPIC_EXCEPTION = 17, False
    RECORD_LIST_TOO_LARGE = 18, False
    NOT_ENOUGH_REPLICAS = 19, True
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20, True
    INVALID_REQUIRED_ACKS = 21, False
    ILLEGAL_GENERATION = 22, False
    INCONSISTENT_GROUP_PROTOCOL = 23, False
    INVALID_GROUP_ID = 24, False
    UNKNOWN_MEMBER_ID = 25, False
    INVALID_SESSION_TIMEOUT = 26, False
    REBALANCE_IN_PROGRESS = 27, False
    INVALID_COMMIT_OFFSET_SIZE = 28, False
    INVALID_TIMESTAMP = 32, False
    UNSUPPORTED_VERSION = 35, False
    TOPIC_ALREADY_EXISTS = 36, False
    INVALID_PARTITIONS = 37, False
    INVALID_REPLICATION_FACTOR = 38, False
    INVALID_REPLICA_ASSIGNMENT = 39, False
    INVALID_CONFIG = 40, False
    NOT_CONTROLLER = 41, True
    INVALID_REQUEST = 42, False
    POLICY_VIOLATION = 44, False
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45, False
    DUPLICATE_SEQUENCE_NUMBER = 46, False
    INVALID_PRODUCER_EPOCH = 47, False
    INVALID_TXN_STATE = 48, False
    INVALID_PRODUCER_ID_MAPPING = 49, False
    INVALID_TRANSACTION_TIMEOUT = 50, False
    KAFKA_STORAGE_ERROR = 56, True
    UNKNOWN_PRODUCER_ID = 59, False
    NON_EMPTY_GROUP = 68, False
    GROUP_ID_NOT_FOUND = 69, False
    FETCH_SESSION_ID_NOT_FOUND = 70, True
    INVALID_FETCH_SESSION_EPOCH = 71, True
    FENCED_LEADER_EPOCH = 74, True
    UNKNOWN_LEADER_EPOCH = 75, True
    UNSUPPORTED_COMPRESSION_TYPE = 76, False
    OFFSET_NOT_AVAILABLE = 78, True
    MEMBER_ID_REQUIRED = 79, False
    PREFERRED_LEADER_NOT_AVAILABLE = 80, True
    GROUP_MAX_SIZE_REACHED = 81, False
    FENCED_INSTANCE_ID = 82, False
    ELIGIBLE_LEADERS_NOT_AVAILABLE = 83, True
    ELECTION_NOT_NEEDED = 84, True
    INVALID_RECORD = 87, False
    UNSTABLE_OFFSET_COMMIT = 88, True


# ---- local errors ---------------------------------------------------------------------------


class ProtocolError(Exception):
    """Bytes that cannot be turned into a Kafka request or response, or the reverse."""


class FrameError(ProtocolError):
    """The stream's size prefix is unusable: framing is lost, close the connection."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


class FrameTooLargeError(FrameError):
    """A size prefix above the configured maximum (``socket.request.max.bytes``)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes", size)
        self.limit = limit


class InvalidFrameError(FrameError):
    """A negative size prefix."""

    def __init__(self, size: int):
        super().__init__(f"invalid frame size {size}", size)


class RequestError(ProtocolError):
    """A frame that is not a request this side can serve.

    The fields are what was read before the failure, ``None`` when the frame was too short
    to hold them.
    """

    def __init__(self, message: str, *, api_key: int | None = None,
                 api_version: int | None = None, correlation_id: int | None = None):
        super().__init__(message)
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


class UnknownApiKeyError(RequestError):
    """An api key this side does not serve. Kafka closes the connection."""


class UnsupportedVersionError(RequestError):
    """A served api key at a version outside its range.

    Kafka closes the connection, except for ApiVersions, which gets the v0-layout answer with
    error 35 (``codec.api_versions_fallback_response``) so that the client downgrades.
    """


class MalformedRequestError(RequestError):
    """A request whose header or body does not parse, or that has bytes left over."""


class MalformedResponseError(ProtocolError):
    """A response (client side) whose header or body does not parse."""


class EncodeError(ProtocolError):
    """A message this side built cannot be encoded (a local bug: wrong type, value out of range,
    body of another api or version than the header says)."""

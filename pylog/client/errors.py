"""The errors pylog's client raises, in two kinds (h11's split of local and remote).

``LocalError``: something on this side or between the two sides went wrong — the broker cannot
be reached, the connection dropped, a request timed out, a response did not parse, no version
of an api is supported by both sides, the client was closed. Nothing was said by the broker.

``RemoteError``: the broker answered with a Kafka error code. ``error_code`` is the
``pylog.protocol.ErrorCode`` and ``retriable`` is Kafka's classification of that code; a few
codes a caller commonly handles have their own subclass (``remote_error`` picks it).

Every error is a ``KafkaError`` carrying ``retriable``: the producer and the consumer retry
exactly the retriable ones (after refreshing metadata), and surface the others.
"""
from __future__ import annotations

from pylog.protocol import ErrorCode


class KafkaError(Exception):
    """Base of every error pylog's client raises. ``retriable``: may succeed if tried again."""

    retriable: bool = False


# ---- local ----------------------------------------------------------------------------------


class LocalError(KafkaError):
    """A failure on this side or on the way to the broker; the broker said nothing."""


class KafkaConnectionError(LocalError):
    """A broker cannot be reached, or the connection to it was lost. ``host``/``port`` name it
    (None when no single broker is meant, e.g. no bootstrap server answered)."""

    retriable = True

    def __init__(self, message: str, host: str | None = None, port: int | None = None):
        super().__init__(message)
        self.host = host
        self.port = port


class KafkaTimeoutError(LocalError):
    """A request got no answer in time (the connection it was sent on is closed), or an
    operation (metadata for a topic, a flush) did not complete in time."""

    retriable = True


class ProtocolViolationError(LocalError):
    """The broker sent bytes that are not the expected response (does not parse, wrong
    correlation id, frame too large). The connection is closed."""

    retriable = True


class UnsupportedVersionError(LocalError):
    """The broker supports no version of an api that this client can speak."""


class ClientClosedError(LocalError):
    """The producer, consumer, admin or connection was closed before the operation ended."""


class CorruptRecordError(LocalError):
    """A fetched batch failed its CRC-32C or does not decode (``check_crcs``)."""


class RecordTooLargeError(LocalError):
    """A record alone is larger than the producer's ``max_request_size``."""


class NoOffsetForPartitionError(LocalError):
    """The consumer's position is out of range (or unknown) and ``auto_offset_reset="error"``."""

    def __init__(self, message: str, topic: str, partition: int):
        super().__init__(message)
        self.topic = topic
        self.partition = partition


# ---- remote ---------------------------------------------------------------------------------


class RemoteError(KafkaError):
    """The broker answered with a Kafka error code (``error_code``, a ``ErrorCode`` when the
    code is one pylog knows, else the plain int)."""

    def __init__(self, error_code: int, message: str | None = None):
        try:
            code: int = ErrorCode(error_code)
        except ValueError:
            code = int(error_code)
        self.error_code = code
        name = code.name if isinstance(code, ErrorCode) else f"error code {code}"
        super().__init__(f"{name}: {message}" if message else name)
        self.error_message = message

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return isinstance(self.error_code, ErrorCode) and self.error_code.retriable


class UnknownTopicOrPartitionError(RemoteError):
    pass


class LeaderNotAvailableError(RemoteError):
    pass


class NotLeaderOrFollowerError(RemoteError):
    pass


class OffsetOutOfRangeError(RemoteError):
    pass


class RequestTimedOutError(RemoteError):
    """The broker's own timeout (e.g. acks=all not replicated in time)."""


class NotEnoughReplicasError(RemoteError):
    pass


class CorruptMessageError(RemoteError):
    pass


class MessageTooLargeError(RemoteError):
    pass


class InvalidTopicError(RemoteError):
    pass


class TopicAlreadyExistsError(RemoteError):
    pass


class InvalidPartitionsError(RemoteError):
    pass


class InvalidReplicationFactorError(RemoteError):
    pass


class InvalidConfigError(RemoteError):
    pass


class NotControllerError(RemoteError):
    pass


# consumer groups

class CoordinatorLoadInProgressError(RemoteError):
    pass


class CoordinatorNotAvailableError(RemoteError):
    pass


class NotCoordinatorError(RemoteError):
    pass


class IllegalGenerationError(RemoteError):
    pass


class UnknownMemberIdError(RemoteError):
    pass


class RebalanceInProgressError(RemoteError):
    """The group is rebalancing: the member must re-join (its next ``getmany`` does)."""


class InconsistentGroupProtocolError(RemoteError):
    pass


class InvalidSessionTimeoutError(RemoteError):
    pass


class GroupIdNotFoundError(RemoteError):
    pass


class NonEmptyGroupError(RemoteError):
    pass


class CommitFailedError(KafkaError):
    """A commit that cannot succeed because this member is not in the group's current
    generation (the coordinator answered ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID, or the
    consumer has not joined): the partitions may belong to another member now. The consumer
    re-joins on its next ``getmany``. ``error_code`` is the coordinator's code, if any."""

    def __init__(self, message: str, error_code: int | None = None):
        super().__init__(message)
        self.error_code = error_code


# idempotent producers

class OutOfOrderSequenceError(RemoteError):
    """The broker expected another sequence number: records between the last acknowledged
    batch and this one are missing (or the broker lost this producer's state)."""


class DuplicateSequenceError(RemoteError):
    pass


class InvalidProducerEpochError(RemoteError):
    pass


class UnknownProducerIdError(RemoteError):
    """The broker has no state for this producer id (expired, or removed with the log)."""


_BY_CODE: dict[int, type[RemoteError]] = {
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: UnknownTopicOrPartitionError,
    ErrorCode.LEADER_NOT_AVAILABLE: LeaderNotAvailableError,
    ErrorCode.NOT_LEADER_OR_FOLLOWER: NotLeaderOrFollowerError,
    ErrorCode.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    ErrorCode.REQUEST_TIMED_OUT: RequestTimedOutError,
    ErrorCode.NOT_ENOUGH_REPLICAS: NotEnoughReplicasError,
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: NotEnoughReplicasError,
    ErrorCode.CORRUPT_MESSAGE: CorruptMessageError,
    ErrorCode.MESSAGE_TOO_LARGE: MessageTooLargeError,
    ErrorCode.RECORD_LIST_TOO_LARGE: MessageTooLargeError,
    ErrorCode.INVALID_TOPIC_EXCEPTION: InvalidTopicError,
    ErrorCode.TOPIC_ALREADY_EXISTS: TopicAlreadyExistsError,
    ErrorCode.INVALID_PARTITIONS: InvalidPartitionsError,
    ErrorCode.INVALID_REPLICATION_FACTOR: InvalidReplicationFactorError,
    ErrorCode.INVALID_CONFIG: InvalidConfigError,
    ErrorCode.NOT_CONTROLLER: NotControllerError,
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: CoordinatorLoadInProgressError,
    ErrorCode.COORDINATOR_NOT_AVAILABLE: CoordinatorNotAvailableError,
    ErrorCode.NOT_COORDINATOR: NotCoordinatorError,
    ErrorCode.ILLEGAL_GENERATION: IllegalGenerationError,
    ErrorCode.UNKNOWN_MEMBER_ID: UnknownMemberIdError,
    ErrorCode.REBALANCE_IN_PROGRESS: RebalanceInProgressError,
    ErrorCode.INCONSISTENT_GROUP_PROTOCOL: InconsistentGroupProtocolError,
    ErrorCode.INVALID_SESSION_TIMEOUT: InvalidSessionTimeoutError,
    ErrorCode.GROUP_ID_NOT_FOUND: GroupIdNotFoundError,
    ErrorCode.NON_EMPTY_GROUP: NonEmptyGroupError,
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: OutOfOrderSequenceError,
    ErrorCode.DUPLICATE_SEQUENCE_NUMBER: DuplicateSequenceError,
    ErrorCode.INVALID_PRODUCER_EPOCH: InvalidProducerEpochError,
    ErrorCode.UNKNOWN_PRODUCER_ID: UnknownProducerIdError,
}

#: Codes after which the client's metadata is stale: refresh before retrying.
METADATA_STALE_CODES = frozenset({
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ErrorCode.LEADER_NOT_AVAILABLE,
    ErrorCode.NOT_LEADER_OR_FOLLOWER,
    ErrorCode.REPLICA_NOT_AVAILABLE,
    ErrorCode.FENCED_LEADER_EPOCH,
    ErrorCode.UNKNOWN_LEADER_EPOCH,
    ErrorCode.KAFKA_STORAGE_ERROR,
    ErrorCode.NOT_CONTROLLER,
})

#: Codes after which the group coordinator must be looked up again (FindCoordinator).
COORDINATOR_STALE_CODES = frozenset({
    ErrorCode.COORDINATOR_NOT_AVAILABLE,
    ErrorCode.NOT_COORDINATOR,
})


def remote_error(error_code: int, message: str | None = None) -> RemoteError:
    """The exception for a non-zero Kafka error code (the most specific subclass known)."""
    return _BY_CODE.get(int(error_code), RemoteError)(error_code, message)

"""pylog's native Kafka-protocol client: producer, consumer (with or without a group), admin.

asyncio first (``AsyncProducer``, ``AsyncConsumer``, ``AsyncAdmin``), with blocking wrappers
that run their own event loop in a thread (``Producer``, ``Consumer``, ``Admin``).

- ``connection``: one broker connection (framing, pipelining, versions, timeouts)
- ``metadata``: cluster metadata cache and the connection per broker
- ``partitioner``: murmur2 (as the Java client), xxhash, sticky partitioning
- ``accumulator``, ``producer``: batches built in C, sent per broker
- ``decode``, ``consumer``: long-poll fetch, CRC-checked decode in C
- ``membership``, ``coordinator``, ``assignors``, ``consumer_protocol``: consumer groups
  (classic protocol, as the Java client speaks it), commits
- ``admin``: CreateTopics, DeleteTopics, Metadata
- ``errors``: the ``KafkaError`` hierarchy (local vs remote)
"""
from pylog.client.admin import Admin, AsyncAdmin, NewTopic, PartitionDescription, TopicDescription
from pylog.client.assignors import RangeAssignor, RoundRobinAssignor
from pylog.client.consumer import AsyncConsumer, Consumer, OffsetAndTimestamp, TopicPartition
from pylog.client.coordinator import OffsetAndMetadata
from pylog.client.decode import ConsumerRecord
from pylog.client.errors import (
    ClientClosedError,
    CommitFailedError,
    CorruptRecordError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LocalError,
    NoOffsetForPartitionError,
    OutOfOrderSequenceError,
    ProtocolViolationError,
    RebalanceInProgressError,
    RecordTooLargeError,
    RemoteError,
    UnknownProducerIdError,
    UnsupportedVersionError,
)
from pylog.client.membership import ConsumerRebalanceListener
from pylog.client.partitioner import murmur2, murmur2_partition, xxhash_partition
from pylog.client.producer import AsyncProducer, Producer, RecordMetadata

__all__ = [
    "Admin", "AsyncAdmin", "AsyncConsumer", "AsyncProducer", "ClientClosedError",
    "CommitFailedError", "Consumer", "ConsumerRebalanceListener", "ConsumerRecord",
    "CorruptRecordError", "KafkaConnectionError", "KafkaError", "KafkaTimeoutError",
    "LocalError", "NewTopic", "NoOffsetForPartitionError", "OffsetAndMetadata",
    "OffsetAndTimestamp", "OutOfOrderSequenceError", "PartitionDescription",
    "ProtocolViolationError", "Producer",
    "RangeAssignor", "RebalanceInProgressError", "RecordMetadata", "RecordTooLargeError",
    "RemoteError", "RoundRobinAssignor", "TopicDescription", "TopicPartition",
    "UnknownProducerIdError", "UnsupportedVersionError", "murmur2", "murmur2_partition", "xxhash_partition",
]

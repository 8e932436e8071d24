"""pylog's native Kafka-protocol client: producer, consumer (no group) and topic admin.

asyncio first (``AsyncProducer``, ``AsyncConsumer``, ``AsyncAdmin``), with blocking wrappers
that run their own event loop in a thread (``Producer``, ``Consumer``, ``Admin``).

- ``connection``: one broker connection (framing, pipelining, versions, timeouts)
- ``metadata``: cluster metadata cache and the connection per broker
- ``partitioner``: murmur2 (as the Java client), xxhash, sticky partitioning
- ``accumulator``, ``producer``: batches built in C, sent per broker
- ``decode``, ``consumer``: long-poll fetch, CRC-checked decode in C
- ``admin``: CreateTopics, DeleteTopics, Metadata
- ``errors``: the ``KafkaError`` hierarchy (local vs remote)
"""
from pylog.client.admin import Admin, AsyncAdmin, NewTopic, PartitionDescription, TopicDescription
from pylog.client.consumer import AsyncConsumer, Consumer, OffsetAndTimestamp, TopicPartition
from pylog.client.decode import ConsumerRecord
from pylog.client.errors import (
    ClientClosedError,
    CorruptRecordError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LocalError,
    NoOffsetForPartitionError,
    ProtocolViolationError,
    RecordTooLargeError,
    RemoteError,
    UnsupportedVersionError,
)
from pylog.client.partitioner import murmur2, murmur2_partition, xxhash_partition
from pylog.client.producer import AsyncProducer, Producer, RecordMetadata

__all__ = [
    "Admin", "AsyncAdmin", "AsyncConsumer", "AsyncProducer", "ClientClosedError", "Consumer",
    "ConsumerRecord", "CorruptRecordError", "KafkaConnectionError", "KafkaError",
    "KafkaTimeoutError", "LocalError", "NewTopic", "NoOffsetForPartitionError",
    "OffsetAndTimestamp", "PartitionDescription", "ProtocolViolationError", "Producer",
    "RecordMetadata", "RecordTooLargeError", "RemoteError", "TopicDescription",
    "TopicPartition", "UnsupportedVersionError", "murmur2", "murmur2_partition",
    "xxhash_partition",
]

"""Which partition a record goes to.

Keyed records: ``murmur2`` exactly as the Java client computes it
(``Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions``: seed 0x9747b28c, 32-bit
signed-int arithmetic, little-endian 4-byte words, the tail bytes mixed in Java's switch
fall-through order), so a key lands on the same partition whichever client wrote it; or
xxh64 of the key (seed 0) as a faster, non-Java option.

Keyless records: the sticky partitioner (KIP-480). All keyless records of a topic go to one
partition until the producer closes a batch for that partition; then another partition is
picked at random, preferring partitions that have a leader. This fills batches instead of
spreading single records over every partition.
"""
from __future__ import annotations

import random
import struct

import xxhash

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as the Java client returns it (a signed 32-bit int)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length // 4
    for (k,) in struct.iter_unpack("<I", memoryview(data)[:words * 4]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    base = length & ~3
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """Java's ``Utils.toPositive``: clear the sign bit (not ``abs``)."""
    return n & 0x7FFFFFFF


def murmur2_partition(key: bytes, num_partitions: int) -> int:
    """The partition the Java client's default partitioner picks for ``key``."""
    return to_positive(murmur2(key)) % num_partitions


def xxhash_partition(key: bytes, num_partitions: int) -> int:
    """xxh64 (seed 0) of ``key`` modulo the partition count."""
    return xxhash.xxh64_intdigest(key) % num_partitions


KEY_PARTITIONERS = {"murmur2": murmur2_partition, "xxhash": xxhash_partition}


class StickyPartitioner:
    """The current sticky partition of each topic for keyless records."""

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        # topic -> the partition keyless records go to until a batch of it is closed.
        self._current: dict[str, int] = {}

    def partition(self, topic: str, partitions: list[int], available: list[int]) -> int:
        """The sticky partition of ``topic`` (choosing one if none is current)."""
        current = self._current.get(topic)
        if current is not None and current in partitions:
            return current
        return self._choose(topic, partitions, available, None)

    def on_batch_closed(self, topic: str, partition: int, partitions: list[int],
                        available: list[int]) -> None:
        """A batch of (topic, partition) was closed: if it was the sticky one, move on to
        another partition (a different one when there is more than one)."""
        if self._current.get(topic) == partition:
            self._choose(topic, partitions, available, partition)

    def _choose(self, topic: str, partitions: list[int], available: list[int],
                previous: int | None) -> int:
        pool = available or partitions
        if previous is not None and len(pool) > 1:
            pool = [p for p in pool if p != previous]
        chosen = pool[self._rng.randrange(len(pool))]
        self._current[topic] = chosen
        return chosen

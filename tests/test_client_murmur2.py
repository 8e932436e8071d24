"""The producer's key partitioner is the Java client's: murmur2 with Java's seed and signed-int
arithmetic, then toPositive(h) % numPartitions. Checked against the Java client's own test
vectors, librdkafka's copy of the Java client's results, and kafka-python's
independent implementation on many random keys; plus xxhash and the sticky partitioner."""
import random

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from pylog.client.partitioner import (
    StickyPartitioner,
    murmur2,
    murmur2_partition,
    to_positive,
    xxhash_partition,
)

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (Java's signed ints).
JAVA_UTILS_TEST = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

# librdkafka's src/rdmurmur2.c unit test, ``java_murmur2_results`` (the Java client's hashes
# as unsigned 32-bit patterns), including unaligned tails and the empty key.
_RDKAFKA_UNSIGNED = {
    b"kafka": 0xD067CF64, b"giberish123456789": 0x8F552B0C, b"1234": 0x9FC97B14,
    b"234": 0xE7C009CA, b"34": 0x873930DA, b"4": 0x5A4B5CA1,
    b"PreAmbleWillBeRemoved,ThePrePartThatIs": 0x78424F1C,
    b"reAmbleWillBeRemoved,ThePrePartThatIs": 0x4A62B377,
    b"eAmbleWillBeRemoved,ThePrePartThatIs": 0xE0E4E09E,
    b"AmbleWillBeRemoved,ThePrePartThatIs": 0x62B8B43F,
    b"": 0x106E08D9,
}
JAVA_GENERATED = {k: v - (1 << 32) if v & 0x80000000 else v
                  for k, v in _RDKAFKA_UNSIGNED.items()}


@pytest.mark.parametrize("key,expected", sorted({**JAVA_UTILS_TEST, **JAVA_GENERATED}.items()))
def test_java_vectors(key, expected):
    assert murmur2(key) == expected
    assert murmur2_partition(key, 7) == (expected & 0x7FFFFFFF) % 7


def test_every_length_and_byte_value_matches_kafka_python():
    rng = random.Random(1234)
    keys = [bytes(rng.randrange(256) for _ in range(n)) for n in range(0, 300)]
    keys += [bytes([b] * n) for b in (0x00, 0x7F, 0x80, 0xFF) for n in range(0, 9)]
    keys += [b"key-%d" % i for i in range(5000)]
    for key in keys:
        assert murmur2(key) & 0xFFFFFFFF == kafka_python_murmur2(key), key
        assert -(1 << 31) <= murmur2(key) < (1 << 31)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=1000))
def test_partition_equals_kafka_python_default_partitioner(key, partitions):
    expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % partitions
    assert murmur2_partition(key, partitions) == expected


def test_to_positive_is_javas_not_abs():
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(-(1 << 31)) == 0
    assert to_positive(5) == 5


def test_murmur2_accepts_bytearray_and_memoryview():
    assert murmur2(bytearray(b"foobar")) == murmur2(memoryview(b"foobar")) == -790332482


def test_xxhash_partition():
    for i in range(200):
        key = b"k%d" % i
        assert xxhash_partition(key, 12) == xxhash.xxh64_intdigest(key) % 12


def test_sticky_partition_holds_until_its_batch_closes_then_moves():
    sticky = StickyPartitioner(random.Random(7))
    parts = list(range(6))
    first = sticky.partition("t", parts, parts)
    assert all(sticky.partition("t", parts, parts) == first for _ in range(50))
    sticky.on_batch_closed("t", (first + 1) % 6, parts, parts)  # another partition's batch
    assert sticky.partition("t", parts, parts) == first
    seen = {first}
    for _ in range(200):
        current = sticky.partition("t", parts, parts)
        sticky.on_batch_closed("t", current, parts, parts)
        moved = sticky.partition("t", parts, parts)
        assert moved != current
        seen.add(moved)
    assert seen == set(parts)


def test_sticky_prefers_partitions_with_a_leader():
    sticky = StickyPartitioner(random.Random(3))
    for _ in range(100):
        chosen = sticky.partition("t", [0, 1, 2, 3], [2])
        assert chosen == 2
        sticky.on_batch_closed("t", chosen, [0, 1, 2, 3], [2])

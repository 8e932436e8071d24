"""Producer ids: unique across restarts, crashes included."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylog.broker.producer_ids import (MAX_PRODUCER_ID, ProducerIdAllocator,
                                       ProducerIdsExhaustedError)
from pylog.storage.checkpoint import CorruptCheckpointError, read_checkpoint, write_checkpoint


def test_ids_are_unique_and_increasing(tmp_path):
    allocator = ProducerIdAllocator(str(tmp_path / "pids"), block_size=7)
    ids = [allocator.allocate() for _ in range(50)]
    assert ids == list(range(50))


def test_restart_never_reuses_ids(tmp_path):
    path = str(tmp_path / "pids")
    seen: list[int] = []
    for _ in range(4):
        allocator = ProducerIdAllocator(path, block_size=10)
        seen.extend(allocator.allocate() for _ in range(3))
    assert len(set(seen)) == len(seen)
    assert seen == sorted(seen)
    # each restart skips the rest of the previous block
    assert seen[3] == 10 and seen[6] == 20


def test_crash_between_allocations(tmp_path):
    """A crash is a new allocator on the same file while the old one's state is lost."""
    path = str(tmp_path / "pids")
    before = ProducerIdAllocator(path, block_size=100)
    handed_out = [before.allocate() for _ in range(42)]
    after = ProducerIdAllocator(path, block_size=100)  # the old one was never closed
    new = [after.allocate() for _ in range(200)]
    assert not set(handed_out) & set(new)
    assert min(new) > max(handed_out)


def test_block_is_on_disk_before_its_ids_are_handed_out(tmp_path):
    path = str(tmp_path / "pids")
    allocator = ProducerIdAllocator(path, block_size=5)
    assert not os.path.exists(path)
    for _ in range(12):
        producer_id = allocator.allocate()
        [[bound]] = read_checkpoint(path, 0, 1)
        assert producer_id < int(bound)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=6))
def test_unique_over_any_restart_pattern(tmp_path_factory, runs, block_size):
    path = str(tmp_path_factory.mktemp("pids") / "pids")
    seen = set()
    for count in runs:
        allocator = ProducerIdAllocator(path, block_size=block_size)
        for _ in range(count):
            producer_id = allocator.allocate()
            assert producer_id not in seen
            seen.add(producer_id)


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"0\n1\n12\nxxh64 0000000000000000\n"])
def test_damaged_file_is_refused(tmp_path, content):
    path = tmp_path / "pids"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError):
        ProducerIdAllocator(str(path))


@pytest.mark.parametrize("entries", [[], [("abc",)], [("-5",)], [("1",), ("2",)]])
def test_wrong_content_with_a_good_checksum_is_refused(tmp_path, entries):
    path = str(tmp_path / "pids")
    write_checkpoint(path, 0, entries)
    with pytest.raises(CorruptCheckpointError):
        ProducerIdAllocator(path)


def test_exhaustion(tmp_path):
    path = str(tmp_path / "pids")
    write_checkpoint(path, 0, [(MAX_PRODUCER_ID - 1,)])
    allocator = ProducerIdAllocator(path, block_size=10)
    assert allocator.allocate() == MAX_PRODUCER_ID - 1
    assert allocator.allocate() == MAX_PRODUCER_ID
    with pytest.raises(ProducerIdsExhaustedError):
        allocator.allocate()
    with pytest.raises(ValueError):
        ProducerIdAllocator(path, block_size=0)

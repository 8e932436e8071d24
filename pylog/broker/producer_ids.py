"""Producer ids for InitProducerId: unique for the life of the data directory (DESIGN §10).

Theory of operation (Kafka's ProducerIdManager, on a file): ids are reserved in blocks. The
file records the first id no incarnation of the broker may have handed out yet (the end of
the last reserved block); a block is written (atomically and fsynced, through
pylog.storage.checkpoint) *before* any id of it is handed out. A restart, clean or not,
continues at the recorded end, skipping what was left of the last block: ids are never
reused, at the price of a gap after each restart. One fsync per ``block_size`` ids.

File: a checkpoint (version, count, entries, xxh64 line) holding one entry, the next block
start. A damaged file stops the broker (CorruptCheckpointError) instead of risking reuse.
"""
from __future__ import annotations

import os

from pylog.storage.checkpoint import (CorruptCheckpointError, read_checkpoint,
                                      write_checkpoint)

__all__ = ["ProducerIdAllocator", "ProducerIdsExhaustedError", "PRODUCER_IDS_FILE_NAME",
           "DEFAULT_BLOCK_SIZE", "MAX_PRODUCER_ID"]

PRODUCER_IDS_FILE_NAME = "producer-id-block"
DEFAULT_BLOCK_SIZE = 1000
MAX_PRODUCER_ID = 2**63 - 1  # producer ids are INT64 >= 0 on the wire
_FILE_VERSION = 0


class ProducerIdsExhaustedError(Exception):
    """Every INT64 producer id has been handed out."""


class ProducerIdAllocator:
    """Persisted producer-id allocator. Call from one thread (the event loop)."""

    def __init__(self, path: str, *, block_size: int = DEFAULT_BLOCK_SIZE):
        if block_size < 1:
            raise ValueError(f"block size {block_size} must be at least 1")
        self.path = os.fspath(path)
        self.block_size = block_size
        entries = read_checkpoint(self.path, _FILE_VERSION, 1)
        start = 0
        if entries is not None:
            if len(entries) != 1 or not entries[0][0].isascii() \
                    or not entries[0][0].isdigit():
                raise CorruptCheckpointError(self.path, f"expected one block start, got "
                                                        f"{entries!r}")
            start = int(entries[0][0])
        # Invariants: _next <= _block_end; every id handed out by this or an earlier
        # incarnation is < _block_end, and _block_end is what the file says.
        self._next = start
        self._block_end = start

    @classmethod
    def in_data_dir(cls, data_dir: str, **kw) -> "ProducerIdAllocator":
        return cls(os.path.join(data_dir, PRODUCER_IDS_FILE_NAME), **kw)

    @property
    def next_id(self) -> int:
        """The id the next ``allocate`` returns."""
        return self._next

    def allocate(self) -> int:
        """A producer id never returned before by any allocator on this file."""
        if self._next >= self._block_end:
            self._reserve_block()
        producer_id = self._next
        self._next += 1
        return producer_id

    def _reserve_block(self) -> None:
        if self._next > MAX_PRODUCER_ID:
            raise ProducerIdsExhaustedError(f"{self.path}: no producer ids left")
        end = min(self._next + self.block_size, MAX_PRODUCER_ID + 1)
        write_checkpoint(self.path, _FILE_VERSION, [(end,)])
        self._block_end = end

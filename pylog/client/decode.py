"""From the record bytes of one partition in a Fetch response to ``ConsumerRecord``s.

The broker returns whole stored batches, so the first batch may start before the fetch offset
(records before it are skipped) and the last may be cut short by ``max_bytes`` (it is left for
the next fetch). Batches are checked (CRC-32C when ``check_crcs``) and decoded in C
(``pylog.core.scan_batches``, ``pylog.records.decode_batch``; compressed ones through
``pylog.codecs``). Control batches (transaction markers) are never returned. Under
read_committed, records of transactions the broker lists as aborted are dropped, with Kafka's
rule: a producer's transactional batches are aborted from the listed first offset until that
producer's next control batch.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import NamedTuple

from pylog.client.errors import CorruptRecordError
from pylog.core import CoreError, TruncatedBatchError, scan_batches
from pylog.records import decode_batch


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class Decoded(NamedTuple):
    records: list[ConsumerRecord]
    next_offset: int                  # where the next fetch starts (past every whole batch)
    error: CorruptRecordError | None  # a damaged batch: records before it are returned


def decode_fetched(topic: str, partition: int, data, fetch_offset: int, *,
                   check_crcs: bool = True,
                   aborted: Iterable[tuple[int, int]] | None = None) -> Decoded:
    """Records at or after ``fetch_offset`` in ``data``; ``aborted``: (producer_id,
    first_offset) pairs of a read_committed Fetch answer (None = read_uncommitted)."""
    out: list[ConsumerRecord] = []
    if not data:
        return Decoded(out, fetch_offset, None)
    batches, error = scan_batches(data, check_crc=check_crcs, check_records=False)
    pending_aborts = [(first, pid) for pid, first in aborted] if aborted else []
    heapq.heapify(pending_aborts)
    aborting: set[int] = set()
    next_offset = fetch_offset
    view = memoryview(data)
    for info in batches:
        if info.next_offset <= fetch_offset:
            continue
        next_offset = info.next_offset
        while pending_aborts and pending_aborts[0][0] <= info.last_offset:
            aborting.add(heapq.heappop(pending_aborts)[1])
        if info.is_control:
            aborting.discard(info.producer_id)
            continue
        if info.is_transactional and info.producer_id in aborting:
            continue
        try:
            records = decode_batch(view[info.position:info.end], verify_crc=False)
        except CoreError as exc:
            return Decoded(out, max(fetch_offset, info.base_offset), CorruptRecordError(
                f"{topic}-{partition}: batch at offset {info.base_offset}: {exc}"))
        for r in records:
            if r.offset >= fetch_offset:
                out.append(ConsumerRecord(topic, partition, r.offset, r.timestamp, r.key,
                                          r.value, r.headers))
    if error is not None and not isinstance(error, TruncatedBatchError):
        return Decoded(out, next_offset, CorruptRecordError(
            f"{topic}-{partition}: damaged batch after offset {next_offset - 1}: {error}"))
    return Decoded(out, next_offset, None)

"""Crash safety: SIGKILLed writers lose nothing acknowledged; torn and corrupt tails are cut.

A process crash keeps the page cache, so every append that returned must be there after a
restart, in order, at its offset, with working indexes. Power-loss-like damage (a tail cut
short, a flipped byte after the recovery point) is simulated on the files directly.
"""
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pylog import core
from pylog.records import build_batch, decode_batch, iter_records
from pylog.storage.config import LogConfig
from pylog.storage.log import PartitionLog
from pylog.storage.manager import LogManager

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "crash_writer.py")
sys.path.insert(0, HERE)
import crash_writer  # noqa: E402  (its constants: the config and names the writer uses)


# ---- SIGKILL a writer ---------------------------------------------------------------------------


def run_writer_until_killed(data_dir, fsync, rng, min_acks, deadline_s=60.0):
    """Start a writer, SIGKILL it (by pid) once it acknowledged a random number >= min_acks
    of appends; return every offset it acknowledged, including lines still in the pipe."""
    target = min_acks + rng.randint(0, 4 * min_acks)
    stderr_path = os.path.join(os.path.dirname(data_dir), f"writer-{time.monotonic_ns()}.err")
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, WRITER, data_dir, fsync, str(rng.randrange(2**32))],
            stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(HERE)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))})
    acks, pending = [], b""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + deadline_s
    try:
        while len(acks) < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"writer made {len(acks)} acks before the deadline; "
                                     f"stderr: {open(stderr_path, 'rb').read()[-2000:]!r}")
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"writer exited with {proc.wait(5)}; stderr: "
                                     f"{open(stderr_path, 'rb').read()[-2000:]!r}")
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            acks.extend(int(line) for line in lines)
    finally:
        selector.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    rest = pending + proc.stdout.read()       # acknowledged before the kill landed
    proc.stdout.close()
    acks.extend(int(line) for line in rest.split(b"\n")[:-1])
    assert proc.returncode == -signal.SIGKILL
    return acks


def verify_log(log, last_acked):
    """The log holds offsets 0.. at least last_acked, each record where it was written,
    whole valid batches to the end of every segment, and every offset found by lookup."""
    assert log.log_end_offset > last_acked
    for segment in log.segments:
        batches = core.validate_batches(segment.read(0, segment.size))   # raises if torn
        assert batches.end == segment.size
    records = []
    offset = 0
    while offset < log.log_end_offset:
        result = log.read(offset, 1 << 20)
        for record in iter_records(result.data):
            if record.offset >= offset:
                records.append(record)
        offset = records[-1].offset + 1
    assert [r.offset for r in records] == list(range(log.log_end_offset))
    assert all(r.value.split(b":")[0] == str(r.offset).encode() for r in records)
    for offset in range(log.log_end_offset):
        first = log.read(offset, 1).offset_first_batch
        batch = decode_batch(log.read(offset, 1).data)
        assert first == batch[0].offset <= offset <= batch[-1].offset


def crash_cycles(tmp_path, kills, seed):
    rng = random.Random(seed)
    data_dir = str(tmp_path / "data")
    last_acked = -1
    for cycle in range(kills):
        fsync = "always" if cycle % 3 == 1 else "os"
        acks = run_writer_until_killed(data_dir, fsync, rng, min_acks=30)
        assert acks == sorted(acks) and acks[0] > last_acked
        last_acked = acks[-1]
        manager = LogManager(data_dir, cluster_id=crash_writer.CLUSTER_ID, node_id=1,
                             default_config=crash_writer.CONFIG)
        try:
            log = manager.get(crash_writer.TOPIC, crash_writer.PARTITION)
            assert log is not None
            assert log.recovery_reports, "a crash must lead to a recovery scan"
            verify_log(log, last_acked)
            # the recovery point only covers data that really was flushed
            assert log.recovery_point <= log.log_end_offset
        finally:
            manager.close()


def test_sigkill_loses_nothing_acknowledged(tmp_path):
    crash_cycles(tmp_path, kills=3, seed=random.randrange(2**32))


@pytest.mark.slow
def test_sigkill_loses_nothing_acknowledged_many_times(tmp_path):
    crash_cycles(tmp_path, kills=25, seed=random.randrange(2**32))


# ---- torn and corrupt tails -------------------------------------------------------------------

CONFIG = LogConfig(segment_bytes=8192, index_interval_bytes=256)


def build_log(directory, batches=120, seed=0):
    rng = random.Random(seed)
    log = PartitionLog.open(str(directory), CONFIG)
    for _ in range(batches):
        first = log.log_end_offset
        records = [(None, f"{first + i}:".encode() + b"y" * rng.randint(0, 200), (), 1000)
                   for i in range(rng.randint(1, 10))]
        log.append(bytearray(build_batch(records)), 0)
    log.close()


def active_batches(directory):
    """(path, base offset of the last segment, its batches)."""
    last = sorted(f for f in os.listdir(directory) if f.endswith(".log"))[-1]
    path = os.path.join(directory, last)
    with open(path, "rb") as f:
        return path, int(last[:20]), core.validate_batches(f.read())


def reopen_and_check(directory, recovery_point, expected_end):
    log = PartitionLog.open(str(directory), CONFIG, recovery_point=recovery_point)
    try:
        assert log.log_end_offset == expected_end
        verify_log(log, expected_end - 1)
        result = log.append(bytearray(build_batch([(None, f"{expected_end}:".encode(), (),
                                                    None)])), 0)
        assert result.first_offset == expected_end
        verify_log(log, expected_end)
    finally:
        log.close()


def test_torn_tail_is_cut_at_the_last_whole_batch(tmp_path):
    original = tmp_path / "original"
    build_log(original)
    path, base, batches = active_batches(original)
    rng = random.Random()
    size = batches.end
    for attempt in range(12):
        work = tmp_path / f"torn-{attempt}"
        shutil.copytree(original, work)
        cut = rng.randrange(1, size)
        with open(work / os.path.basename(path), "r+b") as f:
            f.truncate(cut)
        whole = [b for b in batches if b.end <= cut]
        expected_end = whole[-1].next_offset if whole else base
        reopen_and_check(work, recovery_point=base, expected_end=expected_end)


def test_flipped_byte_in_unflushed_tail_is_cut(tmp_path):
    original = tmp_path / "original"
    build_log(original)
    path, base, batches = active_batches(original)
    rng = random.Random()
    for attempt in range(12):
        work = tmp_path / f"flip-{attempt}"
        shutil.copytree(original, work)
        victim = batches[rng.randrange(len(batches))]
        # baseOffset (0..7) and partitionLeaderEpoch (12..15) are outside the CRC, as in
        # Kafka; every other byte is checked (length, magic, CRC-covered content).
        inside = rng.choice([rng.randrange(8, 12), rng.randrange(16, victim.size)])
        with open(work / os.path.basename(path), "r+b") as f:
            f.seek(victim.position + inside)
            byte = f.read(1)[0]
            f.seek(victim.position + inside)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
        reopen_and_check(work, recovery_point=base, expected_end=victim.base_offset)


def test_only_segments_from_the_recovery_point_are_scanned(tmp_path):
    directory = tmp_path / "log"
    build_log(directory, batches=200)
    log = PartitionLog.open(str(directory), CONFIG, clean_shutdown=True)
    segments = [(s.base_offset, s.next_offset, s.log_path) for s in log.segments]
    log.close()
    assert len(segments) >= 4
    # damage the first segment, which lies below the recovery point
    first_path = segments[0][2]
    with open(first_path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes([byte ^ 0xFF]))
    # a recovery point inside the third segment: scan from there on, nothing before
    third_base, third_end, _ = segments[2]
    recovery_point = (third_base + third_end) // 2
    log = PartitionLog.open(str(directory), CONFIG, recovery_point=recovery_point)
    try:
        scanned = [r.path for r in log.recovery_reports]
        assert scanned == [path for _, _, path in segments[2:]]
        third_report = log.recovery_reports[0]
        assert 0 < third_report.scanned_from <= log.segments[2].lookup(recovery_point)
        assert log.log_end_offset == segments[-1][1]          # damage below it unnoticed
    finally:
        log.close()
    # from 0, the damage is found: the log ends where the first segment's bad batch began
    log = PartitionLog.open(str(directory), CONFIG, recovery_point=0)
    try:
        assert log.recovery_reports[0].path == first_path
        assert log.recovery_reports[0].reason is not None
        assert len(log.segments) == 1
        assert log.log_end_offset < segments[0][1]
    finally:
        log.close()

"""LogManager: data-dir checkpoints, clean shutdown, cluster identity, names, the Flusher;
and LogConfig, which the manager applies (Kafka names, ranges, the fsync policy)."""
import os
import threading
import time

import pytest

from pylog.records import build_batch, iter_records
from pylog.storage import segment as segment_module
from pylog.storage.checkpoint import read_offset_checkpoint
from pylog.storage.config import KAFKA_LONG_MAX, ConfigError, LogConfig, parse_fsync_policy
from pylog.storage.errors import LogClosedError
from pylog.storage.manager import (CLEAN_SHUTDOWN_MARKER, HIGH_WATERMARK_CHECKPOINT,
                                   LOG_START_CHECKPOINT, RECOVERY_POINT_CHECKPOINT,
                                   DataDirectoryLockedError, LogManager)
from pylog.storage.meta import InconsistentClusterError, InconsistentNodeError
from pylog.storage.names import (InvalidTopicError, parse_partition_dir_name,
                                 partition_dir_name, validate_topic_name)

CLUSTER = "test-cluster"
SMALL = LogConfig(segment_bytes=2048, index_interval_bytes=256)


def manager(data_dir, **kw):
    kw.setdefault("default_config", SMALL)
    return LogManager(str(data_dir), cluster_id=kw.pop("cluster_id", CLUSTER),
                      node_id=kw.pop("node_id", 1), **kw)


def append(log, count=3, epoch=0):
    first = log.log_end_offset
    return log.append(bytearray(build_batch(
        [(None, str(first + i).encode(), (), 1000) for i in range(count)])), epoch)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.005)


def all_values(log):
    result = log.read(log.log_start_offset, 1 << 24)
    out = []
    offset = log.log_start_offset
    while not result.empty:
        out += [r for r in iter_records(result.data) if r.offset >= offset]
        offset = out[-1].offset + 1
        result = log.read(offset, 1 << 24)
    return out


# ---- checkpoints and clean shutdown -------------------------------------------------------------


def test_checkpoints_written_and_reloaded(tmp_path):
    m = manager(tmp_path)
    a, b = m.get_or_create("alpha", 0), m.get_or_create("beta.x", 7)
    for _ in range(40):
        append(a)
    for _ in range(5):
        append(b)
    a.high_watermark, b.high_watermark = 100, 15
    a.delete_records_before(a.segments[1].base_offset)
    a.flush(60)
    m.checkpoint()
    expected_start = a.log_start_offset
    assert read_offset_checkpoint(str(tmp_path / RECOVERY_POINT_CHECKPOINT)) == {
        ("alpha", 0): a.recovery_point, ("beta.x", 7): b.recovery_point}
    assert read_offset_checkpoint(str(tmp_path / HIGH_WATERMARK_CHECKPOINT)) == {
        ("alpha", 0): 100, ("beta.x", 7): 15}
    assert read_offset_checkpoint(str(tmp_path / LOG_START_CHECKPOINT)) == {
        ("alpha", 0): expected_start, ("beta.x", 7): 0}
    future = m.checkpoint(background=True)
    assert future.result(timeout=10) is None
    m.close()
    assert (tmp_path / CLEAN_SHUTDOWN_MARKER).exists()
    m = manager(tmp_path)
    assert not (tmp_path / CLEAN_SHUTDOWN_MARKER).exists()
    a, b = m.get("alpha", 0), m.get("beta.x", 7)
    assert (a.high_watermark, b.high_watermark) == (100, 15)
    assert a.log_start_offset == expected_start
    assert (a.log_end_offset, b.log_end_offset) == (120, 15)
    assert a.recovery_point == 120                   # clean: everything was flushed
    assert [r.offset for r in all_values(a)] == list(range(expected_start, 120))
    m.close()


def test_clean_shutdown_marker_skips_recovery(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for _ in range(30):
        append(log)
    m.close()
    m = manager(tmp_path)
    assert m.get("t", 0).recovery_reports == []
    m.close()
    os.unlink(tmp_path / CLEAN_SHUTDOWN_MARKER)      # as if the last run had crashed
    m = manager(tmp_path)
    log = m.get("t", 0)
    assert log.recovery_reports                      # scanned from the recovery point
    # the recovery point was the log end at the clean close: only the active segment scanned
    assert [r.path for r in log.recovery_reports] == [log.segments[-1].log_path]
    assert len(all_values(log)) == 90
    m.close()


def test_corrupt_checkpoint_forces_full_recovery(tmp_path, caplog):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for _ in range(30):
        append(log)
    m.close()
    with open(tmp_path / RECOVERY_POINT_CHECKPOINT, "ab") as f:
        f.write(b"junk\n")
    m = manager(tmp_path)
    log = m.get("t", 0)
    assert len(log.recovery_reports) == len(log.segments)   # every segment scanned
    assert any("corrupt checkpoint" in r.getMessage() for r in caplog.records)
    m.close()


def test_directory_of_another_cluster_or_node_is_refused(tmp_path):
    manager(tmp_path).close()
    with pytest.raises(InconsistentClusterError):
        manager(tmp_path, cluster_id="another-cluster")
    with pytest.raises(InconsistentNodeError):
        manager(tmp_path, node_id=2)
    manager(tmp_path).close()


def test_one_manager_per_data_directory(tmp_path):
    import subprocess
    import sys
    first = manager(tmp_path)
    with pytest.raises(DataDirectoryLockedError):
        manager(tmp_path)
    probe = ("import sys; from pylog.storage.manager import LogManager, "
             "DataDirectoryLockedError\n"
             "try:\n    LogManager(sys.argv[1], cluster_id=sys.argv[2], node_id=1)\n"
             "except DataDirectoryLockedError:\n    sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path), CLUSTER], timeout=60)
    assert other.returncode == 3                 # another process is refused too
    first.close()
    manager(tmp_path).close()                    # the lock went with the close
    with pytest.raises(InconsistentClusterError):
        manager(tmp_path, cluster_id="x")
    manager(tmp_path).close()                    # a refused open released the lock


def test_delete_partition(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("doomed", 3)
    append(log)
    directory = log.directory
    assert m.delete("doomed", 3)
    assert not os.path.exists(directory) and m.get("doomed", 3) is None
    assert not m.delete("doomed", 3)
    with pytest.raises(LogClosedError):
        append(log)
    fresh = m.get_or_create("doomed", 3)
    assert fresh.log_end_offset == 0
    m.close()
    leftover = tmp_path / f"{partition_dir_name('old', 0)}.{'ab' * 16}-delete"
    leftover.mkdir()
    (leftover / "00000000000000000000.log").write_bytes(b"x")
    (tmp_path / "lost+found").mkdir()
    m = manager(tmp_path)
    assert not leftover.exists()
    assert sorted(m) == [("doomed", 3)]
    m.close()


def test_run_retention(tmp_path):
    m = manager(tmp_path, default_config=LogConfig(segment_bytes=1024, retention_ms=1000))
    log = m.get_or_create("t", 0)
    for _ in range(40):
        append(log)
    log.high_watermark = log.log_end_offset
    segments = len(log.segments)
    assert m.run_retention(now_ms=1000 + 1000) == 0
    assert m.run_retention(now_ms=1000 + 1001) == segments - 1
    assert log.log_start_offset == log.segments[0].base_offset
    m.close()


# ---- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "../evil", "a/b", "a\\b", "x" * 250, "ü",
                                  "a b", "a\x00b", "/abs", "t\n"])
def test_bad_topic_names_are_refused(tmp_path, name):
    m = manager(tmp_path / "data")
    with pytest.raises(InvalidTopicError):
        m.get_or_create(name, 0)
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert [e for e in os.listdir(tmp_path / "data") if os.path.isdir(tmp_path / "data" / e)
            ] == []
    m.close()


def test_good_topic_names_and_partition_dirs():
    for name in ("a", "A-b_c.d", "x" * 249, "..."):
        assert validate_topic_name(name) == name
    assert partition_dir_name("my-topic", 12) == "my-topic-12"
    assert parse_partition_dir_name("my-topic-12") == ("my-topic", 12)
    assert parse_partition_dir_name("t--1") == ("t-", 1)     # topic "t-", partition 1
    for bad in ("my-topic", "my-topic-", "-1", "t-01", "t-1x", "../x-1", "t-+1", "t- 1",
                "t-99999999999", "a.b1234-delete"):
        assert parse_partition_dir_name(bad) is None, bad
    with pytest.raises(InvalidTopicError):
        partition_dir_name("t", -1)
    with pytest.raises(InvalidTopicError):
        partition_dir_name("t", 2**31)


# ---- the Flusher --------------------------------------------------------------------------------


class GatedSync:
    """Replaces the segment's fdatasync: blocks until opened; records the calling threads."""

    def __init__(self):
        self.gate = threading.Event()
        self.threads = []
        self.real = segment_module._datasync

    def __call__(self, fd):
        self.threads.append(threading.get_ident())
        assert self.gate.wait(30), "the test never opened the gate"
        self.real(fd)


def test_flush_future_completes_only_after_fsync_on_the_flusher_thread(tmp_path, monkeypatch):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    append(log)
    sync = GatedSync()
    monkeypatch.setattr(segment_module, "_datasync", sync)
    future = m.flusher.request_flush(log)
    wait_for(lambda: sync.threads)                   # the fsync started ...
    assert not future.done()                         # ... and has not returned
    assert log.recovery_point == 0
    sync.gate.set()
    assert future.result(timeout=10) == 3
    assert log.recovery_point == 3
    assert threading.get_ident() not in sync.threads
    m.close()


def test_fsync_always_acks_wait_for_fsync_and_coalesce(tmp_path, monkeypatch):
    m = manager(tmp_path, fsync="always")
    log = m.get_or_create("t", 0)
    assert log.config.flush_messages == 1
    sync = GatedSync()
    monkeypatch.setattr(segment_module, "_datasync", sync)
    first = append(log)
    assert first.durable is not None
    wait_for(lambda: sync.threads)                   # the first fsync is stuck in the gate
    results = [append(log) for _ in range(20)]       # the caller never waits for the disk
    assert threading.get_ident() not in sync.threads
    assert not any(r.durable.done() for r in [first] + results)
    passes_before = m.flusher.flush_count
    sync.gate.set()
    for r in [first] + results:
        assert r.durable.result(timeout=10) >= r.next_offset
    # the 20 appends made during the first fsync were covered by one more pass
    assert m.flusher.flush_count - passes_before <= 2
    assert log.recovery_point == log.log_end_offset == 63
    m.close()


def test_fsync_always_under_rolls(tmp_path):
    m = manager(tmp_path, fsync="always", default_config=LogConfig(segment_bytes=600))
    log = m.get_or_create("t", 0)
    results = [append(log) for _ in range(200)]
    for r in results:
        assert r.durable.result(timeout=30) >= r.next_offset
    assert len(log.segments) > 10
    assert [r.offset for r in all_values(log)] == list(range(600))
    m.close()


def test_flush_ms_flushes_in_the_background(tmp_path):
    m = manager(tmp_path, fsync=50)
    log = m.get_or_create("t", 0)
    assert log.config.flush_ms == 50
    result = append(log)
    assert result.durable is None
    wait_for(lambda: log.recovery_point == 3)
    append(log)
    wait_for(lambda: log.recovery_point == 6)
    m.close()


def test_flusher_refuses_work_after_close(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    m.close()
    assert not m.flusher.alive
    with pytest.raises(LogClosedError):
        m.flusher.request_flush(log).result(timeout=1)
    with pytest.raises(LogClosedError):
        m.get_or_create("t", 1)


# ---- LogConfig ----------------------------------------------------------------------------------


def test_config_defaults_are_kafkas():
    c = LogConfig()
    assert c.segment_bytes == 1 << 30 and c.segment_ms == 7 * 86_400_000
    assert c.segment_index_bytes == 10 << 20 and c.index_interval_bytes == 4096
    assert c.retention_ms == 7 * 86_400_000 and c.retention_bytes == -1
    assert c.flush_messages is None and c.flush_ms is None
    assert c.message_max_bytes == 1048588 and c.cleanup_policy == "delete"
    assert c.min_insync_replicas == 1


def test_config_kafka_names_round_trip():
    c = LogConfig.from_kafka({"segment.bytes": "4096", "retention.ms": -1,
                              "flush.messages": str(KAFKA_LONG_MAX), "flush.ms": "1000",
                              "max.message.bytes": "2000", "min.insync.replicas": "2"})
    assert (c.segment_bytes, c.retention_ms, c.flush_messages, c.flush_ms,
            c.message_max_bytes, c.min_insync_replicas) == (4096, -1, None, 1000, 2000, 2)
    kafka = c.to_kafka()
    assert kafka["flush.messages"] == str(KAFKA_LONG_MAX) and kafka["segment.bytes"] == "4096"
    assert LogConfig.from_kafka(kafka) == c
    assert c.with_overrides({"retention.bytes": "10"}).retention_bytes == 10


@pytest.mark.parametrize("mapping, name", [
    ({"segment.bytes": "10"}, "segment.bytes"),
    ({"segment.bytes": str((1 << 30) + 1)}, "segment.bytes"),
    ({"segment.bytes": "1e6"}, "segment.bytes"),
    ({"retention.ms": "-2"}, "retention.ms"),
    ({"flush.messages": "0"}, "flush.messages"),
    ({"cleanup.policy": "shrink"}, "cleanup.policy"),
    ({"min.insync.replicas": "0"}, "min.insync.replicas"),
    ({"no.such.config": "1"}, "no.such.config"),
    ({"message.max.bytes": "100", "max.message.bytes": "200"}, "max.message.bytes"),
    ({"segment.ms": True}, "segment.ms"),
])
def test_config_errors_name_the_setting(mapping, name):
    with pytest.raises(ConfigError) as info:
        LogConfig.from_kafka(mapping)
    assert info.value.name == name


def test_fsync_policy():
    assert parse_fsync_policy("always") == "always" and parse_fsync_policy(" OS ") == "os"
    assert parse_fsync_policy("250ms") == parse_fsync_policy("250") == parse_fsync_policy(250)
    for bad in ("never", "0", -5, "1.5", True):
        with pytest.raises(ConfigError):
            parse_fsync_policy(bad)
    c = LogConfig()
    assert c.with_fsync("always").flush_messages == 1 and c.with_fsync("always").fsync_policy \
        == "always"
    assert c.with_fsync(100).flush_ms == 100 and c.with_fsync(100).fsync_policy == 100
    assert c.with_fsync("always").with_fsync("os") == c
    assert LogConfig.from_kafka({"unknown.x": "1"}, ignore_unknown=True) == c

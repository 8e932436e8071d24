"""Checkpoint files: Kafka's text format plus an xxh64 line, atomic replacement."""
import os

import pytest
import xxhash
from hypothesis import given, settings, strategies as st

from pylog.storage import checkpoint
from pylog.storage.checkpoint import (CorruptCheckpointError, atomic_write,
                                      read_epoch_checkpoint, read_offset_checkpoint,
                                      write_epoch_checkpoint, write_offset_checkpoint)


def test_offset_checkpoint_exact_format(tmp_path):
    path = tmp_path / "replication-offset-checkpoint"
    write_offset_checkpoint(str(path), {("b-topic", 3): 42, ("a.topic", 0): 0})
    body = b"0\n2\na.topic 0 0\nb-topic 3 42\n"
    assert path.read_bytes() == body + b"xxh64 " + xxhash.xxh64_hexdigest(body).encode() + b"\n"
    assert read_offset_checkpoint(str(path)) == {("b-topic", 3): 42, ("a.topic", 0): 0}


def test_epoch_checkpoint_round_trip(tmp_path):
    path = str(tmp_path / "leader-epoch-checkpoint")
    write_epoch_checkpoint(path, [(0, 0), (3, 17), (4, 1000)])
    assert read_epoch_checkpoint(path) == [(0, 0), (3, 17), (4, 1000)]
    assert (tmp_path / "leader-epoch-checkpoint").read_bytes().startswith(b"0\n3\n0 0\n3 17\n")


def test_missing_file_is_empty(tmp_path):
    assert read_offset_checkpoint(str(tmp_path / "nope")) == {}
    assert read_epoch_checkpoint(str(tmp_path / "nope")) == []


def test_stale_tmp_is_ignored_and_overwritten(tmp_path):
    path = tmp_path / "recovery-point-offset-checkpoint"
    write_offset_checkpoint(str(path), {("t", 0): 5})
    (tmp_path / "recovery-point-offset-checkpoint.tmp").write_bytes(b"0\n1\nt 0 999\ngarbage")
    assert read_offset_checkpoint(str(path)) == {("t", 0): 5}
    write_offset_checkpoint(str(path), {("t", 0): 6})
    assert read_offset_checkpoint(str(path)) == {("t", 0): 6}
    assert not (tmp_path / "recovery-point-offset-checkpoint.tmp").exists()


def test_crash_before_rename_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "cp"
    write_offset_checkpoint(str(path), {("t", 0): 1})
    old = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before the rename")
    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError):
        write_offset_checkpoint(str(path), {("t", 0): 2})
    assert path.read_bytes() == old
    assert read_offset_checkpoint(str(path)) == {("t", 0): 1}


def test_atomic_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else fd)
        real_fsync(fd)
    monkeypatch.setattr(checkpoint.os, "fsync", recording_fsync)
    atomic_write(str(tmp_path / "f"), b"data")
    assert len(synced) == 2
    if isinstance(synced[0], str):
        assert synced[0] == str(tmp_path / "f.tmp")
        assert synced[1] == str(tmp_path)
    assert (tmp_path / "f").read_bytes() == b"data"


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b.replace(b"t 0 42", b"t 0 43"), "checksum mismatch"),
    (lambda b: b[:-1], "newline"),
    (lambda b: b[:b.index(b"xxh64")], "checksum"),
    (lambda b: b"", "newline"),
])
def test_damage_is_detected(tmp_path, damage, reason):
    path = tmp_path / "cp"
    write_offset_checkpoint(str(path), {("t", 0): 42, ("u", 1): 7})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptCheckpointError, match=reason) as info:
        read_offset_checkpoint(str(path))
    assert info.value.path == str(path)


def _with_checksum(body: bytes) -> bytes:
    return body + b"xxh64 " + xxhash.xxh64_hexdigest(body).encode() + b"\n"


@pytest.mark.parametrize("body, reason", [
    (b"1\n0\n", "version"),
    (b"0\n2\nt 0 1\n", "count says 2"),
    (b"0\n1\nt 0\n", "expected 3 fields"),
    (b"0\n1\nt 0 -5\n", "not a non-negative"),
    (b"0\n1\n../../etc 0 5\n", "characters"),
    (b"0\n2\nt 0 5\nt 0 6\n", "twice"),
    (b"0\nx\n", "not a number"),
])
def test_well_checksummed_but_invalid_content(tmp_path, body, reason):
    path = tmp_path / "cp"
    path.write_bytes(_with_checksum(body))
    with pytest.raises(CorruptCheckpointError, match=reason):
        read_offset_checkpoint(str(path))


def test_writer_refuses_bad_entries(tmp_path):
    with pytest.raises(ValueError):
        write_offset_checkpoint(str(tmp_path / "cp"), {("t", 0): -1})
    with pytest.raises(ValueError):
        write_offset_checkpoint(str(tmp_path / "cp"), {("a/b", 0): 1})
    with pytest.raises(ValueError):
        write_epoch_checkpoint(str(tmp_path / "cp"), [(-1, 0)])
    assert not (tmp_path / "cp").exists()


topics = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True).filter(
    lambda t: t not in (".", ".."))
offset_maps = st.dictionaries(st.tuples(topics, st.integers(0, 2**31 - 1)),
                              st.integers(0, 2**63 - 1), max_size=20)


@settings(max_examples=60, deadline=None)
@given(offsets=offset_maps, data=st.data())
def test_round_trip_and_any_single_byte_change_is_caught(tmp_path_factory, offsets, data):
    path = tmp_path_factory.mktemp("cp") / "cp"
    write_offset_checkpoint(str(path), offsets)
    assert read_offset_checkpoint(str(path)) == offsets
    raw = bytearray(path.read_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError):
        read_offset_checkpoint(str(path))

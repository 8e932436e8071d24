"""Controller: topic validation codes, placement, persistence, versions, listeners."""
from __future__ import annotations

import collections
import json
import os

import pytest

from pylog.controller import (BrokerInfo, ClusterIdMismatchError, ClusterMetadata, Controller,
                              CorruptMetadataError, MetadataError, MetadataStore,
                              assign_replicas, rack_alternated_brokers)
from pylog.controller.metadata import MAX_PARTITIONS_PER_REQUEST

CLUSTER = "cluster-a"


def make_controller(tmp_path, brokers=((1, None),), **kw) -> Controller:
    controller = Controller(MetadataStore.in_data_dir(str(tmp_path)), cluster_id=CLUSTER,
                            node_id=1, **kw)
    for node_id, rack in brokers:
        controller.register_broker(BrokerInfo(node_id, "127.0.0.1", 9000 + node_id, rack))
    return controller


def store_bytes(tmp_path) -> bytes:
    with open(os.path.join(str(tmp_path), "cluster-metadata"), "rb") as f:
        return f.read()


def code_of(call) -> int:
    with pytest.raises(MetadataError) as info:
        call()
    return int(info.value.error_code)


# ---- create / delete validation -----------------------------------------------------------

def test_create_topic_defaults_and_state(tmp_path):
    c = make_controller(tmp_path, brokers=((1, None), (2, None), (3, None)),
                        default_partitions=4, default_replication_factor=2)
    version = c.metadata.version
    info = c.create_topic("orders")
    assert c.metadata.version == version + 1
    assert sorted(info.partitions) == [0, 1, 2, 3]
    for p, state in info.partitions.items():
        assert state.partition == p and state.topic == "orders"
        assert len(state.replicas) == 2 and len(set(state.replicas)) == 2
        assert state.leader == state.replicas[0]
        assert state.isr == state.replicas
        assert state.leader_epoch == 0 and state.partition_epoch == 0
    assert c.metadata.topics["orders"].topic_id == info.topic_id


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 250, "bad name", "é", "a\x00"])
def test_invalid_topic_names_are_17(tmp_path, name):
    c = make_controller(tmp_path)
    assert code_of(lambda: c.create_topic(name, 1, 1)) == 17
    assert code_of(lambda: c.delete_topic(name)) == 17


def test_longest_legal_name_is_accepted(tmp_path):
    c = make_controller(tmp_path)
    c.create_topic("a" * 249, 1, 1)
    assert "a" * 249 in c.metadata.topics


@pytest.mark.parametrize("partitions", [0, -2, MAX_PARTITIONS_PER_REQUEST + 1])
def test_invalid_partition_counts_are_37(tmp_path, partitions):
    c = make_controller(tmp_path)
    assert code_of(lambda: c.create_topic("t", partitions, 1)) == 37


@pytest.mark.parametrize("rf", [0, -2, 2, 40000])
def test_invalid_replication_factors_are_38(tmp_path, rf):
    c = make_controller(tmp_path)  # one live broker
    assert code_of(lambda: c.create_topic("t", 1, rf)) == 38


def test_existing_topic_is_36_and_collision_is_17(tmp_path):
    c = make_controller(tmp_path)
    c.create_topic("a.b", 1, 1)
    assert code_of(lambda: c.create_topic("a.b", 1, 1)) == 36
    assert code_of(lambda: c.create_topic("a_b", 1, 1)) == 17


@pytest.mark.parametrize("configs", [
    {"no.such.config": "1"},
    {"retention.ms": "soon"},
    {"segment.bytes": "10"},
    {"cleanup.policy": "compact,shrink"},
    {"min.insync.replicas": "0"},
    {"max.message.bytes": True},
])
def test_invalid_configs_are_40(tmp_path, configs):
    c = make_controller(tmp_path)
    assert code_of(lambda: c.create_topic("t", 1, 1, configs)) == 40
    assert "t" not in c.metadata.topics


def test_configs_are_stored_as_strings_without_nulls(tmp_path):
    c = make_controller(tmp_path)
    info = c.create_topic("t", 1, 1, {"retention.ms": 1000, "segment.bytes": " 4096 ",
                                      "flush.ms": None})
    assert info.configs == {"retention.ms": "1000", "segment.bytes": "4096"}


def test_manual_assignments(tmp_path):
    c = make_controller(tmp_path, brokers=((1, None), (2, None), (3, None)))
    info = c.create_topic("t", -1, -1, assignments={0: [3, 1], 1: [2, 3]})
    assert info.partitions[0].replicas == [3, 1] and info.partitions[0].leader == 3
    assert info.partitions[1].isr == [2, 3]
    bad = [
        ({0: [1, 9]}, 39),            # unknown broker
        ({0: [1, 1]}, 39),            # repeated broker
        ({0: [1], 2: [2]}, 39),       # not numbered 0..n-1
        ({0: [1, 2], 1: [3]}, 39),    # different widths
        ({0: []}, 39),                # no replicas
        ({}, 39),                     # nothing
    ]
    for i, (assignment, code) in enumerate(bad):
        assert code_of(lambda: c.create_topic(f"bad{i}", -1, -1,
                                              assignments=assignment)) == code
    assert code_of(lambda: c.create_topic("x", 3, -1, assignments={0: [1]})) == 42
    assert code_of(lambda: c.create_topic("y", -1, 2, assignments={0: [1]})) == 42


def test_refused_changes_leave_no_trace(tmp_path):
    c = make_controller(tmp_path)
    c.create_topic("t", 1, 1)
    before, version = store_bytes(tmp_path), c.metadata.version
    for call in (lambda: c.create_topic("t", 1, 1), lambda: c.create_topic("u", 0, 1),
                 lambda: c.delete_topic("nope"), lambda: c.create_topic("v", 1, 1, {"x": "1"})):
        with pytest.raises(MetadataError):
            call()
    assert c.metadata.version == version
    assert sorted(c.metadata.topics) == ["t"]
    assert store_bytes(tmp_path) == before


def test_validate_only_changes_nothing(tmp_path):
    c = make_controller(tmp_path)
    version = c.metadata.version
    info = c.create_topic("t", 2, 1, validate_only=True)
    assert len(info.partitions) == 2
    assert "t" not in c.metadata.topics and c.metadata.version == version
    assert code_of(lambda: c.create_topic("t", 0, 1, validate_only=True)) == 37


def test_delete_topic(tmp_path):
    c = make_controller(tmp_path)
    info = c.create_topic("t", 2, 1)
    version = c.metadata.version
    deleted = c.delete_topic("t")
    assert deleted.topic_id == info.topic_id
    assert "t" not in c.metadata.topics and c.metadata.version == version + 1
    assert code_of(lambda: c.delete_topic("t")) == 3
    again = c.create_topic("t", 1, 1)
    assert again.topic_id != info.topic_id


# ---- versions and brokers ------------------------------------------------------------------

def test_every_change_bumps_the_version_once(tmp_path):
    c = make_controller(tmp_path, brokers=())
    versions = [c.metadata.version]
    c.register_broker(BrokerInfo(1, "h", 1, None))
    versions.append(c.metadata.version)
    c.register_broker(BrokerInfo(1, "h", 1, None))  # the same again: no change
    assert c.metadata.version == versions[-1]
    c.register_broker(BrokerInfo(1, "h", 2, "r1"))  # moved
    versions.append(c.metadata.version)
    c.create_topic("t", 1, 1)
    versions.append(c.metadata.version)
    c.delete_topic("t")
    versions.append(c.metadata.version)
    assert versions == list(range(versions[0], versions[0] + 5))
    assert code_of(lambda: c.register_broker(BrokerInfo(2, "h", 70000, None))) == 42


# ---- alter partition --------------------------------------------------------------------------

def test_alter_partition_guarded_by_partition_epoch(tmp_path):
    c = make_controller(tmp_path, brokers=((1, None), (2, None), (3, None)))
    c.create_topic("t", -1, -1, assignments={0: [1, 2, 3]})
    version = c.metadata.version
    state = c.alter_partition("t", 0, [1, 3], 0, leader_id=1, leader_epoch=0)
    assert state.isr == [1, 3] and state.partition_epoch == 1
    assert c.metadata.version == version + 1
    assert c.metadata.partition("t", 0).isr == [1, 3]
    # a proposal computed from epoch 0 is stale now
    assert code_of(lambda: c.alter_partition("t", 0, [1], 0)) == 95
    assert code_of(lambda: c.alter_partition("t", 0, [1], 1, leader_id=2)) == 6
    assert code_of(lambda: c.alter_partition("t", 0, [1], 1, leader_epoch=3)) == 74
    for isr in ([], [2, 3], [1, 1], [1, 4]):
        assert code_of(lambda: c.alter_partition("t", 0, isr, 1)) == 107
    assert code_of(lambda: c.alter_partition("t", 5, [1], 1)) == 3
    assert c.metadata.partition("t", 0).isr == [1, 3]
    # the same ISR again commits nothing
    same = c.alter_partition("t", 0, [1, 3], 1)
    assert same.partition_epoch == 1 and c.metadata.version == version + 1
    # persisted
    reloaded = MetadataStore.in_data_dir(str(tmp_path)).load()
    assert reloaded.partition("t", 0).isr == [1, 3]
    assert reloaded.partition("t", 0).partition_epoch == 1


def test_observers_never_join_the_isr(tmp_path):
    md = ClusterMetadata(CLUSTER, 1)
    for b in (1, 2, 3):
        md.register_broker(BrokerInfo(b, "h", b, None))
    md.create_topic("t", -1, -1, assignments={0: [1, 2, 3]})
    state = md.partition("t", 0)
    state.observers = [3]
    state.isr = [1, 2]
    with pytest.raises(MetadataError) as info:
        md.alter_partition("t", 0, [1, 2, 3], 0)
    assert info.value.error_code == 107


# ---- placement --------------------------------------------------------------------------------

class B:
    def __init__(self, node_id, rack):
        self.node_id, self.rack = node_id, rack


def test_rack_alternated_order():
    brokers = [B(1, "a"), B(2, "a"), B(3, "b"), B(4, "c"), B(5, "b"), B(6, None)]
    assert rack_alternated_brokers(brokers) == [1, 3, 4, 6, 2, 5]


def test_placement_exact_without_racks():
    brokers = [B(1, None), B(2, None), B(3, None)]
    assert assign_replicas(brokers, 6, 2) == {
        0: [1, 2], 1: [2, 3], 2: [3, 1],   # first round: the next broker follows
        3: [1, 3], 4: [2, 1], 5: [3, 2],   # second round: shifted by one more
    }


@pytest.mark.parametrize("rf", [1, 2, 3, 4])
def test_placement_spreads_over_racks(rf):
    brokers = [B(i, f"rack{(i - 1) % 3}") for i in range(1, 7)]  # 3 racks x 2 brokers
    rack_of = {b.node_id: b.rack for b in brokers}
    for start in (0, 1, 5):
        assignment = assign_replicas(brokers, 12, rf, start_index=start)
        assert assignment == assign_replicas(brokers, 12, rf, start_index=start)
        leaders = collections.Counter(r[0] for r in assignment.values())
        assert sorted(leaders.values()) == [2] * 6
        for replicas in assignment.values():
            assert len(replicas) == rf == len(set(replicas))
            assert len({rack_of[b] for b in replicas}) == min(rf, 3)


def test_controller_places_topics_across_racks(tmp_path):
    c = make_controller(tmp_path, brokers=((1, "a"), (2, "a"), (3, "b"), (4, "b")))
    info = c.create_topic("t", 8, 2)
    for state in info.partitions.values():
        assert {1, 2} & set(state.replicas) and {3, 4} & set(state.replicas)
    with pytest.raises(ValueError):
        assign_replicas([B(1, None)], 1, 2)


# ---- persistence ------------------------------------------------------------------------------

def test_persistence_and_reload(tmp_path):
    c = make_controller(tmp_path, brokers=((1, "r1"), (2, "r2")))
    c.create_topic("a", 3, 2, {"retention.ms": "60000"})
    c.create_topic("b", 1, 1)
    c.delete_topic("b")
    c.alter_partition("a", 1, [c.metadata.partition("a", 1).leader], 0)
    again = Controller(MetadataStore.in_data_dir(str(tmp_path)), cluster_id=CLUSTER,
                       node_id=1)
    assert again.metadata == c.metadata
    assert again.metadata.topics["a"].configs == {"retention.ms": "60000"}
    assert again.metadata.version == c.metadata.version


def test_checksum_mismatch_is_detected(tmp_path):
    c = make_controller(tmp_path)
    c.create_topic("t", 1, 1)
    path = os.path.join(str(tmp_path), "cluster-metadata")
    data = bytearray(store_bytes(tmp_path))
    at = data.index(b'"t"') + 1
    data[at] = ord("u")  # same length, still valid JSON: only the checksum can tell
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CorruptMetadataError, match="checksum"):
        MetadataStore(path).load()
    with pytest.raises(CorruptMetadataError):
        Controller(MetadataStore(path), cluster_id=CLUSTER, node_id=1)


@pytest.mark.parametrize("damage", ["truncate", "empty", "no-checksum", "bad-json",
                                    "bad-content"])
def test_damaged_files_are_refused(tmp_path, damage):
    import xxhash
    c = make_controller(tmp_path)
    c.create_topic("t", 1, 1)
    path = os.path.join(str(tmp_path), "cluster-metadata")
    data = store_bytes(tmp_path)
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "no-checksum":
        data = data.split(b"\nxxh64")[0] + b"\n"
    else:
        body = b"{not json\n" if damage == "bad-json" else json.dumps(
            {"format": 1, "metadata": {"cluster_id": 5}}).encode() + b"\n"
        data = body + b"xxh64 " + xxhash.xxh64_hexdigest(body).encode() + b"\n"
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CorruptMetadataError):
        MetadataStore(path).load()


def test_missing_file_is_a_new_cluster_and_other_clusters_are_refused(tmp_path):
    store = MetadataStore.in_data_dir(str(tmp_path))
    assert store.load() is None
    Controller(store, cluster_id=CLUSTER, node_id=1)
    assert store.load().cluster_id == CLUSTER
    with pytest.raises(ClusterIdMismatchError):
        Controller(store, cluster_id="other", node_id=1)


# ---- listeners --------------------------------------------------------------------------------

def test_listeners_are_called_after_the_change_is_persisted(tmp_path):
    c = make_controller(tmp_path)
    store = MetadataStore.in_data_dir(str(tmp_path))
    seen = []

    def listener(md):
        on_disk = store.load()
        seen.append((md.version, on_disk.version, sorted(on_disk.topics)))

    def broken(md):
        raise RuntimeError("listener bug")

    c.add_listener(broken)
    c.add_listener(listener)
    c.create_topic("t", 1, 1)
    c.delete_topic("t")
    with pytest.raises(MetadataError):
        c.delete_topic("t")  # refused: nobody is told
    v = c.metadata.version
    assert seen == [(v - 1, v - 1, ["t"]), (v, v, [])]
    c.remove_listener(listener)
    c.create_topic("u", 1, 1)
    assert len(seen) == 2


def test_failed_save_commits_nothing(tmp_path, monkeypatch):
    c = make_controller(tmp_path)
    calls = []
    c.add_listener(calls.append)
    version = c.metadata.version

    def failing_save(md):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(c.store, "save", failing_save)
    with pytest.raises(OSError):
        c.create_topic("t", 1, 1)
    assert "t" not in c.metadata.topics and c.metadata.version == version
    assert calls == []

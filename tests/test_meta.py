"""meta.properties: a data directory belongs to one cluster and one node."""
import pytest

from pylog.storage.meta import (CorruptMetaPropertiesError, InconsistentClusterError,
                                InconsistentNodeError, MetaProperties, ensure_meta_properties,
                                load_meta_properties)


def _props(path):
    lines = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
    return dict(l.split("=", 1) for l in lines)


def test_created_when_absent_and_reloaded(tmp_path):
    data_dir = tmp_path / "data"
    assert load_meta_properties(str(data_dir)) is None
    meta = ensure_meta_properties(str(data_dir), "Xy1_-cluster", 3)
    assert meta == MetaProperties("Xy1_-cluster", 3)
    assert _props(data_dir / "meta.properties") == {
        "version": "1", "cluster.id": "Xy1_-cluster", "node.id": "3"}
    assert load_meta_properties(str(data_dir)) == meta
    assert ensure_meta_properties(str(data_dir), "Xy1_-cluster", 3) == meta


def test_directory_of_another_cluster_is_refused(tmp_path):
    ensure_meta_properties(str(tmp_path), "cluster-a", 1)
    before = (tmp_path / "meta.properties").read_bytes()
    with pytest.raises(InconsistentClusterError, match="cluster-a"):
        ensure_meta_properties(str(tmp_path), "cluster-b", 1)
    assert (tmp_path / "meta.properties").read_bytes() == before


def test_directory_of_another_node_is_refused(tmp_path):
    ensure_meta_properties(str(tmp_path), "cluster-a", 1)
    with pytest.raises(InconsistentNodeError, match="node 1"):
        ensure_meta_properties(str(tmp_path), "cluster-a", 2)


def test_kafka_style_file_with_comments_is_read(tmp_path):
    (tmp_path / "meta.properties").write_text(
        "#\n#Thu Jan 01 00:00:00 UTC 2025\nnode.id=7\nversion=1\ncluster.id=abc\n")
    assert load_meta_properties(str(tmp_path)) == MetaProperties("abc", 7)


@pytest.mark.parametrize("text, reason", [
    ("version=1\ncluster.id=abc\n", "missing node.id"),
    ("version=2\ncluster.id=abc\nnode.id=1\n", "version"),
    ("version=1\ncluster.id=abc\nnode.id=x\n", "not a number"),
    ("version=1\ncluster.id=abc\nnode.id\n", "key=value"),
    ("version=1\ncluster.id=\nnode.id=1\n", "non-empty"),
])
def test_corrupt_files_are_refused(tmp_path, text, reason):
    (tmp_path / "meta.properties").write_text(text)
    with pytest.raises(CorruptMetaPropertiesError, match=reason):
        ensure_meta_properties(str(tmp_path), "abc", 1)


def test_non_utf8_file_is_refused(tmp_path):
    (tmp_path / "meta.properties").write_bytes(b"version=1\ncluster.id=\xff\nnode.id=1\n")
    with pytest.raises(CorruptMetaPropertiesError, match="UTF-8"):
        load_meta_properties(str(tmp_path))


@pytest.mark.parametrize("cluster_id, node_id", [
    ("", 1), ("a\nb", 1), (" a", 1), ("a=b", 1), ("abc", -1), ("abc", True), ("abc", 2**31)])
def test_bad_identities_are_refused_before_writing(tmp_path, cluster_id, node_id):
    with pytest.raises(ValueError):
        ensure_meta_properties(str(tmp_path), cluster_id, node_id)
    assert not (tmp_path / "meta.properties").exists()

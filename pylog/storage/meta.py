"""``meta.properties``: which cluster and which node a data directory belongs to.

Theory of operation: the first broker to use a data directory stamps it with its cluster id
and node id; every later start compares. A directory of another cluster (or of another node
of this cluster) is refused rather than served: serving it would mix two clusters' offsets
and leader epochs and silently corrupt both (DESIGN §10).

Format: Java properties text (``key=value`` lines, ``#`` comments), as Kafka writes it:

    version=1
    cluster.id=<cluster id>
    node.id=<node id>
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from pylog.storage.checkpoint import atomic_write

__all__ = [
    "META_PROPERTIES_NAME", "META_VERSION", "MetaProperties", "MetaPropertiesError",
    "CorruptMetaPropertiesError", "InconsistentClusterError", "InconsistentNodeError",
    "load_meta_properties", "write_meta_properties", "ensure_meta_properties",
]

META_PROPERTIES_NAME = "meta.properties"
META_VERSION = 1


class MetaPropertiesError(Exception):
    """A data directory's meta.properties cannot be used."""


class CorruptMetaPropertiesError(MetaPropertiesError):
    """meta.properties is unreadable, of an unknown version, or lacks a field."""


class InconsistentClusterError(MetaPropertiesError):
    """The data directory belongs to another cluster."""


class InconsistentNodeError(MetaPropertiesError):
    """The data directory belongs to another node of this cluster."""


@dataclass(frozen=True)
class MetaProperties:
    cluster_id: str
    node_id: int
    version: int = META_VERSION

    def __post_init__(self) -> None:
        _check_cluster_id(self.cluster_id)
        if isinstance(self.node_id, bool) or not isinstance(self.node_id, int) \
                or not 0 <= self.node_id < 2**31:
            raise ValueError(f"node id {self.node_id!r} is not an integer in 0..2^31-1")

    def to_text(self) -> str:
        return (f"#pylog data directory identity: do not edit\n"
                f"version={self.version}\ncluster.id={self.cluster_id}\nnode.id={self.node_id}\n")


def load_meta_properties(data_dir: str) -> MetaProperties | None:
    """The meta.properties of ``data_dir``, None if it has none."""
    path = os.path.join(data_dir, META_PROPERTIES_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptMetaPropertiesError(f"{path}: not UTF-8 text") from None
    props = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise CorruptMetaPropertiesError(f"{path}: line {number} is not key=value")
        props[key.strip()] = value.strip()
    missing = [k for k in ("version", "cluster.id", "node.id") if k not in props]
    if missing:
        raise CorruptMetaPropertiesError(f"{path}: missing {', '.join(missing)}")
    if props["version"] != str(META_VERSION):
        raise CorruptMetaPropertiesError(
            f"{path}: version {props['version']!r}, this pylog reads version {META_VERSION}")
    node_text = props["node.id"]
    if not node_text.isascii() or not node_text.isdigit():
        raise CorruptMetaPropertiesError(f"{path}: node.id {node_text!r} is not a number")
    try:
        return MetaProperties(cluster_id=props["cluster.id"], node_id=int(node_text))
    except ValueError as e:
        raise CorruptMetaPropertiesError(f"{path}: {e}") from None


def write_meta_properties(data_dir: str, meta: MetaProperties) -> None:
    """Atomically (re)write ``data_dir``'s meta.properties."""
    atomic_write(os.path.join(data_dir, META_PROPERTIES_NAME), meta.to_text().encode())


def ensure_meta_properties(data_dir: str, cluster_id: str, node_id: int) -> MetaProperties:
    """Stamp ``data_dir`` with (cluster_id, node_id) if unstamped, else check it matches.

    Creates ``data_dir`` if needed. Raises InconsistentClusterError or
    InconsistentNodeError if the directory belongs to another cluster or node.
    """
    wanted = MetaProperties(cluster_id=cluster_id, node_id=node_id)
    os.makedirs(data_dir, exist_ok=True)
    found = load_meta_properties(data_dir)
    if found is None:
        write_meta_properties(data_dir, wanted)
        return wanted
    if found.cluster_id != cluster_id:
        raise InconsistentClusterError(
            f"data directory {data_dir} belongs to cluster {found.cluster_id!r}, "
            f"not {cluster_id!r}; refusing to use it")
    if found.node_id != node_id:
        raise InconsistentNodeError(
            f"data directory {data_dir} belongs to node {found.node_id} of cluster "
            f"{cluster_id!r}, not node {node_id}; refusing to use it")
    return found


def _check_cluster_id(cluster_id: object) -> None:
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ValueError(f"cluster id {cluster_id!r} must be a non-empty string")
    if not cluster_id.isprintable() or cluster_id != cluster_id.strip() or "=" in cluster_id:
        raise ValueError(f"cluster id {cluster_id!r} must be printable, without '=' and "
                         "without surrounding whitespace")

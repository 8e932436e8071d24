"""The embedded controller: owns the cluster metadata, persists every change, then tells.

Theory of operation: every change runs on a copy of the current ``ClusterMetadata``; a
refused change (a MetadataError) is dropped with its copy. An accepted one is saved by the
``MetadataStore`` (atomic, durable) and only then becomes ``metadata`` and is handed to each
listener, in registration order. So whatever a listener acted on (a broker creating logs for a
new topic, a leader applying a new ISR) is already on disk: a crash can lose an answer to a
client, never a committed change that some broker already acted on.

Listeners are called synchronously, on the caller's thread (the event loop), with the new
metadata, which they must treat as read-only. A listener that raises is logged and skipped:
the change is committed whatever a listener thinks of it.

The store writes (and fsyncs) a small file on the calling thread. Changes are admin actions
(topic create/delete, broker registration, ISR changes), never per record or per request on
the data path.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pylog.controller.metadata import (BrokerInfo, ClusterMetadata, PartitionState,
                                       TopicInfo)
from pylog.controller.store import MetadataStore

__all__ = ["Controller", "ClusterIdMismatchError", "MetadataListener"]

_default_logger = logging.getLogger("pylog.controller")

MetadataListener = Callable[[ClusterMetadata], None]
_T = TypeVar("_T")


class ClusterIdMismatchError(Exception):
    """The metadata store belongs to another cluster."""


class Controller:
    """Single-node controller over a MetadataStore (the node is broker and controller)."""

    def __init__(self, store: MetadataStore, *, cluster_id: str, node_id: int,
                 default_partitions: int = 1, default_replication_factor: int = 1,
                 logger: logging.Logger | None = None):
        """Load the metadata from ``store`` (creating an empty cluster if there is none).
        ``default_partitions`` / ``default_replication_factor`` replace -1 in create_topic
        (Kafka's num.partitions / default.replication.factor)."""
        self.store = store
        self.node_id = node_id
        self.default_partitions = default_partitions
        self.default_replication_factor = default_replication_factor
        self.logger = logger or _default_logger
        self._listeners: list[MetadataListener] = []
        md = store.load()
        if md is None:
            md = ClusterMetadata(cluster_id, node_id)
            store.save(md)
            self.logger.info("new cluster %s: metadata in %s", cluster_id, store.path)
        elif md.cluster_id != cluster_id:
            raise ClusterIdMismatchError(
                f"{store.path} holds cluster {md.cluster_id!r}, not {cluster_id!r}")
        # Invariant: the metadata last saved by the store (the committed metadata).
        self._metadata = md
        if md.controller_id != node_id:
            self._commit(self._set_controller)

    @property
    def metadata(self) -> ClusterMetadata:
        """The committed metadata. Read-only for callers: change it through the methods."""
        return self._metadata

    # ---- listeners -----------------------------------------------------------------------

    def add_listener(self, callback: MetadataListener) -> None:
        """Call ``callback(metadata)`` after each committed change."""
        self._listeners.append(callback)

    def remove_listener(self, callback: MetadataListener) -> None:
        self._listeners.remove(callback)

    # ---- changes -------------------------------------------------------------------------

    def register_broker(self, info: BrokerInfo) -> None:
        self._commit(lambda md: md.register_broker(info))

    def create_topic(self, name: str, num_partitions: int = -1, replication_factor: int = -1,
                     configs: Mapping[str, Any] | None = None,
                     assignments: Mapping[int, Sequence[int]] | None = None, *,
                     validate_only: bool = False) -> TopicInfo:
        """Create a topic (see ClusterMetadata.create_topic); -1 partitions or replication
        factor mean the controller's defaults unless an assignment is given."""
        if assignments is None:
            if num_partitions == -1:
                num_partitions = self.default_partitions
            if replication_factor == -1:
                replication_factor = self.default_replication_factor
        if validate_only:
            return self._metadata.create_topic(name, num_partitions, replication_factor,
                                               configs, assignments, validate_only=True)
        return self._commit(lambda md: md.create_topic(name, num_partitions,
                                                       replication_factor, configs,
                                                       assignments))

    def delete_topic(self, name: str) -> TopicInfo:
        return self._commit(lambda md: md.delete_topic(name))

    def alter_partition(self, topic: str, partition: int, new_isr: Iterable[int],
                        partition_epoch: int, *, leader_id: int | None = None,
                        leader_epoch: int | None = None) -> PartitionState:
        """Commit an ISR change (ClusterMetadata.alter_partition)."""
        isr = list(new_isr)
        return self._commit(lambda md: md.alter_partition(
            topic, partition, isr, partition_epoch, leader_id=leader_id,
            leader_epoch=leader_epoch))

    # ---- internals -----------------------------------------------------------------------

    def _set_controller(self, md: ClusterMetadata) -> None:
        md.controller_id = self.node_id
        md.version += 1

    def _commit(self, change: Callable[[ClusterMetadata], _T]) -> _T:
        current = self._metadata
        candidate = current.copy()
        result = change(candidate)  # a MetadataError leaves everything as it was
        if candidate.version == current.version:
            return result  # nothing changed: nothing to persist or tell
        self.store.save(candidate)
        self._metadata = candidate
        for listener in list(self._listeners):
            try:
                listener(candidate)
            except Exception:
                self.logger.exception("metadata listener %r failed on version %d", listener,
                                      candidate.version)
        return result

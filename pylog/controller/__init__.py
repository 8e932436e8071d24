"""The cluster controller: metadata (sans IO), replica placement, the metadata store, and the
embedded single-node controller that persists changes before telling its listeners."""
from pylog.controller.controller import ClusterIdMismatchError, Controller, MetadataListener
from pylog.controller.metadata import (
    BrokerInfo,
    ClusterMetadata,
    FencedLeaderEpochError,
    IneligibleReplicaError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicaAssignmentError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    InvalidTopicError,
    MetadataError,
    NotLeaderError,
    PartitionState,
    StalePartitionEpochError,
    TopicExistsError,
    TopicInfo,
    UnknownTopicError,
)
from pylog.controller.placement import assign_replicas, rack_alternated_brokers
from pylog.controller.store import CorruptMetadataError, MetadataStore

__all__ = [
    "BrokerInfo", "ClusterIdMismatchError", "ClusterMetadata", "Controller",
    "CorruptMetadataError", "FencedLeaderEpochError", "IneligibleReplicaError",
    "InvalidConfigError", "InvalidPartitionsError", "InvalidReplicaAssignmentError",
    "InvalidReplicationFactorError", "InvalidRequestError", "InvalidTopicError",
    "MetadataError", "MetadataListener", "MetadataStore", "NotLeaderError", "PartitionState",
    "StalePartitionEpochError", "TopicExistsError", "TopicInfo", "UnknownTopicError",
    "assign_replicas", "rack_alternated_brokers",
]

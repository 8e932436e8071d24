"""A broker's core without the network, for tests: LogManager + Controller + ReplicaManager
in a temporary data directory, and batch builders."""
from __future__ import annotations

import time

from pylog.broker.replica_manager import FetchPartitionRequest, ReplicaManager
from pylog.controller import BrokerInfo, Controller, MetadataStore
from pylog.records import build_batch, iter_records
from pylog.storage.manager import LogManager

CLUSTER_ID = "test-cluster"


class Stack:
    """Broker ``node_id`` with its data in ``data_dir``; ``brokers`` are registered with the
    controller (the others are simulated by the test)."""

    def __init__(self, data_dir, *, node_id: int = 1, brokers=(1,), fsync=None, clock=None,
                 loop=None, lag_ms: int = 30000, default_partitions: int = 1):
        self.data_dir = str(data_dir)
        self.log_manager = LogManager(self.data_dir, cluster_id=CLUSTER_ID, node_id=node_id,
                                      fsync=fsync)
        self.controller = Controller(MetadataStore.in_data_dir(self.data_dir),
                                     cluster_id=CLUSTER_ID, node_id=node_id,
                                     default_partitions=default_partitions)
        for broker in brokers:
            self.controller.register_broker(BrokerInfo(broker, "127.0.0.1", 9000 + broker,
                                                       None))
        self.rm = ReplicaManager(node_id, self.log_manager, self.controller,
                                 clock=clock or time.monotonic, loop=loop,
                                 replica_lag_time_max_ms=lag_ms)

    async def close(self) -> None:
        await self.rm.close()
        self.log_manager.close()


def batch(count: int = 1, *, value_size: int = 10, timestamp: int | None = 1000,
          key: bytes = b"k") -> bytearray:
    """A writable batch of ``count`` records (as a Produce request carries it)."""
    return bytearray(build_batch(
        [(key + str(i).encode(), bytes([65 + i % 26]) * value_size, (("h", b"x"),),
          timestamp) for i in range(count)]))


def offsets_of(records) -> list[int]:
    return [r.offset for r in iter_records(records)]


def fetch_request(topic: str, partition: int, offset: int, max_bytes: int = 1 << 20,
                  epoch: int = -1) -> FetchPartitionRequest:
    return FetchPartitionRequest(topic, partition, offset, max_bytes, epoch)

"""``Broker``: one broker process's parts, put together, started and stopped.

Start-up, in the order that keeps a failure harmless:
  1. LogManager: locks the data directory, checks (or stamps) meta.properties — a directory of
     another cluster or node is refused here, before anything is written — and opens every
     partition log (recovering after a crash, skipping recovery after a clean stop).
  2. Controller: loads the cluster metadata from the data directory (MetadataStore).
  3. Producer-id allocator, BrokerMetrics, ReplicaManager (which takes leadership of every
     partition the metadata gives this node).
  4. The Kafka listener, then this broker's registration with its advertised address (the
     port is known only once bound), ``__consumer_offsets`` (created if missing) and the
     group coordinator, which loads the offsets partitions this broker leads, then the HTTP
     control plane.
  5. ``ready`` = True: /health answers 200.
If any step fails, the steps before it are undone (the directory lock is released).

Stop (SIGTERM, SIGINT or ``stop()``), bounded by ``shutdown.timeout.ms``:
  ready = False; stop accepting connections and stop reading requests; close the
  ReplicaManager, which lets fsyncs in flight finish and ends every parked operation at once
  (a long-poll fetch answers with what there is, as if its wait were over; an acks=all produce
  still short of its replicas gets a retriable error); wait, within the bound, until every
  request already taken is answered and written; close the connections and the control plane;
  close the LogManager (flush, checkpoints, then the clean-shutdown marker). A process killed
  instead recovers from the checkpoints on the next start; nothing acknowledged is lost either
  way (DESIGN §4).

Periodic work on the event loop: the ReplicaManager's (ISR expiry, offset checkpoints every
``replica.high.watermark.checkpoint.interval.ms``, written on the Flusher thread) and retention
every ``log.retention.check.interval.ms``. Log compaction (cleanup.policy=compact) runs on the
LogManager's cleaner thread, never on the event loop; it starts once the broker is up and
stops when the LogManager closes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pylog.broker.config import BrokerConfig, new_cluster_id
from pylog.broker.group import GroupConfig, GroupCoordinator, OffsetsTopic, ensure_offsets_topic
from pylog.broker.handlers import build_handlers
from pylog.broker.http import create_control_app
from pylog.broker.metrics import BrokerMetrics
from pylog.broker.producer_ids import ProducerIdAllocator
from pylog.broker.replica_manager import ReplicaManager
from pylog.broker.server import KafkaServer
from pylog.controller import BrokerInfo, Controller, MetadataStore
from pylog.storage.config import ConfigError, LogConfig
from pylog.storage.manager import LogManager
from pylog.storage.meta import load_meta_properties

log = logging.getLogger("pylog.broker")

class ListenError(OSError):
    """An address the broker cannot listen on (in use, not local, no permission)."""

    def __init__(self, what: str, host: str, port: int, cause: OSError):
        reason = (cause.strerror or str(cause)).rsplit(": ", 1)[-1]
        super().__init__(cause.errno, f"cannot listen on {host}:{port} ({what}): {reason}")
        self.what = what


class Broker:
    """A single broker, which is also the controller of its one-node cluster.

    Attributes for the control plane and tests (set by ``start``): ``config``,
    ``log_manager``, ``controller``, ``replica_manager``, ``producer_ids``, ``metrics``,
    ``server``, ``ready``, ``port`` / ``control_port`` (bound), ``startup_seconds``.
    """

    def __init__(self, config: BrokerConfig):
        self.config = config
        self.cluster_id: str | None = config.cluster_id
        self.log_manager: LogManager | None = None
        self.controller: Controller | None = None
        self.replica_manager: ReplicaManager | None = None
        self.producer_ids: ProducerIdAllocator | None = None
        self.metrics: BrokerMetrics | None = None
        self.group_coordinator: GroupCoordinator | None = None
        self.server: KafkaServer | None = None
        # True exactly while the broker takes traffic (after start, until stop begins).
        self.ready = False
        self.port: int | None = None
        self.control_port: int | None = None
        self.startup_seconds: float | None = None
        self._runner: web.AppRunner | None = None
        self._periodic: list[asyncio.Task] = []
        self._stopping: asyncio.Task | None = None
        self._started = False

    # ---- what handlers and the control plane read ----------------------------------------

    @property
    def node_id(self) -> int:
        return self.config.node_id

    @property
    def advertised_host(self) -> str:
        return self.config.advertised_hostname

    @property
    def advertised_port(self) -> int:
        return self.config.advertised_port or self.port or self.config.port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"{self.advertised_host}:{self.advertised_port}"

    @property
    def control_url(self) -> str:
        return f"http://{_url_host(self.config.control_host)}:{self.control_port}"

    # ---- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the data, start listening, and become ready. Raises on failure (the
        directory lock is released again): OSError (address in use, unreadable data
        directory), pylog.storage.meta.MetaPropertiesError (another cluster's or node's
        directory), DataDirectoryLockedError (another broker uses it), ..."""
        if self._started:
            raise RuntimeError("broker already started")
        self._started = True
        began = time.perf_counter()
        config = self.config
        try:
            self.cluster_id = self.cluster_id or _cluster_id_of(config.data_dir)
            store = MetadataStore.in_data_dir(config.data_dir)
            stored = store.load() if os.path.isdir(config.data_dir) else None
            default_log_config = config.log_config()
            self.log_manager = LogManager(
                config.data_dir, cluster_id=self.cluster_id, node_id=config.node_id,
                default_config=default_log_config, fsync=config.fsync,
                config_for=_topic_configs(stored, default_log_config))
            self.controller = Controller(
                store, cluster_id=self.cluster_id, node_id=config.node_id,
                default_partitions=config.num_partitions,
                default_replication_factor=config.default_replication_factor)
            self.producer_ids = ProducerIdAllocator.in_data_dir(config.data_dir)
            self.metrics = BrokerMetrics()
            self.replica_manager = ReplicaManager(
                config.node_id, self.log_manager, self.controller,
                replica_lag_time_max_ms=config.replica_lag_time_max_ms,
                checkpoint_interval_ms=config.checkpoint_interval_ms)
            self.metrics.replica_manager = self.replica_manager
            self.server = KafkaServer(config, build_handlers(self), self.metrics)
            try:
                _, self.port = await self.server.start()
            except OSError as exc:
                raise ListenError("Kafka listener", config.host, config.port, exc) from None
            self.controller.register_broker(BrokerInfo(config.node_id, self.advertised_host,
                                                       self.advertised_port, None))
            group_config = GroupConfig.from_broker_config(config)
            self.group_coordinator = GroupCoordinator(group_config, OffsetsTopic(
                self.replica_manager, ensure_offsets_topic(self.controller, group_config),
                commit_timeout_ms=group_config.offsets_commit_timeout_ms))
            self.group_coordinator.start(self.controller)
            await self.group_coordinator.wait_loaded()
            self._runner = web.AppRunner(create_control_app(self), access_log=None,
                                         handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, config.control_host, config.control_port,
                               reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise ListenError("control plane", config.control_host, config.control_port,
                                  exc) from None
            self.control_port = _bound_port(self._runner, config.control_port)
        except BaseException:
            await self._undo_start()
            raise
        self.replica_manager.start()
        # Compaction runs on the cleaner's own thread; LogManager.close() stops it.
        self.log_manager.start_cleaner()
        self._periodic = [
            asyncio.create_task(self._every(config.log_retention_check_interval_ms,
                                            self._retention), name="pylog-retention"),
        ]
        self.ready = True
        self.startup_seconds = time.perf_counter() - began
        log.info("broker %d of cluster %s ready in %.3f s: %d partitions in %s",
                 config.node_id, self.cluster_id, self.startup_seconds, len(self.log_manager),
                 self.log_manager.data_dir)

    async def _undo_start(self) -> None:
        if self.group_coordinator is not None:
            await self.group_coordinator.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.server is not None:
            await self.server.close_all()
        if self.replica_manager is not None:
            try:
                await self.replica_manager.close()
            except Exception:
                log.exception("closing the replica manager after a failed start")
        if self.log_manager is not None:
            try:
                self.log_manager.close()
            except Exception:
                log.exception("closing the logs after a failed start")

    # ---- stop -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Clean shutdown (module docstring). Safe to call more than once, and concurrently:
        every caller waits for the one shutdown."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if not self._started:
            return
        self.ready = False
        budget = self.config.shutdown_timeout_ms / 1000
        began = time.perf_counter()
        log.info("broker %d stopping", self.config.node_id)
        for task in self._periodic:
            task.cancel()
        await asyncio.gather(*self._periodic, return_exceptions=True)
        self._periodic = []
        if self.server is not None:
            self.server.stop_accepting()
        if self.group_coordinator is not None:
            try:
                await self.group_coordinator.close()
            except Exception:
                log.exception("closing the group coordinator failed")
        if self.replica_manager is not None:
            try:
                await self.replica_manager.close()
            except Exception:
                log.exception("closing the replica manager failed")
        if self.server is not None:
            remaining = max(0.0, budget - (time.perf_counter() - began))
            if not await self.server.drain(remaining):
                log.warning("%d requests unanswered after %.1f s; closing their connections",
                            self.server.inflight(), budget)
            await self.server.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.log_manager is not None:
            self.log_manager.close()
        log.info("broker %d stopped cleanly in %.3f s", self.config.node_id,
                 time.perf_counter() - began)

    # ---- periodic work --------------------------------------------------------------------

    async def _every(self, interval_ms: int, work: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                work()
            except Exception:
                log.exception("periodic %s failed", getattr(work, "__name__", work))

    def _retention(self) -> None:
        deleted = self.log_manager.run_retention()
        if deleted:
            log.info("retention deleted %d segments", deleted)


async def serve(config: BrokerConfig, *, on_ready: Callable[[Broker], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run a broker until SIGTERM or SIGINT (or ``stop`` is set), then stop it cleanly.

    ``on_ready(broker)`` is called once it takes traffic. A second signal while stopping is
    ignored (the stop is bounded by shutdown.timeout.ms).
    """
    import signal

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals
            pass
    broker = Broker(config)
    try:
        await broker.start()
        if on_ready is not None:
            on_ready(broker)
        await stop.wait()
    finally:
        await broker.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)


# ---- helpers ------------------------------------------------------------------------------


def _cluster_id_of(data_dir: str) -> str:
    """The cluster id stamped in ``data_dir``, or a new one for a new directory."""
    meta = load_meta_properties(data_dir) if os.path.isdir(data_dir) else None
    return meta.cluster_id if meta is not None else new_cluster_id()


def _topic_configs(stored: Any, default: LogConfig) -> Callable[[str], LogConfig]:
    """``config_for(topic)`` for the LogManager's opening scan: each topic's persisted
    configs over the broker defaults (the ReplicaManager keeps them current afterwards)."""
    topics = stored.topics if stored is not None else {}

    def config_for(topic: str) -> LogConfig:
        info = topics.get(topic)
        if info is None or not info.configs:
            return default
        try:
            return LogConfig.from_kafka(info.configs, base=default, ignore_unknown=True)
        except ConfigError as exc:
            log.error("topic %s: stored configs are invalid (%s); using the defaults",
                      topic, exc)
            return default
    return config_for


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return address[1]
    return configured


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host

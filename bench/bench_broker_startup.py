"""Broker start-up time (issue: "well under a second").

    pytest bench/bench_broker_startup.py --benchmark-only

In process: ``Broker.start()`` + ``stop()`` on a data directory holding 100 partitions with a
little data each, after a clean shutdown (no recovery scan) and after a crash (recovery from
the recovery points). Subprocess: ``python -m pylog.cli serve`` until GET /health answers 200,
which adds the interpreter and the imports (aiohttp and kio dominate them).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from pylog.broker.app import Broker
from pylog.broker.config import BrokerConfig
from pylog.records import build_batch

PARTITIONS = 100
BATCHES_PER_PARTITION = 20


def _populate(data_dir: str) -> None:
    async def fill():
        broker = Broker(BrokerConfig(data_dir=data_dir, port=0, control_port=0))
        await broker.start()
        broker.controller.create_topic("startup", PARTITIONS, 1)
        batch = build_batch([(b"k", b"v" * 200, (), 1_700_000_000_000)] * 50)
        for index in range(PARTITIONS):
            for _ in range(BATCHES_PER_PARTITION):
                result = await broker.replica_manager.produce(
                    1, 1000, {("startup", index): memoryview(bytearray(batch))})
                assert result[("startup", index)].error_code == 0
        await broker.stop()
    asyncio.run(fill())


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("startup") / "data")
    _populate(data_dir)
    return data_dir


def _start_stop(data_dir: str) -> None:
    async def cycle():
        broker = Broker(BrokerConfig(data_dir=data_dir, port=0, control_port=0))
        await broker.start()
        await broker.stop()
    asyncio.run(cycle())


def test_start_after_clean_shutdown(benchmark, populated):
    benchmark.pedantic(_start_stop, args=(populated,), rounds=10, warmup_rounds=1)


def test_start_after_crash(benchmark, populated, tmp_path):
    crashed = str(tmp_path / "crashed")

    def setup():
        shutil.rmtree(crashed, ignore_errors=True)
        shutil.copytree(populated, crashed)
        os.unlink(os.path.join(crashed, ".clean_shutdown"))
        return (crashed,), {}

    benchmark.pedantic(_start_stop, setup=setup, rounds=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_until_healthy(data_dir: str) -> None:
    port, control = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pylog.cli", "serve", "--data-dir", data_dir, "--port",
         str(port), "--control-port", str(control)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{control}/health",
                                            timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.005)
        raise AssertionError("broker not healthy within 30 s")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(30)


def test_process_start_to_health(benchmark, populated):
    benchmark.pedantic(_serve_until_healthy, args=(populated,), rounds=5)

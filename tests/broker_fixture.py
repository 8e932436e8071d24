"""A real ``pylog serve`` subprocess for integration tests.

``broker_factory`` (registered in conftest.py) gives a ``start(**options)`` function; each call
starts ``python -m pylog.cli serve`` on free 127.0.0.1 ports, waits (with a deadline) until
GET /health answers 200, and returns a ``RunningBroker``: ``bootstrap`` ("127.0.0.1:PORT"),
``control_url``, ``pid``, ``data_dir`` and ``port``. Unpacking it gives (bootstrap,
control_url, pid, data_dir). ``stop()`` sends SIGTERM and waits, then SIGKILL after a deadline;
``kill()`` is SIGKILL at once (a crash). Starting again on the same ``data_dir`` is a restart.
Every process still running at the end of the test is stopped by its pid, and when a test
fails, the stderr of every broker it started is printed (pytest shows it with the failure).

``broker`` is the one-broker shortcut: the factory's first broker, on a fresh data directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 15.0
_POLL_S = 0.02


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningBroker:
    process: subprocess.Popen
    port: int
    control_port: int
    data_dir: str
    log_path: str
    started_in_s: float = 0.0
    exit_code: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def __iter__(self):
        return iter((self.bootstrap, self.control_url, self.pid, self.data_dir))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def health(self, timeout: float = 2.0) -> tuple[int, dict]:
        """(HTTP status, JSON body) of GET /health; status 0 if it cannot connect."""
        try:
            with urllib.request.urlopen(f"{self.control_url}/health", timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, {}
        except (OSError, ValueError):
            return 0, {}

    def stop(self, deadline: float = STOP_DEADLINE_S) -> int:
        """SIGTERM, wait up to ``deadline`` s, then SIGKILL; the exit status."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(deadline)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(deadline)
        self.exit_code = self.process.returncode
        return self.exit_code

    def kill(self) -> int:
        """SIGKILL (a crash); the exit status."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(STOP_DEADLINE_S)
        self.exit_code = self.process.returncode
        return self.exit_code

    def rss_bytes(self) -> int:
        """Resident memory of the broker process (Linux /proc)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


class BrokerStartError(AssertionError):
    pass


class BrokerFactory:
    """Starts brokers for one test and cleans up after it."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.started: list[RunningBroker] = []

    def start(self, data_dir: str | os.PathLike | None = None, *, settings: dict | None = None,
              args: list[str] | None = None, port: int | None = None,
              control_port: int | None = None, wait: bool = True) -> RunningBroker:
        """Start a broker (``settings``: --set key=value; ``args``: more CLI flags). With
        ``wait`` (default) it returns once /health is 200, else raises BrokerStartError with
        the broker's stderr."""
        data_dir = str(data_dir or self.tmp_path / f"data-{len(self.started)}")
        port = port or free_port()
        control_port = control_port or free_port()
        log_path = str(self.tmp_path / f"broker-{len(self.started)}.stderr")
        command = [sys.executable, "-m", "pylog.cli", "serve", "--data-dir", data_dir,
                   "--host", "127.0.0.1", "--port", str(port),
                   "--control-host", "127.0.0.1", "--control-port", str(control_port),
                   "--log-level", "info"]
        for key, value in (settings or {}).items():
            command += ["--set", f"{key}={value}"]
        command += list(args or ())
        began = time.monotonic()
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=log_file,
                                       cwd=os.path.dirname(os.path.dirname(__file__)))
        running = RunningBroker(process, port, control_port, data_dir, log_path)
        self.started.append(running)
        if wait:
            self.wait_ready(running)
            running.started_in_s = time.monotonic() - began
        return running

    def wait_ready(self, running: RunningBroker, deadline: float = START_DEADLINE_S) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if not running.alive():
                raise BrokerStartError(f"broker exited with {running.process.returncode} "
                                       f"before it was ready:\n{running.stderr()}")
            if running.health(timeout=0.5)[0] == 200:
                return
            time.sleep(_POLL_S)
        running.stop()
        raise BrokerStartError(f"broker not ready within {deadline} s:\n{running.stderr()}")

    def cleanup(self, failed: bool) -> None:
        for running in self.started:
            with contextlib.suppress(Exception):
                running.stop()
        if failed:
            for index, running in enumerate(self.started):
                sys.stderr.write(f"\n---- stderr of broker {index} (pid {running.pid}, "
                                 f"exit {running.exit_code}) ----\n{running.stderr()}")


@pytest.fixture
def broker_factory(tmp_path, request):
    factory = BrokerFactory(tmp_path)
    yield factory
    report = getattr(request.node, "rep_call", None)
    factory.cleanup(failed=report is not None and report.failed)


@pytest.fixture
def broker(broker_factory):
    return broker_factory.start()

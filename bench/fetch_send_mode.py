"""Fetch: copy vs sendfile (fetch.send.mode), alternated round by round in one run.

Two ``pylog serve`` brokers, one per mode, each with the same topic produced by kbench
(confluent-kafka); then, for each record size, rounds of kbench consume (confluent-kafka,
--verify seq) against the copy broker and the sendfile broker in turn (the order flips every
round). Prints one JSON line per consume run and a summary: median MB/s per mode, the median
of the per-round ratio sendfile/copy, and the broker's CPU seconds per GB of payload.

    python bench/fetch_send_mode.py --rounds 5 --records 1024:300000,100:2000000 \
        --raw-fetch-bytes 1048576
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KBENCH = "/work/shared/peers/kbench.py"
MODES = ("copy", "sendfile")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(data_dir: str, mode: str) -> tuple[subprocess.Popen, int]:
    port, control = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pylog.cli", "serve", "--data-dir", data_dir, "--host",
         "127.0.0.1", "--port", str(port), "--control-host", "127.0.0.1", "--control-port",
         str(control), "--set", f"fetch.send.mode={mode}", "--log-level", "warning"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{control}/health", timeout=1) as r:
                if r.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{mode} broker did not start")


def kbench(port: int, pid: int, topic: str, records: int, size: int, mode: str,
           label: str) -> dict:
    command = [sys.executable, KBENCH, "--bootstrap", f"127.0.0.1:{port}", "--topic", topic,
               "--records", str(records), "--size", str(size), "--client", "confluent",
               "--mode", mode, "--broker-pid", str(pid), "--timeout", "180",
               "--label", label]
    if mode == "produce":
        command += ["--create-topic", "--partitions", "1", "--acks", "1"]
    else:
        command += ["--verify", "seq"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=ROOT)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    result = json.loads(line)
    if not result.get("ok"):
        raise RuntimeError(f"kbench {label} failed: {result.get('errors')} {out.stderr[-500:]}")
    return result


def broker_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_consume(port: int, pid: int, topic: str, fetch_bytes: int, passes: int) -> dict:
    """Read the whole partition 0 ``passes`` times with back-to-back Fetch v4 requests of
    ``fetch_bytes``, receiving into one reused buffer: a client that costs next to nothing
    per byte, so the broker is what is measured."""
    name = topic.encode()
    buffer = bytearray(fetch_bytes + (1 << 20))
    view = memoryview(buffer)
    offset, total, correlation = 0, 0, 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        cpu0, wall0 = broker_cpu_s(pid), time.perf_counter()
        for _ in range(passes):
            offset = 0
            while True:
                offset, size = _raw_fetch(sock, buffer, view, name, offset, fetch_bytes,
                                          correlation := correlation + 1)
                if size == 0:
                    break
                total += size
        wall, cpu = time.perf_counter() - wall0, broker_cpu_s(pid) - cpu0
    return {"bytes": total, "next_offset": offset, "MB_per_s": round(total / wall / 1e6, 1),
            "broker_cpu_s": round(cpu, 3), "broker_cpu_s_per_GB": round(cpu / (total / 1e9), 3)}


def _raw_fetch(sock, buffer, view, name, offset, fetch_bytes, correlation):
    """One Fetch v4 at ``offset``: (the offset after its last whole batch, records bytes)."""
    body = (struct.pack(">iiiib", -1, 0, 1, fetch_bytes, 0) + struct.pack(">ih", 1, len(name))
            + name + struct.pack(">iiqi", 1, 0, offset, fetch_bytes))
    header = struct.pack(">hhih", 1, 4, correlation, 3) + b"raw"
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    got = 0
    while got < 4 or got < 4 + struct.unpack_from(">i", buffer)[0]:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("broker closed the connection")
        got += n
    at = 4 + 4 + 4 + 4 + 2 + len(name) + 4 + 4 + 2 + 8 + 8
    aborted = struct.unpack_from(">i", buffer, at)[0]
    at += 4 + max(aborted, 0) * 16
    size = struct.unpack_from(">i", buffer, at)[0]
    at += 4
    if size <= 0:
        return offset, 0
    end, last = at + size, -1
    while at + 27 <= end:
        base, length = struct.unpack_from(">qi", buffer, at)
        if at + 12 + length > end:
            break
        last = base + struct.unpack_from(">i", buffer, at + 23)[0]
        at += 12 + length
    if last < offset:
        return offset, 0
    return last + 1, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", default="1024:300000,100:2000000",
                        help="SIZE:RECORDS pairs, comma-separated")
    parser.add_argument("--raw-fetch-bytes", type=int, default=0,
                        help="also read each topic with a raw Fetch v4 loop of this max_bytes "
                             "(broker-bound), alternating the modes the same way")
    parser.add_argument("--raw-passes", type=int, default=10,
                        help="times each raw read goes over the whole topic")
    args = parser.parse_args()
    workloads = [tuple(int(x) for x in item.split(":")) for item in args.records.split(",")]
    with tempfile.TemporaryDirectory(prefix="fetch-send-mode-", dir="/tmp") as tmp:
        brokers = {mode: start_broker(os.path.join(tmp, mode), mode) for mode in MODES}
        try:
            summary = {}
            for size, records in workloads:
                topic = f"fsm-{size}"
                for mode, (process, port) in brokers.items():
                    kbench(port, process.pid, topic, records, size, "produce",
                           f"produce-{mode}-{size}")
                runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
                for round_index in range(args.rounds):
                    order = MODES if round_index % 2 == 0 else MODES[::-1]
                    for mode in order:
                        process, port = brokers[mode]
                        result = kbench(port, process.pid, topic, records, size, "consume",
                                        f"consume-{mode}-{size}-r{round_index}")
                        result["send_mode"] = mode
                        print(json.dumps(result), flush=True)
                        runs[mode].append(result)
                if args.raw_fetch_bytes:
                    raw: dict[str, list[dict]] = {mode: [] for mode in MODES}
                    for round_index in range(args.rounds):
                        order = MODES if round_index % 2 == 0 else MODES[::-1]
                        for mode in order:
                            process, port = brokers[mode]
                            result = raw_consume(port, process.pid, topic, args.raw_fetch_bytes,
                                                 args.raw_passes)
                            if result["next_offset"] != records:
                                raise RuntimeError(f"raw read ended at {result}")
                            result.update(label=f"raw-{mode}-{size}-r{round_index}",
                                          send_mode=mode)
                            print(json.dumps(result), flush=True)
                            raw[mode].append(result)
                    summary[f"raw-{size}"] = {
                        mode: {"MB_per_s_median": statistics.median(r["MB_per_s"] for r in rs),
                               "broker_cpu_s_per_GB_median": statistics.median(
                                   r["broker_cpu_s_per_GB"] for r in rs)}
                        for mode, rs in raw.items()}
                    summary[f"raw-{size}"]["ratio_sendfile_over_copy_median"] = round(
                        statistics.median(s["MB_per_s"] / c["MB_per_s"]
                                          for s, c in zip(raw["sendfile"], raw["copy"])), 3)
                gb = records * size / 1e9
                summary[size] = {
                    mode: {"MB_per_s_median": statistics.median(r["MB_per_s"] for r in rs),
                           "records_per_s_median": statistics.median(
                               r["records_per_s"] for r in rs),
                           "broker_cpu_s_per_GB_median": round(statistics.median(
                               r["broker_cpu_s"] / gb for r in rs), 2)}
                    for mode, rs in runs.items()}
                summary[size]["ratio_sendfile_over_copy_median"] = round(statistics.median(
                    s["MB_per_s"] / c["MB_per_s"]
                    for s, c in zip(runs["sendfile"], runs["copy"])), 3)
            print(json.dumps({"summary": summary}), flush=True)
        finally:
            for process, _ in brokers.values():
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    main()

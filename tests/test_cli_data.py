"""The `pylog` data commands against a real broker process: topic create/list/describe/delete,
produce from stdin (keys, headers, acks, partition), consume (--format, --max-messages,
--offset, --partition, --timeout-ms), bench produce/consume summaries, and one-line errors."""
import itertools
import re
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from client_support import broker  # noqa: F401 - fixture
from pylog.cli import main
from pylog.client import murmur2_partition

_names = itertools.count()


def unique(prefix="cli"):
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**9}"


def pylog(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input,
                              catch_exceptions=False)


def test_topic_create_list_describe_delete(broker):
    name = unique()
    created = pylog("topic", "create", name, "--partitions", 3, "--config",
                    "retention.ms=60000", "-b", broker.bootstrap)
    assert created.exit_code == 0, created.output
    assert created.stdout == f"created topic {name} (3 partitions, replication factor 1)\n"
    listed = pylog("topic", "list", "-b", broker.bootstrap)
    assert name in listed.stdout.split()
    produced = pylog("produce", name, "-b", broker.bootstrap, "--partition", 1,
                     input="a\nb\nc\n")
    assert produced.exit_code == 0, produced.output
    control = broker.control or "http://127.0.0.1:1"
    described = pylog("topic", "describe", name, "-b", broker.bootstrap, "--control", control)
    assert described.exit_code == 0, described.output
    lines = described.stdout.splitlines()
    assert lines[0] == f"Topic: {name}  partitions: 3  replication factor: 1"
    header = lines[1].split()
    rows = [dict(zip(header, line.split())) for line in lines[2:]]
    assert [r["partition"] for r in rows] == ["0", "1", "2"]
    assert all(r["replicas"] == r["leader"] == r["isr"] for r in rows)
    if broker.kind == "pylog":
        assert header == ["partition", "leader", "epoch", "replicas", "isr", "log-start",
                          "leo", "hw", "size"]
        assert [(r["leo"], r["hw"]) for r in rows] == [("0", "0"), ("3", "3"), ("0", "0")]
        assert int(rows[1]["size"]) > 0 and rows[0]["size"] == "0"
    deleted = pylog("topic", "delete", name, "-b", broker.bootstrap)
    assert deleted.exit_code == 0 and deleted.stdout == f"deleted topic {name}\n"
    assert name not in pylog("topic", "list", "-b", broker.bootstrap).stdout.split()


def test_describe_without_control_plane_notes_it(broker):
    name = unique()
    pylog("topic", "create", name, "-b", broker.bootstrap)
    described = pylog("topic", "describe", name, "-b", broker.bootstrap,
                      "--control", "http://127.0.0.1:1")
    assert described.exit_code == 0
    assert described.stdout.splitlines()[1].split() == ["partition", "leader", "epoch",
                                                        "replicas", "isr"]
    assert re.fullmatch(r"note: control plane http://127.0.0.1:1 unreachable \(.*\); log start, "
                        r"LEO, HW and size not shown\n", described.stderr)


def test_produce_keys_and_headers_then_consume_with_format(broker):
    name = unique()
    pylog("topic", "create", name, "--partitions", 4, "-b", broker.bootstrap)
    lines = [f"key{i}:value {i}" for i in range(300)] + ["no separator here"]
    produced = pylog("produce", name, "-b", broker.bootstrap, "-K", ":", "--acks", "1",
                     "-H", "src=cli", "-H", "n=1", input="\n".join(lines) + "\n")
    assert produced.exit_code == 0, produced.output
    assert produced.stderr == f"produced 301 records to {name}\n"
    consumed = pylog("consume", name, "-b", broker.bootstrap, "--from-beginning",
                     "--max-messages", 301, "--format", r"%T|%p|%o|%k|%v|%h|%K|%S\n")
    assert consumed.exit_code == 0, consumed.output
    assert consumed.stderr == "consumed 301 records\n"
    rows = [line.split("|") for line in consumed.stdout.splitlines()]
    assert len(rows) == 301
    seen = {}
    for topic, partition, offset, key, value, headers, key_len, value_len in rows:
        assert topic == name and headers == "src=cli,n=1"
        assert int(value_len) == len(value)
        if key:
            assert int(partition) == murmur2_partition(key.encode(), 4)
            assert value == f"value {key[3:]}" and int(key_len) == len(key)
        else:
            assert value == "no separator here" and key_len == "-1"
        seen.setdefault(partition, []).append(int(offset))
    assert all(offsets == list(range(len(offsets))) for offsets in seen.values())


def test_consume_offsets_partition_and_idle_timeout(broker):
    name = unique()
    pylog("topic", "create", name, "--partitions", 2, "-b", broker.bootstrap)
    pylog("produce", name, "-b", broker.bootstrap, "-p", 1,
          input="".join(f"m{i}\n" for i in range(10)))

    def consume(*args):
        result = pylog("consume", name, "-b", broker.bootstrap, "--timeout-ms", 300, *args)
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert consume("-p", 1, "--offset", 7) == ["m7", "m8", "m9"]
    assert consume("-p", 1, "--offset", -2) == ["m8", "m9"]
    assert consume("-p", 1, "--offset", "earliest", "-f", r"%o\n") == [str(i) for i in range(10)]
    assert consume("-p", 0, "--from-beginning") == []
    assert consume("--offset", "latest") == []
    assert consume("--from-beginning", "--max-messages", 4) == ["m0", "m1", "m2", "m3"]


def test_bench_produce_and_consume_print_a_summary(broker):
    name = unique("bench")
    produced = pylog("bench", "produce", "-b", broker.bootstrap, "--topic", name, "--records",
                     3000, "--size", 200, "--acks", "all", "--partitions", 2, "--linger-ms", 1,
                     "--batch-size", 16384)
    assert produced.exit_code == 0, produced.output
    summary = re.fullmatch(
        r"produce: 3000 records, 0\.6 MB in [\d.]+ s: [\d,]+ records/s, [\d.]+ MB/s; "
        r"ack latency p50 ([\d.]+) ms, p99 ([\d.]+) ms\n", produced.stdout)
    assert summary, produced.stdout
    assert 0 < float(summary[1]) <= float(summary[2])
    consumed = pylog("bench", "consume", "-b", broker.bootstrap, "--topic", name, "--records",
                     3000)
    assert consumed.exit_code == 0, consumed.output
    assert re.fullmatch(r"consume: 3000 records, 0\.6 MB in [\d.]+ s: [\d,]+ records/s, "
                        r"[\d.]+ MB/s; fetch latency p50 [\d.]+ ms, p99 [\d.]+ ms\n",
                        consumed.stdout), consumed.stdout


def test_remote_errors_are_one_line(broker):
    name = unique()
    pylog("topic", "create", name, "-b", broker.bootstrap)
    again = pylog("topic", "create", name, "-b", broker.bootstrap)
    assert again.exit_code == 1
    assert again.stderr.startswith("pylog: TOPIC_ALREADY_EXISTS") and \
        again.stderr.count("\n") == 1
    missing = pylog("consume", unique("missing"), "-b", broker.bootstrap, "--timeout-ms", 100)
    assert missing.exit_code == 1
    assert missing.stderr.startswith("pylog: UNKNOWN_TOPIC_OR_PARTITION")
    assert missing.stderr.count("\n") == 1
    bad_partition = pylog("consume", name, "-b", broker.bootstrap, "-p", 5)
    assert bad_partition.exit_code == 1 and "has no partition 5" in bad_partition.stderr


@pytest.mark.parametrize("args", [
    ["topic", "list"],
    ["topic", "create", "x"],
    ["consume", "x"],
    ["bench", "produce", "--records", "10"],
])
def test_unreachable_broker_is_one_line_and_non_zero(args):
    result = subprocess.run([sys.executable, "-m", "pylog.cli", *args, "--bootstrap",
                             "127.0.0.1:1"], input=b"", capture_output=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == \
        "pylog: cannot reach 127.0.0.1:1: connection refused"
    assert b"Traceback" not in result.stderr


def test_produce_to_unreachable_broker_from_stdin():
    result = subprocess.run([sys.executable, "-m", "pylog.cli", "produce", "t", "-b",
                             "127.0.0.1:1"], input=b"a\n", capture_output=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == b"pylog: cannot reach 127.0.0.1:1: connection refused\n"

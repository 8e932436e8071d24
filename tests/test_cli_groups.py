"""`pylog consume --group`, `pylog group list|describe|delete` against `pylog serve`:
consuming as a group commits exactly what was printed and a second run goes on from there;
describe shows members, partitions, committed offsets, end offsets and lag; a SIGTERMed member
commits and leaves; delete refuses a group with members. (Not run against Tansu: it cannot
list a group's offsets — its OffsetFetch answer for all topics does not parse — and it
answers DeleteGroups for an unknown group with success.)"""
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from broker_fixture import BrokerFactory
from pylog.cli import main

_names = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    factory = BrokerFactory(tmp_path_factory.mktemp("cli-groups"))
    yield factory.start()
    factory.cleanup(failed=request.session.testsfailed > 0)


def unique(prefix):
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**9}"


def pylog(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input,
                              catch_exceptions=False)


def topic_with_records(broker, partitions=3, count=90):
    topic = unique("clig")
    assert pylog("topic", "create", topic, "-p", partitions, "-b", broker.bootstrap
                 ).exit_code == 0
    lines = "".join(f"k{i}:v{i}\n" for i in range(count))
    produced = pylog("produce", topic, "-K", ":", "-b", broker.bootstrap, input=lines)
    assert produced.exit_code == 0, produced.output
    return topic


def describe_json(broker, group):
    result = pylog("group", "describe", group, "--json", "-b", broker.bootstrap)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_until(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def test_consume_with_a_group_commits_what_it_printed_and_resumes_there(broker):
    topic = topic_with_records(broker)
    group = unique("cg")
    first = pylog("consume", topic, "--group", group, "--from-beginning", "--max-messages", 25,
                  "-f", "%v\\n", "-X", "session_timeout_ms=3000", "-b", broker.bootstrap)
    assert first.exit_code == 0, first.output
    printed = first.stdout.split()
    assert len(printed) == 25 and "consumed 25 records" in first.stderr
    info = describe_json(broker, group)
    assert info["state"] == "Empty" and info["members"] == []
    rows = {r["partition"]: r for r in info["partitions"]}
    assert sorted(rows) == [0, 1, 2]
    assert sum(r["committed"] for r in rows.values()) == 25, "exactly what was printed"
    assert sum(r["end"] for r in rows.values()) == 90
    assert all(r["lag"] == r["end"] - r["committed"] for r in rows.values())
    assert group in pylog("group", "list", "-b", broker.bootstrap).stdout.split()

    second = pylog("consume", topic, "--group", group, "--timeout-ms", 1500, "-f", "%v\\n",
                   "-X", "session_timeout_ms=3000", "-b", broker.bootstrap)
    assert second.exit_code == 0, second.output
    rest = second.stdout.split()
    assert sorted(printed + rest) == sorted(f"v{i}" for i in range(90)), "each record once"
    info = describe_json(broker, group)
    assert all(r["lag"] == 0 and r["committed"] == r["end"] for r in info["partitions"])

    table = pylog("group", "describe", group, "-b", broker.bootstrap)
    lines = table.stdout.splitlines()
    assert lines[0] == f"Group: {group}  state: Empty  protocol: consumer  members: 0"
    assert lines[2].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"]
    assert [line.split()[:2] for line in lines[3:]] == [[topic, "0"], [topic, "1"], [topic, "2"]]
    assert all(line.split()[4] == "0" and line.split()[5] == "-" for line in lines[3:])


def test_a_running_member_is_described_and_a_sigterm_commits_and_leaves(broker):
    topic = topic_with_records(broker, partitions=2, count=40)
    group = unique("cg")
    child = subprocess.Popen(
        [sys.executable, "-m", "pylog.cli", "consume", topic, "--group", group,
         "--from-beginning", "-f", "%o\\n", "-b", broker.bootstrap,
         "-X", "session_timeout_ms=3000", "-X", "auto_commit_interval_ms=60000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    try:
        def stable():
            result = pylog("group", "describe", group, "--json", "-b", broker.bootstrap)
            if result.exit_code:  # GROUP_ID_NOT_FOUND until the member joins
                return None
            info = json.loads(result.stdout)
            return info if info["state"] == "Stable" and info["members"] else None
        info = wait_until(stable, what="the member joining")
        [member] = info["members"]
        assert member["client_id"] == "pylog-cli"
        assert sorted(map(tuple, member["partitions"])) == [(topic, 0), (topic, 1)]
        assert info["protocol"] in ("range", "roundrobin")
        busy = pylog("group", "delete", group, "-b", broker.bootstrap)
        assert busy.exit_code == 1 and "NON_EMPTY_GROUP" in busy.stderr
        table = pylog("group", "describe", group, "-b", broker.bootstrap).stdout.splitlines()
        assert table[2].split() == ["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"]
        assert table[3].split()[0] == member["member_id"]
        assert table[3].endswith(f"{topic}:0,1")
        wait_until(lambda: len(lines) == 40, what="the member printing every record")
        # The long auto-commit interval leaves the commit to the clean exit on SIGTERM.
        os.kill(child.pid, signal.SIGTERM)
        child.wait(20)
        reader.join(10)
        err = child.stderr.read()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
    assert child.returncode == 0, err
    assert len(lines) == 40 and b"consumed 40 records" in err
    info = describe_json(broker, group)
    assert info["state"] == "Empty" and info["members"] == []
    assert [(r["committed"], r["lag"]) for r in info["partitions"]] == \
        [(r["end"], 0) for r in info["partitions"]]
    deleted = pylog("group", "delete", group, "-b", broker.bootstrap)
    assert deleted.exit_code == 0 and deleted.stdout == f"deleted group {group}\n"
    gone = pylog("group", "describe", group, "-b", broker.bootstrap)
    assert gone.exit_code == 1 and "GROUP_ID_NOT_FOUND" in gone.stderr
    assert group not in pylog("group", "list", "-b", broker.bootstrap).stdout.split()


@pytest.mark.parametrize("args,message", [
    (["--partition", "0"], "--partition and --group exclude each other"),
    (["--offset", "5"], "with --group, --offset is earliest or latest"),
    (["-X", "bogus=1"], "unknown consumer property 'bogus'"),
])
def test_consume_group_usage_errors(broker, args, message):
    result = pylog("consume", "t", "--group", "g", *args, "-b", broker.bootstrap)
    assert result.exit_code == 2 and message in result.output


def test_deleting_an_unknown_group_is_one_line_and_status_1(broker):
    result = pylog("group", "delete", unique("nope"), "-b", broker.bootstrap)
    assert result.exit_code == 1
    assert result.stderr.startswith("pylog: cannot delete group nope-") and \
        result.stderr.count("\n") == 1


def test_consuming_an_unknown_topic_with_a_group_is_one_line_and_status_1(broker):
    result = pylog("consume", unique("missing"), "--group", "g", "-b", broker.bootstrap,
                   "-X", "request_timeout_ms=600000")  # it must not wait for the topic
    assert result.exit_code == 1
    assert result.stderr.startswith("pylog: UNKNOWN_TOPIC_OR_PARTITION: topic 'missing-")

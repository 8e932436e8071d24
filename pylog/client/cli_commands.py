"""The `pylog` data commands: topic create/list/describe/delete, produce, consume (alone or
as a member of a consumer group), bench.

They speak the Kafka protocol to ``--bootstrap HOST:PORT`` through pylog's own client; `topic
describe` also asks the control plane (``--control URL``) for what Kafka's protocol does not
carry (log start, LEO, HW, size per partition) and says so in one note when it cannot.
``register(main)`` adds them to the `pylog` group. Failures are one line on stderr
("pylog: cannot reach 127.0.0.1:9092: connection refused") and exit status 1; `pylog --debug`
shows the traceback instead.
"""
from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
import urllib.error
import urllib.request

import click

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CONTROL = "http://127.0.0.1:9644"
_CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

bootstrap_option = click.option(
    "--bootstrap", "-b", default=DEFAULT_BOOTSTRAP, show_default=True, metavar="HOST:PORT",
    envvar="PYLOG_BOOTSTRAP", help="A broker to start from (comma-separated for several).")


def one_line_errors(command):
    """Turn client errors into "pylog: <message>" on stderr and exit status 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from pylog.client.errors import KafkaError
        try:
            return command(*args, **kwargs)
        except (KafkaError, ValueError) as exc:
            ctx = click.get_current_context(silent=True)
            root = ctx.find_root() if ctx is not None else None
            if root is not None and root.obj and root.obj.get("debug"):
                raise
            click.echo(f"pylog: {exc}", err=True)
            sys.exit(1)
    return wrapper


def _parse_pairs(pairs: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint=what)
        out.append((name, value))
    return out


# ---- topic ----------------------------------------------------------------------------------


@click.group("topic")
def topic_group():
    """Create, list, describe and delete topics."""


@topic_group.command("create")
@click.argument("name")
@click.option("--partitions", "-p", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replication-factor", "-r", type=click.IntRange(min=1), default=1,
              show_default=True)
@click.option("--config", "-c", "configs", multiple=True, metavar="KEY=VALUE",
              help="A topic config (Kafka's names, e.g. retention.ms=60000); repeatable.")
@bootstrap_option
@one_line_errors
def topic_create(name, partitions, replication_factor, configs, bootstrap):
    """Create topic NAME."""
    from pylog.client.admin import AsyncAdmin

    config = dict(_parse_pairs(configs, "--config"))

    async def run():
        async with AsyncAdmin(bootstrap) as admin:
            await admin.create_topics(name, partitions=partitions,
                                      replication_factor=replication_factor, configs=config)
    asyncio.run(run())
    click.echo(f"created topic {name} ({partitions} partitions, replication factor "
               f"{replication_factor})")


@topic_group.command("list")
@click.option("--internal", is_flag=True, help="Include internal topics.")
@bootstrap_option
@one_line_errors
def topic_list(internal, bootstrap):
    """List topics, one per line."""
    from pylog.client.admin import AsyncAdmin

    async def run():
        async with AsyncAdmin(bootstrap) as admin:
            return await admin.list_topics(include_internal=internal)
    for name in asyncio.run(run()):
        click.echo(name)


@topic_group.command("delete")
@click.argument("name")
@bootstrap_option
@one_line_errors
def topic_delete(name, bootstrap):
    """Delete topic NAME."""
    from pylog.client.admin import AsyncAdmin

    async def run():
        async with AsyncAdmin(bootstrap) as admin:
            await admin.delete_topics(name)
    asyncio.run(run())
    click.echo(f"deleted topic {name}")


def _control_partitions(control: str, name: str) -> tuple[dict[int, dict], str | None]:
    """Per-partition log fields from the control plane, or ({}, why not)."""
    url = f"{control.rstrip('/')}/v1/topics/{urllib.request.quote(name, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        return {}, f"{url} answered {exc.code}: {message}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {}, f"control plane {control} unreachable ({reason})"
    return {int(p["partition"]): p for p in body.get("partitions", [])}, None


@topic_group.command("describe")
@click.argument("name")
@bootstrap_option
@click.option("--control", default=DEFAULT_CONTROL, show_default=True, metavar="URL",
              envvar="PYLOG_CONTROL",
              help="The broker's control plane, for log start, LEO, HW and size.")
@one_line_errors
def topic_describe(name, bootstrap, control):
    """Partitions of NAME: leader, epoch, replicas, ISR (and log offsets and size from the
    control plane)."""
    from pylog.client.admin import AsyncAdmin

    async def run():
        async with AsyncAdmin(bootstrap) as admin:
            return (await admin.describe_topics(name))[0]
    description = asyncio.run(run())
    logs, note = _control_partitions(control, name)
    replication = max((len(p.replicas) for p in description.partitions), default=0)
    click.echo(f"Topic: {name}  partitions: {len(description.partitions)}  "
               f"replication factor: {replication}")
    header = ["partition", "leader", "epoch", "replicas", "isr"]
    if logs:
        header += ["log-start", "leo", "hw", "size"]
    rows = []
    for p in description.partitions:
        row = [str(p.partition), str(p.leader), str(p.leader_epoch),
               ",".join(map(str, p.replicas)), ",".join(map(str, p.isr))]
        if logs:
            log = logs.get(p.partition, {})
            row += ["-" if log.get(k) is None else str(log[k])
                    for k in ("log_start_offset", "log_end_offset", "high_watermark",
                              "size_bytes")]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    click.echo("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        click.echo("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if note:
        click.echo(f"note: {note}; log start, LEO, HW and size not shown", err=True)


# ---- produce / consume ----------------------------------------------------------------------


@click.command("produce")
@click.argument("topic")
@bootstrap_option
@click.option("--key-separator", "-K", metavar="SEP",
              help="Split each line at the first SEP into key and value.")
@click.option("--acks", type=click.Choice(["0", "1", "all", "-1"]), default="all",
              show_default=True)
@click.option("--partition", "-p", type=click.IntRange(min=0),
              help="Write every record to this partition (default: by key, else sticky).")
@click.option("--header", "-H", "headers", multiple=True, metavar="NAME=VALUE",
              help="A header added to every record; repeatable.")
@click.option("--compression", "-z", type=click.Choice(_CODECS), default="none",
              show_default=True)
@click.option("--linger-ms", type=click.FloatRange(min=0), default=5, show_default=True)
@one_line_errors
def produce(topic, bootstrap, key_separator, acks, partition, headers, compression,
            linger_ms):
    """Write each line of stdin as one record to TOPIC."""
    from pylog.client.producer import AsyncProducer

    header_list = [(k, v.encode()) for k, v in _parse_pairs(headers, "--header")]
    separator = key_separator.encode() if key_separator else None
    stdin = sys.stdin.buffer

    async def run() -> tuple[int, int, BaseException | None]:
        counts = {"ok": 0, "failed": 0}
        first_error: list[BaseException] = []

        def on_done(future):
            error = future.exception()
            if error is None:
                counts["ok"] += 1
            else:
                counts["failed"] += 1
                if not first_error:
                    first_error.append(error)

        async with AsyncProducer(bootstrap, acks=acks, linger_ms=linger_ms,
                                 compression=None if compression == "none" else compression,
                                 max_block_ms=15_000, client_id="pylog-cli") as producer:
            for line in stdin:
                line = line[:-1] if line.endswith(b"\n") else line
                key = None
                if separator is not None:
                    key_part, sep, value_part = line.partition(separator)
                    if sep:
                        key, line = key_part, value_part
                future = await producer.send(topic, line, key=key, headers=header_list,
                                             partition=partition)
                future.add_done_callback(on_done)
            await producer.flush()
        return counts["ok"], counts["failed"], (first_error[0] if first_error else None)

    ok, failed, error = asyncio.run(run())
    if failed:
        from pylog.client.errors import KafkaError
        raise KafkaError(f"{failed} of {ok + failed} records failed: {error}")
    click.echo(f"produced {ok} records to {topic}", err=True)


def _start_offset(offset: str | None, from_beginning: bool) -> str | int:
    if offset is None:
        return "earliest" if from_beginning else "latest"
    if offset in ("earliest", "beginning"):
        return "earliest"
    if offset in ("latest", "end"):
        return "latest"
    try:
        return int(offset)
    except ValueError:
        raise click.BadParameter(f"{offset!r} is not N, -N, earliest or latest",
                                 param_hint="--offset") from None


def _consumer_properties(pairs: tuple[str, ...]) -> dict:
    """``-X name=value`` pairs as AsyncConsumer keyword arguments (ints, true/false, text)."""
    import inspect

    from pylog.client.consumer import AsyncConsumer

    known = {name for name, p in inspect.signature(AsyncConsumer.__init__).parameters.items()
             if p.kind is p.KEYWORD_ONLY and name not in (
                 "listener", "on_assign", "on_revoke", "on_lost", "group_id",
                 "partition_assignment_strategy")}
    known.add("partition_assignment_strategy")
    config: dict = {}
    for name, value in _parse_pairs(pairs, "-X"):
        name = name.replace(".", "_").replace("-", "_")
        if name not in known:
            raise click.BadParameter(f"unknown consumer property {name!r} (known: "
                                     f"{', '.join(sorted(known))})", param_hint="-X")
        if name == "partition_assignment_strategy":
            config[name] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif value.lower() in ("true", "false"):
            config[name] = value.lower() == "true"
        elif value.lstrip("-").isdigit():
            config[name] = int(value)
        else:
            config[name] = value
    return config


@click.command("consume")
@click.argument("topic")
@bootstrap_option
@click.option("--group", "-G", "group_id", metavar="GROUP",
              help="Consume as a member of consumer group GROUP: partitions come from the "
                   "group, reading starts at its committed offsets, and what is printed is "
                   "committed (every auto_commit_interval_ms, and before exiting).")
@click.option("--from-beginning", is_flag=True, help="Start at the beginning (= --offset "
              "earliest; with --group: where the group has no committed offset).")
@click.option("--offset", "-o", metavar="N|-N|earliest|latest",
              help="Where to start: an offset, N records before the end, earliest or latest "
                   "(default: latest; with --group only earliest or latest, for partitions "
                   "without a committed offset).")
@click.option("--partition", "-p", type=click.IntRange(min=0),
              help="Read only this partition (default: all).")
@click.option("--max-messages", "-c", type=click.IntRange(min=1),
              help="Exit after this many records.")
@click.option("--timeout-ms", type=click.IntRange(min=0),
              help="Exit when no record arrived for this long (default: wait forever).")
@click.option("--format", "-f", "fmt", default="%v\\n", show_default=True,
              help="kcat-style: %k key, %v value, %o offset, %p partition, %t timestamp, "
                   "%T topic, %h headers, %K/%S key/value length, \\n \\t.")
@click.option("--property", "-X", "properties", multiple=True, metavar="NAME=VALUE",
              help="A consumer setting by its pylog.client.AsyncConsumer name, e.g. "
                   "-X session_timeout_ms=6000 -X auto_commit_interval_ms=1000; repeatable.")
@one_line_errors
def consume(topic, bootstrap, group_id, from_beginning, offset, partition, max_messages,
            timeout_ms, fmt, properties):
    """Print the records of TOPIC."""
    from pylog.client.cli_format import RecordFormat

    formatter = RecordFormat(fmt)
    start = _start_offset(offset, from_beginning)
    config = _consumer_properties(properties)
    out = sys.stdout.buffer
    if group_id is not None:
        if partition is not None:
            raise click.UsageError("--partition and --group exclude each other: the group "
                                   "assigns the partitions")
        if isinstance(start, int):
            raise click.UsageError("with --group, --offset is earliest or latest (where the "
                                   "group has no committed offset)")
        reset = config.pop("auto_offset_reset", None)
        if offset is None and not from_beginning and reset is not None:
            start = reset
        printed = asyncio.run(_consume_group(topic, bootstrap, group_id, start, max_messages,
                                             timeout_ms, formatter, out, config))
    else:
        printed = asyncio.run(_consume(topic, bootstrap, start, partition, max_messages,
                                       timeout_ms, formatter, out, config))
    out.flush()
    click.echo(f"consumed {printed} records", err=True)


class _Count:
    """Records printed so far (still known when the printing loop is cancelled)."""
    value = 0


async def _print_until_done(consumer, max_messages, timeout_ms, formatter, out,
                            count: _Count | None = None) -> int:
    """getmany and print until ``max_messages`` or ``timeout_ms`` without a record."""
    count = count or _Count()
    idle_since = time.monotonic()
    while max_messages is None or count.value < max_messages:
        wait = 500 if timeout_ms is None else min(500, timeout_ms)
        batch = await consumer.getmany(
            timeout_ms=wait,
            max_records=None if max_messages is None else max_messages - count.value)
        if not batch:
            if timeout_ms is not None and \
                    (time.monotonic() - idle_since) * 1000 >= timeout_ms:
                break
            continue
        idle_since = time.monotonic()
        for records in batch.values():
            out.write(b"".join(formatter.render(r) for r in records))
            count.value += len(records)
        out.flush()
    return count.value


async def _consume_group(topic, bootstrap, group_id, start, max_messages, timeout_ms,
                         formatter, out, config) -> int:
    """Consume as a group member. SIGTERM (like Ctrl-C) ends it cleanly: what was printed
    is committed and the member leaves the group."""
    import contextlib
    import signal

    from pylog.client.consumer import AsyncConsumer
    from pylog.client.errors import KafkaError

    config.setdefault("client_id", "pylog-cli")
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    count = _Count()
    try:
        async with AsyncConsumer(bootstrap, group_id=group_id,
                                 auto_offset_reset=start, **config) as consumer:
            await _existing_topic(consumer, topic)
            consumer.subscribe([topic])
            try:
                await _print_until_done(consumer, max_messages, timeout_ms, formatter, out,
                                        count)
            except BaseException:
                out.flush()
                with contextlib.suppress(KafkaError):  # the first error is the one to tell
                    await asyncio.shield(consumer.commit())
                raise
            out.flush()
            # Commit exactly what was printed (getmany never took more than that).
            await consumer.commit()
    except asyncio.CancelledError:
        pass
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return count.value


async def _existing_topic(consumer, topic: str):
    """The topic's metadata; an unknown topic is an error at once, not a wait."""
    from pylog.client.errors import remote_error

    metadata = await consumer.cluster.topic(topic, must_exist=False)
    if metadata.error_code:
        raise remote_error(metadata.error_code, f"topic {topic!r}")
    return metadata


async def _consume(topic, bootstrap, start, partition, max_messages, timeout_ms, formatter,
                   out, config) -> int:
    from pylog.client.consumer import AsyncConsumer, TopicPartition
    from pylog.client.errors import UnknownTopicOrPartitionError
    from pylog.protocol import ErrorCode

    config.setdefault("client_id", "pylog-cli")
    config["auto_offset_reset"] = "earliest" if start == "earliest" else "latest"
    async with AsyncConsumer(bootstrap, **config) as consumer:
        metadata = await _existing_topic(consumer, topic)
        if partition is not None and partition not in metadata.partitions:
            raise UnknownTopicOrPartitionError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"{topic!r} has no partition {partition} ({len(metadata.partitions)} "
                "partitions)")
        ids = [partition] if partition is not None else sorted(metadata.partitions)
        tps = [TopicPartition(topic, p) for p in ids]
        if isinstance(start, int) and start < 0:
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            start_at = {tp: max(begins[tp], ends[tp] + start) for tp in tps}
        else:
            start_at = {tp: start for tp in tps}
        # assign and seek with no await between: no lookup or fetch starts from elsewhere
        consumer.assign(tps)
        for tp, where in start_at.items():
            if where == "earliest":
                consumer.seek_to_beginning(tp)
            elif where == "latest":
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, where)
        return await _print_until_done(consumer, max_messages, timeout_ms, formatter, out)


# ---- bench ----------------------------------------------------------------------------------


@click.group("bench")
def bench_group():
    """Measure produce or consume throughput and latency with pylog's client."""


def _progress_run(label: str, total: int, coroutine_factory):
    with click.progressbar(length=total, label=label, file=sys.stderr,
                           show_pos=True, show_percent=True) as bar:
        return asyncio.run(coroutine_factory(bar.update))


@bench_group.command("produce")
@bootstrap_option
@click.option("--topic", "-t", default="pylog-bench", show_default=True)
@click.option("--records", "-n", type=click.IntRange(min=1), default=100_000,
              show_default=True)
@click.option("--size", "-s", type=click.IntRange(min=0), default=100, show_default=True,
              help="Value size in bytes.")
@click.option("--acks", type=click.Choice(["0", "1", "all", "-1"]), default="1",
              show_default=True)
@click.option("--partitions", "-p", type=click.IntRange(min=1), default=1, show_default=True,
              help="Partitions of the topic if it is created.")
@click.option("--linger-ms", type=click.FloatRange(min=0), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=62), default=65536, show_default=True)
@click.option("--compression", "-z", type=click.Choice(_CODECS), default="none",
              show_default=True)
@one_line_errors
def bench_produce_command(bootstrap, topic, records, size, acks, partitions, linger_ms,
                          batch_size, compression):
    """Send RECORDS records of SIZE bytes and report records/s, MB/s and ack latency."""
    from pylog.client.cli_bench import bench_produce

    result = _progress_run("producing", records, lambda progress: bench_produce(
        bootstrap, topic=topic, records=records, size=size, acks=acks, partitions=partitions,
        linger_ms=linger_ms, batch_size=batch_size,
        compression=None if compression == "none" else compression, progress=progress))
    click.echo(result.summary())
    if result.errors:
        sys.exit(1)


@bench_group.command("consume")
@bootstrap_option
@click.option("--topic", "-t", default="pylog-bench", show_default=True)
@click.option("--records", "-n", type=click.IntRange(min=1), default=100_000,
              show_default=True)
@click.option("--timeout-ms", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Give up when no record arrived for this long.")
@one_line_errors
def bench_consume_command(bootstrap, topic, records, timeout_ms):
    """Read RECORDS records from the start of TOPIC and report records/s, MB/s, latency."""
    from pylog.client.cli_bench import bench_consume

    result = _progress_run("consuming", records, lambda progress: bench_consume(
        bootstrap, topic=topic, records=records, timeout_ms=timeout_ms, progress=progress))
    click.echo(result.summary())


def register(main: click.Group) -> None:
    """Add the data commands to the `pylog` command group."""
    for command in (topic_group, produce, consume, bench_group):
        main.add_command(command)

"""The `pylog` command line (click).

Errors the user can act on are one line on stderr and a non-zero exit status, never a
traceback; `--debug` (or PYLOG_DEBUG=1) shows the traceback when something is really broken.
"""
from __future__ import annotations

import json
import os
import sys

import click

from pylog import __version__


class PylogGroup(click.Group):
    """Turns expected failures (OSError, pylog's own errors) into one clear line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # the reader went away (e.g. `| head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            name = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"pylog: error{name}: {exc.strerror or exc}", err=True)
            sys.exit(2)


@click.group(cls=PylogGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pylog")
@click.option("--debug", is_flag=True, envvar="PYLOG_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def main(ctx, debug):
    """pylog: a Kafka-compatible partitioned, replicated commit log."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command("dump-log")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line per batch (problems as {\"error\": ...} lines).")
@click.option("--records", "with_records", is_flag=True,
              help="Also show every record: offset, timestamp, key, value, headers.")
def dump_log(paths, as_json, with_records):
    """Print the batches of segment files (.log) or of partition directories.

    Reads the files only; safe against a live broker's data directory. Exit status 0 when
    every batch is intact, 1 when any is not (bad CRC, corrupt batch, torn tail), naming the
    byte position where the bad batch starts.
    """
    from pylog.storage.dump import (TABLE_HEADER, batch_json, batch_row, record_line,
                                    segment_files, walk_file)

    files = [f for p in paths for f in segment_files(p)]
    if not files:
        raise click.ClickException("no .log segment files in " + ", ".join(paths))
    all_intact = True
    for path in files:
        dumped = walk_file(path, with_records=with_records)
        all_intact &= dumped.intact
        if as_json:
            for batch in dumped.batches:
                click.echo(json.dumps({"file": path, **batch_json(batch)}, ensure_ascii=False))
            for problem in dumped.problems:
                click.echo(json.dumps({"file": path, "error": problem.reason,
                                       "position": problem.position,
                                       "rest_unread": problem.fatal}))
            continue
        click.echo(f"Dumping {path} ({dumped.size} bytes)")
        widths = [len(h) for h in TABLE_HEADER]
        rows = [tuple(str(c) for c in batch_row(b)) for b in dumped.batches]
        for row in rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row)]
        click.echo("  ".join(h.rjust(w) for h, w in zip(TABLE_HEADER, widths)))
        for batch, row in zip(dumped.batches, rows):
            click.echo("  ".join(c.rjust(w) for c, w in zip(row, widths)))
            if batch.records is not None:
                for record in batch.records:
                    click.echo(record_line(record))
            if batch.records_error is not None:
                click.echo(f"    ! records: {batch.records_error}")
        bad_crc = [b.info.position for b in dumped.batches if not b.crc_valid]
        for position in bad_crc:
            click.echo(f"CORRUPT: crc mismatch in the batch at byte {position}", err=True)
        for problem in dumped.problems:
            tail = "; the rest of the file was not read" if problem.fatal else ""
            click.echo(f"CORRUPT: {problem.reason}{tail}", err=True)
        click.echo(f"{len(dumped.batches)} batches, "
                   f"{sum(b.info.record_count for b in dumped.batches)} records"
                   + ("" if dumped.intact else ", NOT intact"))
    sys.exit(0 if all_intact else 1)


from pylog.client.cli_commands import register as _register_data_commands  # noqa: E402

_register_data_commands(main)  # topic, produce, consume, bench (pylog/client/cli_commands.py)
from pylog.client.cli_groups import group_group; main.add_command(group_group)  # noqa: E402,E702


@main.command("serve")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Data directory (Kafka's log.dirs). Required unless the config file sets it.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Kafka-style .properties file; flags override it.")
@click.option("--host", help="Kafka listener address [127.0.0.1].")
@click.option("--port", type=int, help="Kafka listener port [9092]; 0 picks a free one.")
@click.option("--control-host", help="HTTP control plane address [127.0.0.1].")
@click.option("--control-port", type=int, help="HTTP control plane port [9644].")
@click.option("--advertised-host", help="Host clients are told to connect to [--host].")
@click.option("--node-id", type=int, help="This broker's node id [1].")
@click.option("--fsync", help="os (default: the OS writes back), always (fsync before every "
                              "acknowledgement) or N (fsync at least every N ms).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any broker setting by its Kafka name, e.g. --set num.partitions=3 "
                   "(repeatable; overrides the config file).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Logging on stderr.")
def serve(data_dir, config_file, host, port, control_host, control_port, advertised_host,
          node_id, fsync, settings, log_level):
    """Run a broker (and the controller of its one-node cluster) until SIGTERM or Ctrl-C.

    Prints "pylog broker N listening on HOST:PORT (control http://HOST:PORT)" on stderr once it
    takes traffic; GET /health on the control port answers 200 from then on.
    """
    import asyncio
    import logging

    from pylog.broker.app import serve as run_broker
    from pylog.broker.config import BrokerConfig, BrokerConfigError
    from pylog.broker.server import install_event_loop_policy
    from pylog.storage.manager import DataDirectoryLockedError
    from pylog.storage.meta import MetaPropertiesError

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = []
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--set expects KEY=VALUE, got {item!r}")
        overrides.append((key.strip(), value.strip()))
    try:
        config = BrokerConfig.load(
            config_file=config_file, overrides=overrides, data_dir=data_dir, host=host,
            port=port, control_host=control_host, control_port=control_port,
            advertised_host=advertised_host, node_id=node_id, fsync=fsync)
    except BrokerConfigError as exc:
        click.echo(f"pylog: configuration error: {exc}", err=True)
        sys.exit(2)

    def announce(broker):
        click.echo(f"pylog broker {broker.node_id} listening on {broker.bootstrap} "
                   f"(control {broker.control_url})", err=True)

    install_event_loop_policy()
    try:
        asyncio.run(run_broker(config, on_ready=announce))
    except (MetaPropertiesError, DataDirectoryLockedError) as exc:
        click.echo(f"pylog: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

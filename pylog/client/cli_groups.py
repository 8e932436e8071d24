"""`pylog group list|describe|delete`: consumer groups over the Kafka protocol.

`describe` shows what kafka-consumer-groups.sh --describe shows: the group's state and
protocol, its members (client id, host, assigned partitions), and per partition the committed
offset, the end offset (ListOffsets latest) and the lag between them, with the member that
holds the partition. Failures are one line on stderr and exit status 1 (``one_line_errors``).
"""
from __future__ import annotations

import asyncio
import json
import sys

import click

from pylog.client.cli_commands import bootstrap_option, one_line_errors


@click.group("group")
def group_group():
    """List, describe and delete consumer groups."""


@group_group.command("list")
@bootstrap_option
@one_line_errors
def group_list(bootstrap):
    """List the groups, one per line."""
    from pylog.client.admin import AsyncAdmin

    async def run():
        async with AsyncAdmin(bootstrap, client_id="pylog-cli") as admin:
            return await admin.list_groups()
    for listing in asyncio.run(run()):
        click.echo(listing.group_id)


async def describe(bootstrap: str, group_id: str) -> dict:
    """Everything `group describe` shows, as a JSON-ready dict."""
    from pylog.client.admin import AsyncAdmin
    from pylog.client.consumer import AsyncConsumer

    async with AsyncAdmin(bootstrap, client_id="pylog-cli") as admin:
        [description] = await admin.describe_groups(group_id)
        committed = await admin.list_group_offsets(group_id)
    if description.state == "Dead" and not committed:
        from pylog.client.errors import GroupIdNotFoundError
        from pylog.protocol import ErrorCode
        raise GroupIdNotFoundError(ErrorCode.GROUP_ID_NOT_FOUND, f"group {group_id!r}")
    owner = {}
    for member in description.members:
        for tp in member.assignment or ():
            owner[tuple(tp)] = member.member_id
    partitions = sorted(set(owner) | {tuple(tp) for tp in committed})
    ends = {}
    if partitions:
        async with AsyncConsumer(bootstrap, client_id="pylog-cli", isolation_level=0) as reader:
            ends = {tuple(tp): offset for tp, offset in
                    (await reader.end_offsets(partitions)).items()}
    rows = []
    for topic, partition in partitions:
        offset = committed.get((topic, partition))
        end = ends.get((topic, partition))
        rows.append({"topic": topic, "partition": partition,
                     "committed": None if offset is None else offset.offset,
                     "end": end,
                     "lag": None if offset is None or end is None else max(0, end - offset.offset),
                     "member": owner.get((topic, partition))})
    return {"group": group_id, "state": description.state,
            "protocol_type": description.protocol_type, "protocol": description.protocol,
            "members": [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                         "client_id": m.client_id, "host": m.client_host,
                         "partitions": [list(tp) for tp in m.assignment or ()]}
                        for m in description.members],
            "partitions": rows}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
            for line in [header, *rows]]


def _partition_list(partitions: list[list]) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(partition)
    return " ".join(f"{t}:{','.join(map(str, sorted(ps)))}" for t, ps in sorted(by_topic.items())) \
        or "-"


def _dash(value) -> str:
    return "-" if value is None else str(value)


@group_group.command("describe")
@click.argument("group")
@bootstrap_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@one_line_errors
def group_describe(group, bootstrap, as_json):
    """State, members and per-partition committed offset, end offset and lag of GROUP."""
    info = asyncio.run(describe(bootstrap, group))
    if as_json:
        click.echo(json.dumps(info))
        return
    protocol = "/".join(p for p in (info["protocol_type"], info["protocol"]) if p) or "-"
    click.echo(f"Group: {group}  state: {info['state']}  protocol: {protocol}  "
               f"members: {len(info['members'])}")
    if info["members"]:
        click.echo("")
        for line in _table(["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"],
                           [[m["member_id"], m["client_id"], m["host"],
                             _partition_list(m["partitions"])] for m in info["members"]]):
            click.echo(line)
    if info["partitions"]:
        click.echo("")
        for line in _table(["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"],
                           [[r["topic"], str(r["partition"]), _dash(r["committed"]),
                             _dash(r["end"]), _dash(r["lag"]), _dash(r["member"])]
                            for r in info["partitions"]]):
            click.echo(line)


@group_group.command("delete")
@click.argument("groups", nargs=-1, required=True)
@bootstrap_option
@one_line_errors
def group_delete(groups, bootstrap):
    """Delete GROUPS and their committed offsets (only groups without members)."""
    from pylog.client.admin import AsyncAdmin

    async def run():
        async with AsyncAdmin(bootstrap, client_id="pylog-cli") as admin:
            return await admin.delete_groups(list(groups), raise_errors=False)
    failed = False
    for group, error in asyncio.run(run()).items():
        if error is None:
            click.echo(f"deleted group {group}")
        else:
            click.echo(f"pylog: cannot delete group {group}: {error}", err=True)
            failed = True
    if failed:
        sys.exit(1)

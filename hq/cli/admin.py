"""hq-admin: look at and steer the cluster (talks to hq-server directly, role ``admin``).

The original hQ wrote a command and its argument as one word (``activatehost:node07``); that
spelling still works beside ``activatehost node07``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from hq.cli.common import (
    CONTEXT_SETTINGS,
    format_table,
    format_time,
    json_option,
    print_json,
    run_program,
    verbosity_options,
)
from hq.cli.jobview import counts_text, format_counts_table

PROG = "hq-admin"
ALIASES = {"activatecluster": "activate", "deactivatecluster": "deactivate"}


class AdminGroup(click.Group):
    """Commands by name in any case, plus hQ's old names (``activatecluster``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = cmd_name.lower()
        return super().get_command(ctx, ALIASES.get(name, name))


def split_colon_form(args: Sequence[str], commands: Sequence[str]) -> list[str]:
    """``["activatehost:node07"]`` -> ``["activatehost", "node07"]`` (hQ's spelling).

    Only the first word that is not an option is looked at, and only when the part before
    the colon names a command; ``activatehost:`` becomes ``activatehost`` (then click says
    the name is missing).
    """
    names = {name.lower() for name in commands} | set(ALIASES)
    for i, word in enumerate(args):
        if word.startswith("-"):
            continue
        name, sep, arg = word.partition(":")
        if sep and name.lower() in names:
            return [*args[:i], name, *([arg] if arg else []), *args[i + 1:]]
        break
    return list(args)


def admin_request(command: str, *args: str) -> Any:
    """Send one admin command to hq-server and return its ``result``."""
    from hq.cli.admin_link import connect_server
    from hq.config import Installation

    with connect_server(Installation.locate(), PROG) as client:
        return client.request({"type": "admin", "command": command, "args": list(args)})[
            "result"]


def _yes(value: object) -> str:
    return "yes" if value else "no"


@click.group(cls=AdminGroup, context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
@verbosity_options
def cli() -> None:
    """Look at and steer the hq cluster (needs the admin role in etc/users).

    \b
    Examples:
      hq-admin info                    # is hq-server running, and how is it doing?
      hq-admin lscluster               # the hosts and what runs on them
      hq-admin deactivatehost node07   # no new jobs on node07 (also: deactivatehost:node07)
      hq-admin help                    # every command in one line each
    """


@cli.command("help")
@click.pass_context
def help_command(ctx: click.Context) -> None:
    """List the commands, one line each.

    Example: hq-admin help
    """
    group = ctx.parent.command if ctx.parent else cli
    assert isinstance(group, click.Group)
    rows = []
    for name in group.list_commands(ctx):
        command = group.commands[name]
        aliases = [old for old, new in ALIASES.items() if new == name]
        text = command.get_short_help_str(limit=70)
        rows.append((name, text + (f" (also: {', '.join(aliases)})" if aliases else "")))
    click.echo(format_table(("COMMAND", "WHAT IT DOES"), rows))


@cli.command()
@json_option
def info(as_json: bool) -> None:
    """hq-server's version, pid, database, socket and job counts.

    Example: hq-admin info
    """
    result = admin_request("info")
    if as_json:
        print_json(result)
        return
    servers = result.get("user_servers") or []
    lines = [
        ("hq-server", f"{result.get('version')}, pid {result.get('pid')}, running since "
                      f"{format_time(result.get('started_at'))}"),
        ("database", result.get("database")),
        ("socket", result.get("socket")),
        ("cluster", "active" if result.get("cluster_active") else "INACTIVE"),
        ("jobs", counts_text(result.get("jobs") or {})),
        ("user-servers", ", ".join(f"{s['user']} (pid {s['pid']}, since "
                                   f"{format_time(s.get('since'))})" for s in servers)
         or "none"),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':13} {value}")


@cli.command()
@json_option
def status(as_json: bool) -> None:
    """Whether the cluster is active, and jobs by state and user.

    Example: hq-admin status
    """
    result = admin_request("status")
    if as_json:
        print_json(result)
        return
    click.echo(f"cluster: {'active' if result.get('cluster_active') else 'INACTIVE'}")
    click.echo(f"jobs:    {counts_text(result.get('jobs') or {})}")
    if per_user := result.get("per_user"):
        click.echo("")
        click.echo(format_counts_table("USER", per_user))


def format_hosts(hosts: Sequence[Mapping[str, Any]]) -> str:
    """The ``lscluster`` table: host, state, active, free/total cores, jobs, load, reason."""
    rows = []
    for host in hosts:
        active = "drained" if host.get("drained") else _yes(host.get("active"))
        load = host.get("load1")
        rows.append((host["name"], host.get("state"), active,
                     f"{host.get('free_cores', '?')}/{host.get('cores', '?')}",
                     host.get("running_jobs"), None if load is None else f"{load:.2f}",
                     host.get("reason") or ""))
    return format_table(("HOST", "STATE", "ACTIVE", "FREE/CORES", "JOBS", "LOAD", "REASON"),
                        rows, right={3, 4, 5})


@cli.command()
@json_option
def lscluster(as_json: bool) -> None:
    """The hosts: state, whether active, free cores, running jobs, load, and why.

    Example: hq-admin lscluster
    """
    result = admin_request("lscluster")
    if as_json:
        print_json(result)
    else:
        click.echo(format_hosts(result.get("hosts") or []))


def _host_change(command: str, name: str, as_json: bool, verb: str) -> None:
    result = admin_request(command, name)
    if as_json:
        print_json(result)
    elif result.get("changed"):
        click.echo(f"host {result.get('host', name)}: {verb}d")
    else:
        click.echo(f"host {result.get('host', name)}: already {verb}d")


@cli.command()
@click.argument("name")
@json_option
def activatehost(name: str, as_json: bool) -> None:
    """Let hq start jobs on host NAME again.

    Example: hq-admin activatehost node07   (or: hq-admin activatehost:node07)
    """
    _host_change("activatehost", name, as_json, "activate")


@cli.command()
@click.argument("name")
@json_option
def deactivatehost(name: str, as_json: bool) -> None:
    """Start no new jobs on host NAME; running jobs finish.

    Example: hq-admin deactivatehost node07   (or: hq-admin deactivatehost:node07)
    """
    _host_change("deactivatehost", name, as_json, "deactivate")


def _cluster_change(command: str, as_json: bool, verb: str) -> None:
    result = admin_request(command)
    if as_json:
        print_json(result)
    else:
        click.echo(f"cluster {verb}d" if result.get("changed") else f"cluster already {verb}d")


@cli.command()
@json_option
def activate(as_json: bool) -> None:
    """Let hq start jobs (on every active host).

    Example: hq-admin activate
    """
    _cluster_change("activate", as_json, "activate")


@cli.command()
@json_option
def deactivate(as_json: bool) -> None:
    """Start no new jobs anywhere; running jobs finish, pending ones wait.

    Example: hq-admin deactivate
    """
    _cluster_change("deactivate", as_json, "deactivate")


@cli.command()
@json_option
def lsusers(as_json: bool) -> None:
    """The users: roles, pending and running jobs, whether a user-server is up.

    Example: hq-admin lsusers
    """
    result = admin_request("lsusers")
    if as_json:
        print_json(result)
        return
    rows = [(user["name"], ",".join(user.get("roles") or ()) or "-", user.get("pending", 0),
             user.get("running", 0), _yes(user.get("user_server")))
            for user in result.get("users") or []]
    click.echo(format_table(("USER", "ROLES", "PENDING", "RUNNING", "USER-SERVER"), rows,
                            right={2, 3}))


@cli.command()
@json_option
def reload(as_json: bool) -> None:
    """Make hq-server take in changes to etc/users and etc/cluster.tab.

    Run hq-dbadmin -a first (it writes the changes to the database), then:

    Example: hq-dbadmin -a && hq-admin reload
    """
    result = admin_request("reload")
    if as_json:
        print_json(result)
    else:
        changed = ", ".join(result["hosts_changed"]) or "none"
        click.echo(f"reloaded: {result['users']} users; hosts changed: {changed}")


@cli.command()
@json_option
def shutdown(as_json: bool) -> None:
    """Stop hq-server; running jobs keep running and are picked up again at its restart.

    Example: hq-admin shutdown
    """
    result = admin_request("shutdown")
    if as_json:
        print_json(result)
    else:
        click.echo("hq-server is stopping")


def main() -> None:
    """Entry point of hq-admin."""
    args = split_colon_form(sys.argv[1:], list(cli.commands))
    sys.exit(run_program(cli, PROG, args))


if __name__ == "__main__":
    main()

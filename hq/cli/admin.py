"""hq-admin: look at and steer the cluster (talks to hq-server directly, role ``admin``).

The original hQ wrote a command and its argument as one word (``activatehost:node07``); that
spelling still works beside ``activatehost node07``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
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
from hq.cli.completion import host_names
from hq.cli.jobview import counts_text, format_counts_table
from hq.program import version_option
from hq.protocol.messages import (
    AdminInfo,
    AdminStatus,
    HostInfo,
    ListHosts,
    ListUsers,
    Reload,
    Request,
    SetClusterActive,
    SetHostActive,
    Shutdown,
    UserInfo,
)

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


def admin_request(request: Request) -> Any:
    """Send one admin request to hq-server and return its typed reply.

    An hq-server of protocol version 1 (still running after an upgrade, until the admin
    restarts it) knew one ``admin`` request with a command word: it is asked that way."""
    from hq.cli.admin_link import connect_server
    from hq.config import Installation

    with connect_server(Installation.locate(), PROG) as client:
        if client.version == 1:
            return client.legacy_admin(request, *_legacy_command(request))
        return client.request(request)


def _legacy_command(request: Request) -> tuple[str, list[str]]:
    """The version-1 ``admin`` command word and arguments that asked for ``request``."""
    if isinstance(request, SetHostActive):
        return ("activatehost" if request.active else "deactivatehost"), [request.host]
    if isinstance(request, SetClusterActive):
        return ("activate" if request.active else "deactivate"), []
    names = {AdminInfo: "info", AdminStatus: "status", ListHosts: "lscluster",
             ListUsers: "lsusers", Reload: "reload", Shutdown: "shutdown"}
    if type(request) not in names:
        from hq.errors import UsageError

        raise UsageError("the running hq-server is too old for this command: restart it "
                         "(hq-admin shutdown, then hq-server --daemon)")
    return names[type(request)], []


def _yes(value: object) -> str:
    return "yes" if value else "no"


@click.group(cls=AdminGroup, context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
@version_option
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
    result = admin_request(AdminInfo())
    if as_json:
        print_json(result)
        return
    lines = [
        ("hq-server", f"{result.version}, pid {result.pid}, running since "
                      f"{format_time(result.started_at)}"),
        ("database", result.database),
        ("socket", result.socket),
        ("cluster", "active" if result.cluster_active else "INACTIVE"),
        ("jobs", counts_text(result.jobs)),
        ("user-servers", ", ".join(f"{s.user} (pid {s.pid}, since {format_time(s.since)})"
                                   for s in result.user_servers) or "none"),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':13} {value}")


@cli.command()
@json_option
def status(as_json: bool) -> None:
    """Whether the cluster is active, and jobs by state and user.

    Example: hq-admin status
    """
    result = admin_request(AdminStatus())
    if as_json:
        print_json(result)
        return
    click.echo(f"cluster: {'active' if result.cluster_active else 'INACTIVE'}")
    click.echo(f"jobs:    {counts_text(result.jobs)}")
    if result.per_user:
        click.echo("")
        click.echo(format_counts_table("USER", result.per_user))


def format_hosts(hosts: Sequence[HostInfo]) -> str:
    """The ``lscluster`` table: host, state, active, free/total cores, jobs, load, IDLE (how
    long an idle exec-server stays; an hq-server that does not say has no column), reason."""
    from hq.config_syntax import duration_text

    idle = any(host.idle_timeout_s is not None for host in hosts)
    rows = []
    for host in hosts:
        active = "drained" if host.drained else _yes(host.active)
        load = host.load1
        row: tuple[object, ...] = (host.name, host.display or host.state, active,
                                   f"{host.free_cores}/{host.cores}", host.running_jobs,
                                   None if load is None else f"{load:.2f}")
        if idle:
            row += ("-" if host.idle_timeout_s is None else duration_text(host.idle_timeout_s),)
        rows.append((*row, host.reason or ""))
    header = ("HOST", "STATE", "ACTIVE", "FREE/CORES", "JOBS", "LOAD",
              *(("IDLE",) if idle else ()), "REASON")
    return format_table(header, rows, right={3, 4, 5})


@cli.command()
@click.option("--reasons", is_flag=True,
              help="Only the hosts that are not up, with why, who and since when.")
@click.option("--detect", is_flag=True,
              help="Compare what the host monitor found on each host (cores, memory, GPUs) "
                   "with etc/cluster.tab, and print the differences.")
@json_option
def lscluster(reasons: bool, detect: bool, as_json: bool) -> int:
    """The hosts: state, whether active, free cores, running jobs, load, and why.

    A drained host shows "draining" while its jobs still run, then "drained".

    \b
    Examples:
      hq-admin lscluster
      hq-admin lscluster --reasons     # like sinfo -R
      hq-admin lscluster --detect      # cluster.tab against the hardware found
    """
    result = admin_request(ListHosts())
    if detect:
        from hq.cli.admin_hosts import hardware_differences

        differences = hardware_differences(result.hosts)
        if as_json:
            print_json({"differences": differences})
        else:
            click.echo("\n".join(f"{d['host']}: {d['what']}: cluster.tab says {d['configured']},"
                                  f" found {d['found']}" for d in differences)
                       or "every host has what etc/cluster.tab says")
        return 1 if differences else 0
    if as_json:
        print_json(result)
    elif reasons:
        from hq.cli.admin_hosts import format_reasons

        click.echo(format_reasons(result.hosts))
    else:
        click.echo(format_hosts(result.hosts))
    return 0


def _host_change(name: str, active: bool, as_json: bool, verb: str) -> None:
    result = admin_request(SetHostActive(host=name, active=active))
    if as_json:
        print_json(result)
    elif result.changed:
        click.echo(f"host {result.host}: {verb}d")
    else:
        click.echo(f"host {result.host}: already {verb}d")


@cli.command()
@click.argument("name", shell_complete=host_names)
@json_option
def activatehost(name: str, as_json: bool) -> None:
    """Let hq start jobs on host NAME again.

    Example: hq-admin activatehost node07   (or: hq-admin activatehost:node07)
    """
    _host_change(name, True, as_json, "activate")


@cli.command()
@click.argument("name", shell_complete=host_names)
@json_option
def deactivatehost(name: str, as_json: bool) -> None:
    """Start no new jobs on host NAME; running jobs finish.

    Example: hq-admin deactivatehost node07   (or: hq-admin deactivatehost:node07)
    """
    _host_change(name, False, as_json, "deactivate")


def _cluster_change(active: bool, as_json: bool, verb: str) -> None:
    result = admin_request(SetClusterActive(active=active))
    if as_json:
        print_json(result)
    else:
        click.echo(f"cluster {verb}d" if result.changed else f"cluster already {verb}d")


@cli.command()
@json_option
def activate(as_json: bool) -> None:
    """Let hq start jobs (on every active host).

    Example: hq-admin activate
    """
    _cluster_change(True, as_json, "activate")


@cli.command()
@json_option
def deactivate(as_json: bool) -> None:
    """Start no new jobs anywhere; running jobs finish, pending ones wait.

    Example: hq-admin deactivate
    """
    _cluster_change(False, as_json, "deactivate")


@cli.command()
@json_option
def lsusers(as_json: bool) -> None:
    """The users: roles, pending and running jobs, whether a user-server is up, limits.

    Example: hq-admin lsusers
    """
    result = admin_request(ListUsers())
    if as_json:
        print_json(result)
        return
    rows = [(user.name, ",".join(user.roles) or "-", user.pending, user.running,
             _yes(user.user_server), f"{user.usage_core_hours:.2f}", user_limits_text(user))
            for user in result.users]
    click.echo(format_table(("USER", "ROLES", "PENDING", "RUNNING", "USER-SERVER", "USAGE-CH",
                             "LIMITS"), rows, right={2, 3, 5}))


def user_limits_text(user: UserInfo) -> str:
    """``max_running=10 max_cores=64 groups=physics``; ``-`` for a user with none of their
    own (the defaults of hq-server.cfg apply)."""
    words = [f"{key}={value}" for key, value in (("max_running", user.max_running),
                                                 ("max_cores", user.max_cores))
             if value is not None]
    if user.groups:
        words.append("groups=" + ",".join(user.groups))
    return " ".join(words) or "-"


@cli.command()
@json_option
def reload(as_json: bool) -> None:
    """Make hq-server take in changes to etc/users and etc/cluster.tab.

    Run hq-dbadmin -a first (it writes the changes to the database), then:

    Example: hq-dbadmin -a && hq-admin reload
    """
    result = admin_request(Reload())
    if as_json:
        print_json(result)
    else:
        changed = ", ".join(result.hosts_changed) or "none"
        click.echo(f"reloaded: {result.users} users; hosts changed: {changed}")


@cli.command()
@json_option
def shutdown(as_json: bool) -> None:
    """Stop hq-server; running jobs keep running and are picked up again at its restart.

    Example: hq-admin shutdown
    """
    result = admin_request(Shutdown())
    if as_json:
        print_json(result)
    else:
        click.echo("hq-server is stopping")


def _host_commands() -> None:
    from hq.cli.admin_hosts import (
        accounting_command,
        admin_cancel,
        drain,
        events,
        execservers,
        resume,
    )

    for command in (drain, resume, events, admin_cancel, execservers, accounting_command):
        cli.add_command(command)


_host_commands()


def _top_command() -> None:
    from hq.cli.top import admin_top

    cli.add_command(admin_top)


_top_command()


def _report_command() -> None:
    from hq.cli.admin_report import report_command

    cli.add_command(report_command)


_report_command()


def main() -> None:
    """Entry point of hq-admin."""
    args = split_colon_form(sys.argv[1:], list(cli.commands))
    sys.exit(run_program(cli, PROG, args))


if __name__ == "__main__":
    main()

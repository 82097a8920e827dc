"""hq-admin's commands for hosts and other users' jobs: ``drain`` and ``resume`` with a
reason (Slurm's ``scontrol update state=drain reason=...``), ``events`` of a host from the
event log, and ``cancel`` of any user's job with a reason its owner sees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from hq.cli.common import format_table, format_time, json_option, print_json
from hq.cli.completion import host_names
from hq.errors import UsageError
from hq.protocol.messages import AdminCancel, DrainHosts, HostEvents, HostInfo


def _request(request: Any) -> Any:
    from hq.cli.admin import admin_request

    return admin_request(request)


@click.command()
@click.argument("hosts", nargs=-1, required=True, metavar="HOST...", shell_complete=host_names)
@click.option("--reason", required=True, metavar="TEXT",
              help="Why (shown in lscluster and the host's events).")
@json_option
def drain(hosts: tuple[str, ...], reason: str, as_json: bool) -> None:
    """Start no new jobs on HOST...; the running ones finish (lscluster: draining, then
    drained).

    Example: hq-admin drain node07 node08 --reason "fan replaced on Monday"
    """
    if not reason.strip():
        raise UsageError("--reason: say why the host is drained")
    _switch(DrainHosts(hosts=list(hosts), drain=True, reason=reason.strip()), as_json,
            "drained")


@click.command()
@click.argument("hosts", nargs=-1, required=True, metavar="HOST...", shell_complete=host_names)
@json_option
def resume(hosts: tuple[str, ...], as_json: bool) -> None:
    """Let drained HOST... take jobs again.

    Example: hq-admin resume node07
    """
    _switch(DrainHosts(hosts=list(hosts), drain=False), as_json, "resumed")


def _switch(request: DrainHosts, as_json: bool, word: str) -> None:
    result = _request(request)
    if as_json:
        print_json(result)
        return
    for host in result.hosts:
        click.echo(f"host {host}: {word}" if host in result.changed
                   else f"host {host}: already {word}")


@click.command()
@click.argument("host", shell_complete=host_names)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              metavar="N", help="The newest N events.")
@json_option
def events(host: str, limit: int, as_json: bool) -> None:
    """HOST's events from the event log: drained, resumed, lost, found, (de)activated, with
    who and why.

    Example: hq-admin events node07
    """
    result = _request(HostEvents(host=host, limit=limit))
    if as_json:
        print_json(result)
        return
    rows = [(format_time(e.at), e.user or "", e.message) for e in result.events]
    click.echo(format_table(("WHEN", "WHO", "WHAT"), rows) if rows
               else f"no events of host {host}")


@click.command("cancel")
@click.argument("ids", nargs=-1, required=True)
@click.option("--reason", required=True, metavar="TEXT",
              help="Why: the owner sees it as the job's reason.")
@json_option
def admin_cancel(ids: tuple[str, ...], reason: str, as_json: bool) -> int:
    """Cancel jobs IDS of any user; the owner's user-server stops the running ones.

    Example: hq-admin cancel 4711 4712 --reason "fills /scratch"
    """
    from hq.cli.jobids import parse_ids

    if not reason.strip():
        raise UsageError("--reason: say why the jobs are cancelled")
    result = _request(AdminCancel(ids=parse_ids(*ids), reason=reason.strip()))
    if as_json:
        print_json(result)
    else:
        for r in result.results:
            owner = f" ({r.owner})" if r.owner else ""
            click.echo(f"job {r.id}{owner}: {r.result}")
    return 3 if any(r.owner is None for r in result.results) else 0


@click.command()
@json_option
def execservers(as_json: bool) -> None:
    """Every user's exec-server on every host: pid, state (running, connection lost,
    heartbeat lost, stopped, idle timeout), since when, last heard.

    Example: hq-admin execservers
    """
    from hq.protocol.messages import ListExecServers

    result = _request(ListExecServers())
    if as_json:
        print_json(result)
        return
    rows = [(e.user, e.host, e.pid, e.state, format_time(e.since), format_time(e.last_seen))
            for e in result.exec_servers]
    click.echo(format_table(("USER", "HOST", "PID", "STATE", "SINCE", "LAST HEARD"), rows,
                            right={2}) if rows else "no exec-server seen since hq-server started")


@click.command("accounting")
@click.option("--since", default="7d", show_default=True, metavar="DURATION|DATE",
              help="From this long ago (7d, 12h) or this day (2026-11-01).")
@click.option("--until", "until_text", metavar="DATE", help="Up to this day (default: now).")
@click.option("--by", type=click.Choice(["user", "day", "host"]), default="user",
              show_default=True, help="One line per user, day or host.")
@json_option
def accounting_command(since: str, until_text: str | None, by: str, as_json: bool) -> None:
    """Jobs that ended in a time span: counts, core-hours (cores x run time), CPU hours and
    mean wait, from the report views (the figures a lab's own reports get).

    \b
    Examples:
      hq-admin accounting                       # per user, the last 7 days
      hq-admin accounting --since 2026-11-01 --until 2026-12-01 --by day
    """
    import time

    from hq.protocol.messages import Accounting

    now = time.time()
    start, end = _point(since, now, "--since"), now if until_text is None else \
        _point(until_text, now, "--until")
    if end <= start:
        raise UsageError("--until must be after --since")
    result = _request(Accounting(since=start, until=end, by=by))
    if as_json:
        print_json(result)
        return
    rows = [(r.key, r.jobs, r.done, r.failed, r.cancelled, f"{r.core_hours:.2f}",
             f"{r.cpu_hours:.2f}", "-" if r.avg_wait_s is None else f"{r.avg_wait_s:.1f}")
            for r in result.rows]
    header = (by.upper(), "JOBS", "DONE", "FAILED", "CANCELLED", "CORE-H", "CPU-H", "WAIT-S")
    click.echo(format_table(header, rows, right=set(range(1, 8))) if rows
               else f"no job ended between {format_time(start)} and {format_time(end)}")


def _point(text: str, now: float, option: str) -> float:
    """A time as typed: a duration ago (7d) or a day (YYYY-MM-DD, local time)."""
    import datetime as dt

    from hq.cli.units import parse_duration

    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration(text)
    except ValueError:
        raise UsageError(f"{option} {text}: give a duration ago (7d, 12h) or a day "
                         "(2026-11-01)") from None


def hardware_differences(hosts: Sequence[HostInfo]) -> list[dict[str, Any]]:
    """Where etc/cluster.tab and the host monitor's findings disagree (memory within 5 %:
    kernels keep some back). A host not reported yet is named too."""
    found = []
    for host in hosts:
        if host.detected_cores is None:
            found.append({"host": host.name, "what": "hardware", "configured": "-",
                          "found": "not reported yet (is the host up?)"})
            continue
        if host.cores != host.detected_cores:
            found.append({"host": host.name, "what": "cores", "configured": host.cores,
                          "found": host.detected_cores})
        memory, seen = host.memory_mb, host.detected_memory_mb
        if memory is not None and seen is not None and abs(memory - seen) > 0.05 * seen:
            found.append({"host": host.name, "what": "memory (MiB)", "configured": memory,
                          "found": seen})
        if host.detected_gpus is not None and host.gpus != host.detected_gpus:
            found.append({"host": host.name, "what": "gpus", "configured": host.gpus,
                          "found": host.detected_gpus})
    return found


def format_reasons(hosts: Sequence[HostInfo]) -> str:
    """Every host that is not up, with why, who and since when (like ``sinfo -R``)."""
    rows = []
    for host in hosts:
        shown = host.display or host.state
        if shown == "up":
            continue
        if host.drained:
            rows.append((host.name, shown, host.drain_reason or "no reason given",
                         host.drained_by or "", format_time(host.drained_at)))
        else:
            rows.append((host.name, shown, host.reason or "", "", ""))
    return format_table(("HOST", "STATE", "REASON", "BY", "SINCE"), rows) if rows \
        else "every host is up"

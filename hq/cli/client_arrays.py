"""hq-client's commands for arrays: ``update`` (the cap), ``resubmit`` (what failed, again)
and ``progress`` (a live bar per array). An array's id is its first job's id."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from hq.cli.common import json_option, print_json, say
from hq.cli.selection import array_jobs
from hq.errors import NotFound, UsageError
from hq.protocol.messages import (
    MAX_ARRAY_CAP,
    PART_JOBS,
    ArrayCounts,
    Resubmit,
    UpdateArray,
)
from hq.states import JobState

if TYPE_CHECKING:
    from hq.protocol import BlockingClient
    from hq.protocol.messages import ArrayCountsReply, JobInfo

PROG = "hq-client"
FINISHED = frozenset(s.value for s in JobState if s.finished)
RESUBMIT_DEFAULT = "failed,cancelled"


def _connect() -> BlockingClient:
    from hq.cli.userd_link import connect_user_server
    from hq.config import Installation

    return connect_user_server(Installation.locate(), PROG)


@click.command()
@click.argument("array", type=click.IntRange(min=1), metavar="ARRAY")
@click.option("--cap", type=click.IntRange(0, MAX_ARRAY_CAP), required=True, metavar="N",
              help="At most N of its jobs dispatched or running at once (0: no cap).")
@json_option
def update(array: int, cap: int, as_json: bool) -> None:
    """Change an unfinished array: how many of its jobs run at once.

    Example: hq-client update 42 --cap 20
    """
    with _connect() as client:
        reply = client.request(UpdateArray(array=array, cap=cap))
    if as_json:
        print_json(reply)
    else:
        click.echo(f"array {reply.array_id}: cap {reply.cap or 'none'}")


@click.command()
@click.argument("array", type=click.IntRange(min=1), metavar="ARRAY")
@click.option("--state", "states", default=RESUBMIT_DEFAULT, show_default=True,
              metavar="STATES", help="Resubmit the jobs that ended in these states.")
@click.option("--hold", is_flag=True, help="Submit them held (hq-client release).")
@json_option
def resubmit(array: int, states: str, hold: bool, as_json: bool) -> int:
    """Submit again the jobs of ARRAY (or one job) that ended in STATES, as a new array
    with the same indexes and spec (and the environment they had).

    The new jobs point back at the old ones (hq-client show), and pending jobs that waited
    for an old one (kept by --kill-on-invalid-dep=no) now wait for its new one.

    Example: hq-client resubmit 42 --state failed
    """
    wanted = {s.strip() for s in states.split(",") if s.strip()}
    if not wanted or not wanted <= FINISHED:
        raise UsageError(f"--state: give finished states ({', '.join(sorted(FINISHED))})")
    with _connect() as client:
        jobs = _array_or_job(client, array)
        again = [job.id for job in jobs if job.state in wanted]
        if not again:
            say(f"{PROG}: nothing to resubmit: no job of {array} is {' or '.join(sorted(wanted))}")
            if as_json:
                print_json({"ids": [], "resubmit_of": []})
            return 0
        if len(again) > PART_JOBS:
            raise UsageError(f"{len(again):,} jobs to resubmit; at most {PART_JOBS:,} at once")
        reply = client.request(Resubmit(ids=again, hold=hold), timeout=60.0)
    if as_json:
        print_json({"ids": reply.ids, "submission_id": reply.submission_id,
                    "resubmit_of": again})
    else:
        from hq.cli.jobids import format_ids

        click.echo(f"Resubmitted {len(again)} job(s) {format_ids(again)} as "
                   f"{format_ids(reply.ids)}")
    return 0


def _array_or_job(client: BlockingClient, job_id: int) -> list[JobInfo]:
    from hq.protocol.messages import Show

    try:
        return array_jobs(client, job_id)
    except NotFound:
        return [client.request(Show(id=job_id)).job]


@click.command()
@click.argument("arrays", nargs=-1, required=True, type=click.IntRange(min=1),
                metavar="ARRAY...")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              metavar="S", help="Seconds between looks.")
@json_option
def progress(arrays: tuple[int, ...], interval: float, as_json: bool) -> int:
    """A live bar per array until every one of its jobs has finished; exits 0 when all are
    done, else 1.

    Example: hq-client progress 42
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with _connect() as client:
        looks = {a: client.request(ArrayCounts(array=a)) for a in arrays}
        if as_json:   # no bars: wait quietly, then the final counts
            while not all(_finished(look) for look in looks.values()):
                time.sleep(interval)
                looks = {a: client.request(ArrayCounts(array=a)) for a in arrays}
            print_json({str(a): _counts(look) for a, look in looks.items()})
            return _status(looks)
        columns = (TextColumn("array {task.fields[array]}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("{task.fields[text]}"))
        with Progress(*columns, transient=False) as bars:
            tasks = {a: bars.add_task("", total=look.jobs, array=a, text="")
                     for a, look in looks.items()}
            while True:
                for array, look in looks.items():
                    done = sum(n for s, n in look.counts.items() if s in FINISHED)
                    text = ", ".join(f"{n} {s}" for s, n in sorted(_counts(look).items()))
                    bars.update(tasks[array], total=look.jobs, completed=done, text=text)
                if all(_finished(look) for look in looks.values()):
                    break
                time.sleep(interval)
                looks = {a: client.request(ArrayCounts(array=a)) for a in arrays}
    return _status(looks)


def _counts(look: ArrayCountsReply) -> dict[str, int]:
    return {str(state): n for state, n in look.counts.items() if n}


def _finished(look: ArrayCountsReply) -> bool:
    """Every job finished, and stored (an array cancelled whole while it was being stored
    counts as cancelled at once, and ends once all its jobs are stored)."""
    return look.ended


def _status(looks: dict[int, ArrayCountsReply]) -> int:
    return 0 if all(look.counts.get(JobState.DONE, 0) == look.jobs
                    for look in looks.values()) else 1

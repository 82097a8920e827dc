"""hq-client: follow and control your own jobs (through your hq-user-server).

Every request is about the caller's own jobs; another user's job is "not found", exactly
like a job that does not exist. Others' jobs appear only as counts in ``status``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
import msgspec

from hq.cli.common import (
    CONTEXT_SETTINGS,
    json_option,
    print_json,
    run_program,
    say,
    verbosity_options,
)
from hq.cli.completion import job_ids
from hq.cli.jobview import STATE_ORDER, UNFINISHED_STATES
from hq.cli.selection import Selection, parse_selected, selected_ids
from hq.errors import UsageError
from hq.program import version_option
from hq.protocol.messages import (
    MAX_IDS,
    MAX_PAGE,
    MAX_WHOLE_ARRAYS,
    Cancel,
    ChangesReply,
    Hold,
    Jobs,
    JobsReply,
    Release,
    Request,
    Show,
    Status,
)

if TYPE_CHECKING:
    from hq.protocol import BlockingClient

PROG = "hq-client"
# a whole array's change may wait for its layout (20 s) and then change a million jobs
WHOLE_ARRAY_TIMEOUT_S = 120.0
UNFINISHED = list(UNFINISHED_STATES)


def _connect() -> BlockingClient:
    from hq.cli.userd_link import connect_user_server
    from hq.config import Installation

    return connect_user_server(Installation.locate(), PROG)


def _request(message: Request) -> Any:
    with _connect() as client:
        return client.request(message)


def chunks(ids: list[int]) -> list[list[int]]:
    """``ids`` in pieces a request may carry (MAX_IDS each)."""
    return [ids[i:i + MAX_IDS] for i in range(0, len(ids), MAX_IDS)] or [[]]


def fetch_jobs(client: BlockingClient, request: Jobs, limit: int | None) -> JobsReply:
    """All jobs ``request`` matches (the newest ``limit``), asked page by page: hq-server
    answers at most MAX_PAGE at a time, newest first, with ``more`` when older ones match."""
    found: list[Any] = []
    arrays: list[Any] = []
    before = None
    while limit is None or len(found) < limit:
        want = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(found))
        page = client.request(msgspec.structs.replace(request, limit=want, before=before))
        found = page.jobs + found
        arrays = arrays or page.arrays   # (a folded listing: on the first page)
        if not page.more or not page.jobs:
            break
        before = page.jobs[0].id
    return JobsReply(jobs=found, arrays=arrays)


def parse_one(text: str) -> Selection:
    """The single job ``text`` names (42 or 42_7); UsageError for a range or a list."""
    ids, elements = parse_selected((text,))
    count = len(ids) + sum(2 if i is None else len(i) for i in elements.values())
    if count != 1:
        named = "several" if count > len(ids) + len(elements) else str(count)
        raise UsageError(f'"{text}" names {named} jobs; give one job id (42, or 42_7)')
    return ids, elements


def one_id(client: BlockingClient, selection: Selection) -> int:
    return selected_ids(client, selection)[0]


array_option = click.option("--array", "arrays", multiple=True, type=click.IntRange(min=1),
                            metavar="ID", help="Every job of array ID (repeatable).")


def parse_states(values: tuple[str, ...]) -> list[str] | None:
    """``--state running --state done,failed`` -> the states; None when none were given."""
    states = [s.strip().lower() for value in values for s in value.split(",") if s.strip()]
    for state in states:
        if state not in STATE_ORDER:
            raise UsageError(f'--state: unknown state "{state}" (use {", ".join(STATE_ORDER)})')
    return list(dict.fromkeys(states)) or None


@click.group(context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
@version_option
@verbosity_options
def cli() -> None:
    """Follow and control your own hq jobs.

    \b
    Examples:
      hq-client status              # your jobs by state, the cluster at a glance
      hq-client jobs                # your unfinished jobs
      hq-client show 42             # everything about job 42
      hq-client log -f 42           # follow job 42's output until it ends
      hq-client cancel 42-45        # cancel jobs 42 to 45
    """


@cli.command()
@json_option
def status(as_json: bool) -> None:
    """Your jobs by state, others' as counts, and the cluster.

    Example: hq-client status
    """
    data = _request(Status())
    if as_json:
        print_json(data)
    else:
        from hq.cli.jobview import format_status

        click.echo(format_status(data))


@cli.command()
@click.option("--state", "states", multiple=True, metavar="STATE",
              help="Only jobs in STATE (repeatable or a comma list): " + ", ".join(STATE_ORDER))
@click.option("--all", "show_all", is_flag=True, help="Finished jobs too.")
@click.option("--group", metavar="NAME", help="Only jobs of this group.")
@click.option("--name", metavar="PATTERN", help="Only jobs whose name matches (* and ?).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="At most N jobs: the newest (highest ids), shown in id order.")
@click.option("--array", type=click.IntRange(min=1), metavar="ID",
              help="Only the jobs of array ID.")
@click.option("--expand", is_flag=True,
              help="One line per job of an array (default: one line per array, with counts).")
@json_option
def jobs(states: tuple[str, ...], show_all: bool, group: str | None, name: str | None,
         limit: int | None, array: int | None, expand: bool, as_json: bool) -> None:
    """List your jobs: by default those not finished yet.

    \b
    Examples:
      hq-client jobs
      hq-client jobs --all --name 'sim-*'
      hq-client jobs --state failed,cancelled --group nightly
      hq-client jobs --all --array 42 --expand
    """
    wanted = parse_states(states)
    if wanted and show_all:
        raise UsageError("--all and --state cannot be combined")
    if wanted is None and not show_all:
        wanted = UNFINISHED
    # the table of unfinished jobs has hq-server fold each array into one line (its cost is
    # then what is shown, not one record per element); --json and --expand get every job
    fold = not (as_json or expand) and wanted is not None and set(wanted) <= set(UNFINISHED)
    with _connect() as client:
        data = fetch_jobs(client, Jobs(states=wanted, group=group, name=name, array=array,
                                       fold=fold), limit)
    if as_json:
        print_json(data)
    elif not data.jobs and not data.arrays:
        say("no jobs" if show_all or states else
            "no unfinished jobs ('hq-client jobs --all' shows finished ones too)")
    else:
        from hq.cli.jobview import format_job_table

        click.echo(format_job_table(data.jobs, expand=expand, arrays=data.arrays))


@cli.command()
@click.argument("job_id", metavar="ID", shell_complete=job_ids)
@json_option
def show(job_id: str, as_json: bool) -> None:
    """Show everything about job ID.

    Example: hq-client show 42
    """
    selection = parse_one(job_id)
    with _connect() as client:
        data = client.request(Show(id=one_id(client, selection)))
    if as_json:
        print_json(data)
    else:
        from hq.cli.jobview import format_job_details

        click.echo(format_job_details(data.job))


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=job_ids)
@json_option
def details(ids: tuple[str, ...], as_json: bool) -> int:
    """Show everything about jobs IDS (default: your unfinished jobs).

    \b
    Examples:
      hq-client details
      hq-client details 42-45,50

    IDS: 42, 42-45, 42,44; array elements 42_7 or 42_[1-5,9]; a whole array 42_* (or
    --array 42: an array's id is its first job's); several may be given.
    """
    selection = parse_selected(ids) if ids else None
    with _connect() as client:
        wanted = selected_ids(client, selection) if selection else None
        if wanted:
            found = [job for piece in chunks(wanted)
                     for job in fetch_jobs(client, Jobs(ids=piece), None).jobs]
            data = JobsReply(jobs=sorted(found, key=lambda job: job.id))
        else:
            data = fetch_jobs(client, Jobs(states=UNFINISHED), None)
    missing = sorted(set(wanted or ()) - {job.id for job in data.jobs})
    if as_json:
        print_json(data)
    else:
        from hq.cli.jobview import format_job_details

        click.echo("\n\n".join(format_job_details(job) for job in data.jobs))
        if not data.jobs and not wanted:
            say("no unfinished jobs")
    if missing:
        from hq.cli.jobids import format_ids

        click.echo(f"{PROG}: error: no such job: {format_ids(missing)}", err=True)
        return 3
    return 0


def _change(kind: type[Cancel | Hold | Release], ids: tuple[str, ...], arrays: tuple[int, ...],
            as_json: bool) -> int:
    """Change jobs named one by one (``42``, ``42_7``) and whole arrays (``42_*``, ``--array
    42``): hq-server finds an array's jobs itself and answers with counts, so the cost of a
    whole array does not include listing it here, nor a line per job."""
    named, elements = parse_selected(ids, arrays)
    whole = [array for array, indexes in elements.items() if indexes is None]
    some = {array: indexes for array, indexes in elements.items() if indexes is not None}
    with _connect() as client:
        counted = [changed for start in range(0, len(whole), MAX_WHOLE_ARRAYS)
                   for changed in client.request(kind(arrays=whole[start:start + MAX_WHOLE_ARRAYS]),
                                                 timeout=WHOLE_ARRAY_TIMEOUT_S).arrays]
        wanted = selected_ids(client, (named, some)) if named or some else []
        data = ChangesReply(results=[result for piece in chunks(wanted) for result
                                     in client.request(kind(ids=piece)).results], arrays=counted)
    if as_json:
        print_json(data)
    else:
        for result in data.results:
            click.echo(f"job {result.id}: {result.result}")
        for array in data.arrays:
            click.echo(f"array {array.id}: " + (", ".join(
                f"{n:,} {result}" for result, n in sorted(array.results.items(),
                                                          key=lambda item: -item[1]))
                or "no jobs"))
    return 3 if any(r.result == "not found" for r in data.results) else 0


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=job_ids)
@array_option
@json_option
def cancel(ids: tuple[str, ...], arrays: tuple[int, ...], as_json: bool) -> int:
    """Cancel jobs IDS.

    Pending jobs never start; running ones are killed with their whole process tree.

    Example: hq-client cancel 42 50-59

    IDS: 42, 42-45, 42,44; array elements 42_7 or 42_[1-5,9]; a whole array 42_* (or
    --array 42: an array's id is its first job's); several may be given.
    """
    return _change(Cancel, ids, arrays, as_json)


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=job_ids)
@array_option
@json_option
def hold(ids: tuple[str, ...], arrays: tuple[int, ...], as_json: bool) -> int:
    """Keep pending jobs IDS from starting until they are released.

    Example: hq-client hold 42-45

    IDS: 42, 42-45, 42,44; array elements 42_7 or 42_[1-5,9]; a whole array 42_* (or
    --array 42: an array's id is its first job's); several may be given.
    """
    return _change(Hold, ids, arrays, as_json)


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=job_ids)
@array_option
@json_option
def release(ids: tuple[str, ...], arrays: tuple[int, ...], as_json: bool) -> int:
    """Let held jobs IDS be scheduled again.

    Example: hq-client release 42-45

    IDS: 42, 42-45, 42,44; array elements 42_7 or 42_[1-5,9]; a whole array 42_* (or
    --array 42: an array's id is its first job's); several may be given.
    """
    return _change(Release, ids, arrays, as_json)


@cli.command()
@click.argument("ids", nargs=-1, shell_complete=job_ids)
@array_option
@json_option
def wait(ids: tuple[str, ...], arrays: tuple[int, ...], as_json: bool) -> int:
    """Wait until jobs IDS have finished.

    Exits with the job's exit code (one job), or 0 when all jobs are done, else 1.
    Ctrl-C stops the waiting, not the jobs.

    Example: hq-client wait 42 && echo "job 42 succeeded"

    IDS: 42, 42-45, 42,44; array elements 42_7 or 42_[1-5,9]; a whole array 42_* (or
    --array 42: an array's id is its first job's); several may be given.
    """
    from hq.cli.waiting import wait_and_report, wait_for_arrays_and_report

    selection = parse_selected(ids, arrays)
    named, elements = selection
    with _connect() as client:
        whole = [array for array, indexes in elements.items() if indexes is None]
        if whole and not named and len(whole) == len(elements) and not as_json:
            # whole arrays only: waited for by their counts, however many jobs they have
            code = wait_for_arrays_and_report(client, whole, PROG)
            if code is not None:
                return code
        code, results = wait_and_report(client, selected_ids(client, selection), PROG)
    if as_json and results is not None:
        print_json({"jobs": results})
    return code


@cli.command()
@click.argument("job_id", metavar="ID", shell_complete=job_ids)
@click.option("--stdout", "which", flag_value="stdout", default=True,
              help="The job's standard output (the default).")
@click.option("--stderr", "which", flag_value="stderr", help="The job's standard error.")
@click.option("--both", "which", flag_value="both",
              help="Both: the job's stdout to stdout and its stderr to stderr.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing what the job writes until it has finished.")
def log(job_id: str, which: str, follow: bool) -> int:
    """Print the output of job ID (read from its output files, as you).

    \b
    Examples:
      hq-client log 42
      hq-client log --stderr 42
      hq-client log -f --both 42
    """
    from hq.cli.joblog import show_log

    selection = parse_one(job_id)
    with _connect() as client:
        return show_log(client, one_id(client, selection), which, follow)


def _array_commands() -> None:
    from hq.cli.client_arrays import progress, resubmit, update

    for command in (update, resubmit, progress):
        cli.add_command(command)


_array_commands()


def _top_command() -> None:
    from hq.cli.top import client_top

    cli.add_command(client_top)


_top_command()


def main() -> None:
    """Entry point of hq-client."""
    sys.exit(run_program(cli, PROG))


if __name__ == "__main__":
    main()

"""Waiting for jobs to finish (``hq-submit --wait``, ``hq-client wait``) and the exit status
that reports how they ended.

Exit status: for one job its own exit code (128 + the signal number when a signal killed it,
1 when it was cancelled or failed without an exit code); for several jobs 0 when all are
``done``, else 1. Ctrl-C stops the waiting, not the jobs (exit 130).

Whole arrays are waited for by their counts (``ArrayCounts``, one look a second), so that
waiting for a million jobs costs hq-server what waiting for one does.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import click

from hq.cli.common import is_quiet, say
from hq.errors import NotFound
from hq.protocol.messages import MAX_IDS, ArrayCounts, Wait
from hq.protocol.messages import JobWaitState as JobResult

if TYPE_CHECKING:
    from hq.protocol import BlockingClient

WAIT_TIMEOUT_S = 1.0
INTERRUPTED = 130


def wait_for_jobs(client: BlockingClient, ids: Sequence[int], *,
                  show_progress: bool) -> list[JobResult]:
    """Ask ``wait`` until every job in ``ids`` is finished; return their final results.

    With ``show_progress`` one line on stderr is updated after every answer.
    """
    results: dict[int, JobResult] = {}
    pending = list(ids)
    while pending:
        for start in range(0, len(pending), MAX_IDS):
            reply = client.request(Wait(ids=pending[start:start + MAX_IDS],
                                        timeout_s=WAIT_TIMEOUT_S),
                                   timeout=WAIT_TIMEOUT_S + 30.0)
            for job in reply.jobs:
                results[job.id] = job
        if missing := [i for i in pending if i not in results]:
            from hq.cli.jobids import format_ids

            raise NotFound(f"no such job: {format_ids(missing)}")
        pending = [i for i in pending if not results[i].state.finished]
        if show_progress:
            _show_progress(progress_text([results[i] for i in ids if i in results], len(ids)))
    if show_progress:
        _show_progress("")
    return [results[i] for i in ids]


def wait_and_report(client: BlockingClient, ids: Sequence[int], prog: str
                    ) -> tuple[int, list[JobResult] | None]:
    """Wait for ``ids`` with progress on a terminal, say how they ended; return the exit
    status and the results (None when interrupted)."""
    progress = sys.stderr.isatty() and not is_quiet()
    try:
        results = wait_for_jobs(client, ids, show_progress=progress)
    except KeyboardInterrupt:
        if progress:
            _show_progress("")
        from hq.cli.jobids import format_ids

        which = f"job {ids[0]}" if len(ids) == 1 else f"jobs {format_ids(ids)}"
        click.echo(f"{prog}: stopped waiting; {which} keep{'s' if len(ids) == 1 else ''} "
                   "running (hq-client cancel to stop them)", err=True)
        return INTERRUPTED, None
    say(summary(results))
    return exit_status(results), results


def wait_for_arrays_and_report(client: BlockingClient, arrays: Sequence[int], prog: str
                               ) -> int | None:
    """Wait until every job of ``arrays`` has ended, looking at their counts; say how they
    ended and return the exit status. None for a single job, whose own exit status needs
    its result (``wait_and_report`` then answers at once)."""
    progress = sys.stderr.isatty() and not is_quiet()
    try:
        while True:
            looks = [client.request(ArrayCounts(array=array)) for array in arrays]
            total = sum(look.jobs for look in looks)
            counts: Counter[str] = Counter()
            for look in looks:
                counts.update({str(state): n for state, n in look.counts.items()})
            if progress:
                _show_progress(_progress_line(counts, total))
            if all(look.ended for look in looks):
                break
            time.sleep(WAIT_TIMEOUT_S)
    except KeyboardInterrupt:
        if progress:
            _show_progress("")
        named = ", ".join(map(str, arrays))
        click.echo(f"{prog}: stopped waiting; array{'s' if len(arrays) > 1 else ''} {named} "
                   "keep running (hq-client cancel to stop them)", err=True)
        return INTERRUPTED
    if progress:
        _show_progress("")
    if total == 1:
        return None
    say(_summary_line(counts, total))
    return 0 if counts.get("done", 0) == total else 1


def exit_status(results: Sequence[JobResult]) -> int:
    """The exit status that reports how ``results`` ended (see the module docstring)."""
    if len(results) != 1:
        return 0 if all(job.state == "done" for job in results) else 1
    job = results[0]
    if job.state == "done":
        return 0
    if job.state == "cancelled":
        return 1
    if job.signal:
        return min(128 + job.signal, 255)
    code = job.exit_code
    return code if code and 0 < code < 256 else 1


def outcome(job: JobResult) -> str:
    """How one job ended: ``done``, ``failed (exit code 3)``, ``failed (signal 9)``,
    ``cancelled (dependency never satisfied: job 41 failed)``..."""
    state = str(job.state)
    if job.reason:
        return f"{state} ({job.reason})"
    if job.signal:
        return f"{state} (signal {job.signal})"
    if job.exit_code not in (None, 0):
        return f"{state} (exit code {job.exit_code})"
    return state


def summary(results: Sequence[JobResult]) -> str:
    """One line about finished jobs: ``job 42 done`` or ``10 jobs finished: 9 done, 1 failed``."""
    if len(results) == 1:
        return f"job {results[0].id}: {outcome(results[0])}"
    return _summary_line(_count(results), len(results))


def _summary_line(counts: Mapping[str, int], total: int) -> str:
    parts = [f"{counts[state]} {state}" for state in ("done", "failed", "cancelled")
             if counts.get(state)]
    return f"{total} jobs finished: {', '.join(parts)}"


def progress_text(known: Sequence[JobResult], total: int) -> str:
    """``3/10 done, 1 failed, 6 running/pending`` (one job: ``job 42: running``)."""
    if total == 1 and known:
        return f"job {known[0].id}: {known[0].state}"
    return _progress_line(_count(known), total)


def _progress_line(counts: Mapping[str, int], total: int) -> str:
    done, failed, cancelled = (counts.get(s, 0) for s in ("done", "failed", "cancelled"))
    text = f"{done}/{total} done, {failed} failed"
    if cancelled:
        text += f", {cancelled} cancelled"
    return f"{text}, {total - done - failed - cancelled} running/pending"


def _count(results: Sequence[JobResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in results:
        counts[str(job.state)] = counts.get(str(job.state), 0) + 1
    return counts


def _show_progress(text: str) -> None:
    # carriage return + erase to the end of the line: the line is rewritten in place
    sys.stderr.write(f"\r\x1b[K{text}")
    sys.stderr.flush()

"""Jobs that run again after a failure (``hq-submit --retries N``, GNU parallel's --retries,
DAGMan's RETRY): which failures count, and the record each run leaves.

A run that exits non-zero or is killed by a signal is a failure worth another try. One that
could not start, hit its time limit or was cancelled is not: running it again would end the
same way, or go against what was asked. Each run of such a job leaves a ``job_attempts`` row
with its own outcome, since the jobs row only keeps the last one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hq.job import Job
from hq.states import JobState


def retry_reason(job: Job, exit_code: int | None, signal: int | None,
                 reason: str | None) -> str | None:
    """Why ``job`` runs again after this end, or None when it does not."""
    if job.retry_count >= job.spec.retries or reason or job.cancel_requested:
        return None
    if signal is not None:
        how = f"killed by signal {signal}"
    elif exit_code:
        how = f"exit code {exit_code}"
    else:
        return None
    return f"retry {job.retry_count + 1} of {job.spec.retries} after {how}"


def attempt_row(job: Job, state: JobState, reason: str | None, *, exit_code: int | None,
                signal: int | None, started_at: dt.datetime | None,
                ended_at: dt.datetime | None, cpu_time_s: float | None,
                max_rss_kb: int | None) -> dict[str, Any]:
    """The job_attempts row of the run of ``job`` that just ended (its current attempt)."""
    return {"job_id": job.id, "attempt": job.attempt, "host_name": job.host, "state": state,
            "reason": reason, "exit_code": exit_code, "signal_number": signal,
            "started_at": started_at, "ended_at": ended_at, "cpu_time_s": cpu_time_s,
            "max_rss_kb": max_rss_kb}

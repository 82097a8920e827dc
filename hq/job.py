"""A job as hq-server and the database know it: its spec, its owner and its outcome.

``Job`` is what hq-server keeps in memory and what ``hq.db.jobs`` reads from and writes to the
jobs table (the one place that knows the columns); ``Submission`` is what a submission's jobs
share. Nothing here talks to anything: it imports only the spec and the states.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hq.jobspec import JobSpec, resolve_path
from hq.states import JobState


@dataclass(slots=True)
class Submission:
    """One ``hq-submit`` call: what all its jobs share."""

    id: int
    owner: str
    environment: dict[str, str]
    umask: int
    submitted_at: dt.datetime | None = None
    submit_host: str = ""
    job_count: int = 0
    first_job_id: int | None = None     # the array id
    cap: int | None = None              # most of its jobs dispatched or running at once
    array_indexes: str | None = None    # an array signed as a whole: its index set
    notify: str | None = None
    mail_user: str | None = None
    mail_type: str | None = None
    notify_signature: str | None = None
    kill_on_invalid_dep: bool = True    # cancel a job whose dependency can never be met
    # its jobs by state, those not stored yet included (memory only, ``finished`` loaded at
    # start): an array's progress is counted without a pass over its jobs
    unfinished: Counter[JobState] = field(default_factory=Counter)
    finished: Counter[JobState] = field(default_factory=Counter)
    # run times of its jobs that ended (memory only): how deep its jobs may be queued ahead
    runs: int = 0
    run_time_s: float = 0.0

    @property
    def active(self) -> int:
        """Of its jobs, how many are dispatched or running now."""
        return self.unfinished[JobState.DISPATCHED] + self.unfinished[JobState.RUNNING]

    def mean_run_time_s(self) -> float | None:
        return self.run_time_s / self.runs if self.runs else None


@dataclass(slots=True, eq=False)
class Job:
    """One job: the spec as submitted and signed, and the outcome hq-server records."""

    id: int
    submission_id: int
    owner: str
    owner_id: int
    spec: JobSpec
    submitted_at: dt.datetime
    state: JobState = JobState.PENDING
    reason: str | None = None       # why it waits, or why it ended as it did
    host: str | None = None         # where it runs or ran last
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    eligible_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    cpu_time_s: float | None = None
    max_rss_kb: int | None = None
    restart_count: int = 0          # times it was requeued after it had started
    attempt: int = 0                # one more each time it was withdrawn or lost
    retry_count: int = 0            # times it ran again after a failure (spec.retries)
    gpu_ids: str | None = None      # the GPUs it holds on its host, comma-separated
    resubmit_of: int | None = None  # the job it runs again (hq-client resubmit)
    array_id: int | None = None     # an element's array: its submission's first job
    # Asked to stop, or to be held, while dispatched; hq-server's memory only.
    cancel_requested: bool = False
    hold_requested: bool = False
    cancel_reason: str | None = None    # an admin's cancel: the reason the owner sees

    def outcome(self) -> dict[str, Any]:
        """Every outcome attribute's value now (what the jobs row must say)."""
        return {name: getattr(self, name) for name in _OUTCOME_ORDER}

    @property
    def stdout_path(self) -> str:
        """The job's standard output file, resolved (absolute, %j and %a filled in)."""
        return resolve_path(self.spec.stdout, self.id, self.spec.array_index, self.spec.cwd,
                            self.array_id)

    @property
    def stderr_path(self) -> str:
        """The job's standard error file, resolved."""
        return resolve_path(self.spec.stderr, self.id, self.spec.array_index, self.spec.cwd,
                            self.array_id)


# The outcome attributes of Job that a transition may set (hq.db.jobs maps them to columns).
OUTCOME_FIELDS = frozenset({"state", "reason", "host", "pid", "exit_code", "signal",
                            "eligible_at", "started_at", "ended_at", "cpu_time_s", "max_rss_kb",
                            "restart_count", "attempt", "retry_count",
                            "gpu_ids"})
_OUTCOME_ORDER = sorted(OUTCOME_FIELDS)

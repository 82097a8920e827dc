"""The shapes that describe a job on the wire: what a submission names besides its specs
(``DependencyRef``), what its owner sees (``JobInfo`` with its dependencies and attempts),
how it ended (``JobWaitState``) and how it travels to a host (``RunJob``, ``SubmissionEnv``);
with the checks a submission's jobs and environment get at every decode. Every kind is
importable from ``hq.protocol.messages``, the catalogue."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hq.jobspec import InvalidSpec, JobSpec
from hq.protocol.fields import (
    Count,
    Environment,
    Epoch,
    ExitCode,
    HostName,
    JobId,
    Name,
    Pid,
    SignalNumber,
    Text,
    Umask,
    UserName,
    Word,
)
from hq.states import JobState


class DependencyRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One job (or array) a submission names in ``--dependency`` (version 2): ``id`` is a
    job, or an array's id for the whole array; ``index`` names one element of that array
    (``42_7``). ``aftercorr``: element i of the new array after element i of ``id``."""

    kind: Literal["afterok", "afterany", "afternotok", "aftercorr"]
    id: JobId
    index: Count | None = None


class DependencyInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One job another one waits for, and how that one is doing."""

    id: JobId
    kind: Word
    state: JobState


class AttemptInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One earlier run of a job that may run again after a failure (--retries)."""

    attempt: Count
    state: JobState
    reason: Text | None = None
    host: HostName | None = None
    exit_code: ExitCode | None = None
    signal: SignalNumber | None = None
    started_at: Epoch | None = None
    ended_at: Epoch | None = None


class JobInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything about one job that its owner may see (built by ``hq.server.views``)."""

    id: JobId
    name: Name | None
    owner: UserName
    state: JobState
    state_reason: Text | None
    host: HostName | None
    cores: Count
    memory_mb: Count | None
    priority: int
    group: Name | None
    info_text: Name | None
    submission_id: JobId
    array_index: Count | None
    command: str
    shell: str
    cwd: str
    stdout: str                    # resolved, absolute
    stderr: str
    log_path: str | None
    excluded_hosts: list[HostName]
    time_limit_s: Count | None
    requeue: bool
    pid: Pid | None
    exit_code: ExitCode | None
    signal: SignalNumber | None
    submitted_at: Epoch | None
    started_at: Epoch | None
    ended_at: Epoch | None
    cpu_time_s: Annotated[float, msgspec.Meta(ge=0)] | None
    max_rss_kb: Count | None
    restart_count: Count
    # workflows (version 2)
    array_id: JobId | None = None
    constraint: Name | None = None
    gpus: Count = 0
    gpu_ids: Name | None = None
    retries: Count = 0
    retry_count: Count = 0
    resubmit_of: JobId | None = None
    dependencies: list[DependencyInfo] = msgspec.field(default_factory=list)
    attempts: list[AttemptInfo] = msgspec.field(default_factory=list)


class ArrayLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An array's matching elements as one line of ``jobs`` (``Jobs.fold``), made by
    hq-server from memory, so that a listing costs one line, not one JobInfo per element."""

    id: JobId                      # the array's id
    first: JobId                   # the lowest id among the matching elements
    indexes: Annotated[str, msgspec.Meta(max_length=4096)]   # theirs, compact (1-500,507)
    counts: dict[JobState, Count]
    name: Name | None
    cores: Count
    hosts: Annotated[list[HostName], msgspec.Meta(max_length=4)]   # where some run, 4 at most
    more_hosts: bool = False
    submitted_at: Epoch | None
    reason: Text | None            # why its first pending or held element waits
    command: Annotated[str, msgspec.Meta(max_length=4096)]


class JobWaitState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: JobId
    state: JobState
    exit_code: ExitCode | None = None
    signal: SignalNumber | None = None
    reason: Text | None = None     # why it ended as it did (version 2)


Attempt = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class RunJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: JobId
    submission_id: JobId
    spec: JobSpec
    # which dispatch of the job this is (one more each time hq-server hands it out): a report
    # about an earlier one, or a second order for it, is told from this one (version 2)
    attempt: Attempt = 0
    # the array it is an element of (its first job's id): HQ_ARRAY_ID and %A in its paths
    array_id: JobId | None = None
    # on a host with GPUs, the devices it was given (CUDA_VISIBLE_DEVICES); None: no GPUs
    gpus: Annotated[list[Annotated[str, msgspec.Meta(max_length=128)]],
                    msgspec.Meta(max_length=64)] | None = None


class SubmissionEnv(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    environment: Environment
    umask: Umask


def validate_jobs(jobs: list[JobSpec]) -> None:
    if len(jobs) == 1:
        jobs[0].validate()
        return
    for n, spec in enumerate(jobs, 1):
        try:
            spec.validate()
        except InvalidSpec as err:
            raise InvalidSpec(f"job {n} of {len(jobs)}: {err}") from None


def check_environment(environment: dict[str, str]) -> None:
    """An environment a job can be started with: names without ``=`` or NUL, values without
    NUL, all of it valid text (a lone surrogate is what undecodable bytes become)."""
    for name, value in environment.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise InvalidSpec(f"environment variable {name[:100]!r}: a name must be non-empty "
                              "and without '=' or NUL, a value without NUL")
        try:
            name.encode()
            value.encode()
        except UnicodeEncodeError:
            raise InvalidSpec(f"environment variable {name[:100]!r} is not valid UTF-8 "
                              "text") from None


MAX_DEPENDENCIES = 1000   # --dependency items of one submission (an array counts as one)


MAX_ARRAY_CAP = 1_000_000

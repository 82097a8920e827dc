"""Every message hq's processes exchange, each defined once, typed and range-checked.

A frame holds one JSON object whose ``type`` names its kind (``hq.protocol.frames``). Each
kind below is a msgspec Struct: decoding a frame checks every field's type and range and
refuses unknown fields, so a bad message is a protocol error at the boundary and never reaches
a handler. Each daemon decodes only the kinds its peers may send (the ``*_SENDS`` unions at the
end) and dispatches them through a table from class to handler.

Who sends what (a request carries ``rid`` and gets one reply or ``Error``; the rest are
notifications and get no answer):

    hq-submit, hq-client -> user-server -> hq-server   Ping ... Wait (requests)
    hq-admin -> hq-server                                AdminInfo ... Shutdown (requests)
    hq-server -> user-server                             Run, Cancel, Ack
    user-server -> hq-server                             JobEvents, Sync, HostStateReport,
                                                         Undeliverable, Heartbeat
    user-server -> exec-server                           Run, Cancel, Ack, SyncRequest, Lease
    exec-server -> user-server                           JobEvents, Heartbeat, Relay

The shapes are those of protocol version 1 (doc/protocol.md), so a daemon of this version
talks to one of version 1 that is still running after an upgrade; version 2 only adds kinds
and optional fields. A reply is flat (``{"type": "reply", "rid": N, ...fields}``); each request
class names its reply class in ``Reply``.

This module is the catalogue: every kind can be imported from here. The field types and base
classes live in ``hq.protocol.fields``, the hello and welcome in ``hq.protocol.handshake``,
the admin's requests in ``hq.protocol.admin_messages``; the rest are defined here.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hq.jobspec import InvalidSpec, JobSpec
from hq.protocol.admin_messages import (  # noqa: F401 (the catalogue: every kind is importable from here)
    ADMIN_REQUESTS,
    Accounting,
    AccountingReply,
    AccountingRow,
    AdminCancel,
    AdminCancelReply,
    AdminCancelResult,
    AdminInfo,
    AdminInfoReply,
    AdminStatus,
    AdminStatusReply,
    DrainHosts,
    DrainHostsReply,
    ExecServerInfo,
    HostEvent,
    HostEvents,
    HostEventsReply,
    HostInfo,
    ListExecServers,
    ListExecServersReply,
    ListHosts,
    ListHostsReply,
    ListUsers,
    ListUsersReply,
    Reload,
    ReloadReply,
    SetClusterActive,
    SetClusterActiveReply,
    SetHostActive,
    SetHostActiveReply,
    Shutdown,
    ShutdownReply,
    UserInfo,
    UserServerInfo,
)
from hq.protocol.fields import (  # noqa: F401 (the catalogue: every kind is importable from here)
    MAX_EVENTS,
    MAX_IDS,
    MAX_JOBS_PER_SUBMIT,
    MAX_PAGE,
    MAX_VIEW,
    PART_JOBS,
    Count,
    Counts,
    Environment,
    Epoch,
    Error,
    ExitCode,
    HostName,
    IdList,
    JobId,
    Message,
    Name,
    Pid,
    Reply,
    ReplyHeader,
    Request,
    Seconds,
    SignalNumber,
    Text,
    Umask,
    UserName,
    ViewIds,
    Word,
)
from hq.protocol.handshake import (  # noqa: F401 (the catalogue: every kind is importable from here)
    ExecSettings,
    Hello,
    HostAddress,
    Role,
    Welcome,
)
from hq.states import JobState

# --- what the commands ask (cli -> user-server -> hq-server) ------------------------------------

class PingReply(Reply, tag="reply", kw_only=True):
    user: UserName
    server_version: Word
    unfinished: Count = 0


class Ping(Request, tag="ping", kw_only=True):
    """Is hq-server there; how many of my jobs are not finished (the user-server's idle test)."""

    reply_type = PingReply


class ReserveReply(Reply, tag="reply", kw_only=True):
    submission_id: JobId
    database: Word


class ReserveSubmission(Request, tag="reserve", kw_only=True):
    """A submission id for the submission the user-server is about to sign (its signatures
    name it), and the database it is for (version 2)."""

    reply_type = ReserveReply


class SubmitReply(Reply, tag="reply", kw_only=True):
    ids: list[JobId]
    submission_id: JobId


MAX_DEPENDENCIES = 1000   # --dependency items of one submission (an array counts as one)
MAX_ARRAY_CAP = 1_000_000


class DependencyRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One job (or array) a submission names in ``--dependency`` (version 2): ``id`` is a
    job, or an array's id for the whole array; ``index`` names one element of that array
    (``42_7``). ``aftercorr``: element i of the new array after element i of ``id``."""

    kind: Literal["afterok", "afterany", "afternotok", "aftercorr"]
    id: JobId
    index: Count | None = None


class Submit(Request, tag="submit", kw_only=True):
    """New jobs. Decoding it runs ``JobSpec.validate`` on every job (user-server, hq-server).

    A submission of more than ``PART_JOBS`` jobs is streamed: ``SubmitPart`` requests first,
    on the same connection, then this one with the last jobs and ``parts``, how many parts
    came before. It is stored all or nothing, when this request arrives (version 2)."""

    jobs: Annotated[list[JobSpec], msgspec.Meta(min_length=1, max_length=MAX_JOBS_PER_SUBMIT)]
    environment: Environment
    umask: Umask
    submit_host: Annotated[str, msgspec.Meta(max_length=255)] = ""
    hold: bool = False
    submission_id: JobId | None = None   # reserved and signed by the user-server (version 2)
    parts: Annotated[int, msgspec.Meta(ge=0, le=MAX_JOBS_PER_SUBMIT)] = 0
    # workflows (version 2): how many of these jobs may run at once, what they wait for,
    # and, for a resubmission, which job each new one runs again
    array_cap: Annotated[int, msgspec.Meta(ge=1, le=MAX_ARRAY_CAP)] | None = None
    dependencies: Annotated[list[DependencyRef], msgspec.Meta(max_length=MAX_DEPENDENCIES)
                            ] = msgspec.field(default_factory=list)
    kill_on_invalid_dep: bool = True
    resubmit_of: Annotated[list[JobId], msgspec.Meta(max_length=MAX_JOBS_PER_SUBMIT)
                           ] | None = None
    # when all its jobs have ended: a command to run as the user on the head node, a mail
    # (signed by the user-server, which runs only what it signed)
    notify: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    mail_user: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    mail_type: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    notify_signature: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    reply_type = SubmitReply

    def __post_init__(self) -> None:
        check_environment(self.environment)
        validate_jobs(self.jobs)
        if self.resubmit_of is not None and self.parts == 0 \
                and len(self.resubmit_of) != len(self.jobs):
            raise InvalidSpec("resubmit_of must name one old job per new job")


class PartReply(Reply, tag="reply", kw_only=True):
    received: int                 # jobs of the submission received so far
    submission_id: JobId


class SubmitPart(Request, tag="submit_part", kw_only=True):
    """Some jobs of a streamed submission (see ``Submit``), in order. The first part names
    the environment and umask its jobs will share (the user-server signs with them; the
    closing ``Submit`` must name the same); the user-server adds the submission id."""

    jobs: Annotated[list[JobSpec], msgspec.Meta(min_length=1, max_length=PART_JOBS)]
    environment: Environment | None = None
    umask: Umask | None = None
    submission_id: JobId | None = None
    reply_type = PartReply

    def __post_init__(self) -> None:
        if self.environment is not None:
            check_environment(self.environment)
        validate_jobs(self.jobs)


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


class ClusterSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    active: bool
    hosts: Count
    hosts_up: Count
    cores: Count
    cores_busy: Count


class StatusReply(Reply, tag="reply", kw_only=True):
    user: UserName
    mine: Counts
    others: dict[UserName, Counts]
    cluster: ClusterSummary
    usage_core_hours: Annotated[float, msgspec.Meta(ge=0)] | None = None   # fair share's


class Status(Request, tag="status", kw_only=True):
    """My jobs by state, others' as counts, the cluster in numbers."""

    reply_type = StatusReply


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


class JobsReply(Reply, tag="reply", kw_only=True):
    jobs: list[JobInfo]
    more: bool = False     # older jobs match too: ask again with ``before`` = the first id


class Jobs(Request, tag="jobs", kw_only=True):
    """My jobs, filtered, the newest ``limit`` (at most MAX_PAGE) with ids below ``before``,
    in id order; finished ones come from the database."""

    states: Annotated[list[JobState], msgspec.Meta(max_length=16)] | None = None
    group: Name | None = None
    name: Name | None = None          # an fnmatch pattern
    ids: IdList | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] | None = None
    before: JobId | None = None
    array: JobId | None = None        # only the jobs of the array with this id (version 2)
    reply_type = JobsReply


class ShowReply(Reply, tag="reply", kw_only=True):
    job: JobInfo


class Show(Request, tag="show", kw_only=True):
    """One job of mine."""

    id: JobId
    reply_type = ShowReply


class ChangeResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: JobId
    result: Text          # cancelled, cancelling, held, released, not found, already done...


class ChangesReply(Reply, tag="reply", kw_only=True):
    results: list[ChangeResult]


class Cancel(Request, tag="cancel", kw_only=True):
    """Cancel jobs of mine. (hq-server -> user-server -> exec-server ``Cancel`` is
    ``CancelJobs``: same tag, other peers.)"""

    ids: IdList
    reply_type = ChangesReply


class Hold(Request, tag="hold", kw_only=True):
    ids: IdList
    reply_type = ChangesReply


class Release(Request, tag="release", kw_only=True):
    ids: IdList
    reply_type = ChangesReply


class JobWaitState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: JobId
    state: JobState
    exit_code: ExitCode | None = None
    signal: SignalNumber | None = None
    reason: Text | None = None     # why it ended as it did (version 2)


class WaitReply(Reply, tag="reply", kw_only=True):
    jobs: list[JobWaitState]
    finished: bool


class Wait(Request, tag="wait", kw_only=True):
    """Answered when all of ``ids`` are finished, or after ``timeout_s`` (at most 60 s)."""

    ids: IdList
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    reply_type = WaitReply


class UpdateArrayReply(Reply, tag="reply", kw_only=True):
    array_id: JobId
    cap: Count | None


class UpdateArray(Request, tag="update_array", kw_only=True):
    """Change an array of mine: how many of its jobs may run at once (0: no cap)."""

    array: JobId
    cap: Annotated[int, msgspec.Meta(ge=0, le=MAX_ARRAY_CAP)]
    reply_type = UpdateArrayReply


class JobSpecsReply(Reply, tag="reply", kw_only=True):
    jobs: list[RunJob]                       # the specs as stored, signatures included
    submissions: dict[str, SubmissionEnv]    # by submission id
    database: Word


class JobSpecs(Request, tag="job_specs", kw_only=True):
    """The stored specs of jobs of mine (for a resubmission; the user-server checks their
    signatures before it signs them again)."""

    ids: Annotated[list[JobId], msgspec.Meta(max_length=PART_JOBS)]
    reply_type = JobSpecsReply


class Resubmit(Request, tag="resubmit", kw_only=True):
    """Submit these jobs of mine again, one submission (command -> user-server only, which
    fetches their specs, checks them and sends a ``Submit`` with ``resubmit_of``)."""

    ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=PART_JOBS)]
    hold: bool = False
    reply_type = SubmitReply


USER_REQUESTS = (Ping, Submit, SubmitPart, Status, Jobs, Show, Cancel, Hold, Release, Wait,
                 UpdateArray, JobSpecs, Resubmit)
"""What a command may ask its user-server, which forwards it to hq-server."""


# --- jobs on their way to a host and back ---------------------------------------------------

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


class Run(Message, tag="run", kw_only=True):
    """Start these jobs on ``host`` (hq-server -> user-server, which checks every signature,
    then -> exec-server with ``owner`` set; the exec-server needs no ``host``).
    ``submissions`` is keyed by the decimal id."""

    jobs: Annotated[list[RunJob], msgspec.Meta(max_length=100_000)]
    submissions: dict[Annotated[str, msgspec.Meta(max_length=20)], SubmissionEnv]
    host: HostAddress | None = None
    owner: UserName | None = None
    # the allotment (version 2): how many cores the user's jobs may use on the host at once;
    # jobs beyond it wait at the exec-server and start as cores free. None: all start now.
    cores: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None


class CancelJobs(Message, tag="cancel", kw_only=True):
    """Stop these jobs, every run of them (hq-server -> user-server with ``host``, then ->
    exec-server)."""

    ids: IdList
    reason: Text | None = None
    host: HostName | None = None
    # one per id (version 2): only that run of it (a stale copy); without: every run
    attempts: Annotated[list[Attempt], msgspec.Meta(max_length=MAX_IDS)] | None = None


class Withdraw(Message, tag="withdraw", kw_only=True):
    """hq-server wants these jobs back (hold, drain, better placement): each one still
    waiting at the exec-server is taken out and reported ended as ``withdrawn`` (it never
    starts there); one that started meanwhile is left running (version 2)."""

    ids: IdList
    attempts: Annotated[list[Attempt], msgspec.Meta(max_length=MAX_IDS)]
    host: HostName | None = None


class Ack(Message, tag="ack", kw_only=True):
    """These jobs' ends are recorded: the exec-server may forget them. ``attempts`` (one per
    id, version 2) names the run whose end it was; without it, every run's."""

    ids: ViewIds
    attempts: Annotated[list[Attempt], msgspec.Meta(max_length=MAX_VIEW)] | None = None
    host: HostName | None = None


class SubmissionEnded(Message, tag="submission_ended", kw_only=True):
    """hq-server -> user-server: every job of a submission that asked to be told has ended
    (``--notify``, ``--mail-user``); the user-server checks the signature and acts."""

    submission_id: JobId
    array_id: JobId
    counts: Counts                     # state -> jobs
    notify: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    mail_user: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    mail_type: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    signature: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    database: Word = ""


class Superseded(Message, tag="superseded", kw_only=True):
    """hq-server -> user-server: a newer user-server of the same user took over (a command
    found no socket and started one); this one exits, so the two never take turns."""

    by_pid: Pid


class JobStarted(msgspec.Struct, tag_field="event", tag="started", frozen=True,
                 forbid_unknown_fields=True):
    id: JobId
    pid: Pid
    at: Epoch
    attempt: Attempt = 0


class JobEnded(msgspec.Struct, tag_field="event", tag="ended", frozen=True, kw_only=True,
               forbid_unknown_fields=True):
    """How a job ended; ``reason`` says why when it did not just exit: ``cancelled``,
    ``time limit``, ``lease expired ...``, ``cannot start: ...``, ``refused: ...``."""

    id: JobId
    at: Epoch
    started_at: Epoch | None = None
    pid: Pid | None = None
    exit_code: ExitCode | None = None
    signal: SignalNumber | None = None
    cpu_time_s: Annotated[float, msgspec.Meta(ge=0, le=1e12)] | None = None
    max_rss_kb: Count | None = None
    reason: Text | None = None
    attempt: Attempt = 0


JobEvent = JobStarted | JobEnded


class JobEvents(Message, tag="job_events", kw_only=True):
    """Jobs that started or ended (exec-server -> user-server, which adds ``host`` and
    forwards to hq-server)."""

    events: Annotated[list[JobEvent], msgspec.Meta(max_length=MAX_EVENTS)]
    host: HostName | None = None


class RunningJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: JobId
    pid: Pid
    started_at: Epoch
    attempt: Attempt = 0


class QueuedJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job waiting at an exec-server for a core."""

    id: JobId
    attempt: Attempt = 0


class SyncReply(Reply, tag="reply", kw_only=True):
    """An exec-server's whole view of its user's jobs."""

    running: Annotated[list[RunningJob], msgspec.Meta(max_length=MAX_VIEW)]
    ended: Annotated[list[JobEnded], msgspec.Meta(max_length=MAX_VIEW)]
    # version 2: the jobs waiting for a core (None from an exec-server of version 1, which
    # keeps no queue: every job it is handed starts at once)
    queued: Annotated[list[QueuedJob], msgspec.Meta(max_length=MAX_VIEW)] | None = None


class SyncRequest(Request, tag="sync", kw_only=True):
    """User-server -> exec-server: report everything (first thing on every new link)."""

    reply_type = SyncReply


class Sync(Message, tag="sync", kw_only=True):
    """User-server -> hq-server: an exec-server's whole view after (re)connecting, and the
    jobs still on their way to it (``delivering``)."""

    host: HostName
    running: Annotated[list[RunningJob], msgspec.Meta(max_length=MAX_VIEW)]
    ended: Annotated[list[JobEnded], msgspec.Meta(max_length=MAX_VIEW)]
    delivering: ViewIds = msgspec.field(default_factory=list)
    # version 2: the jobs waiting there for a core; ``queues`` says that this exec-server
    # keeps such a queue (hq-server hands it jobs ahead of free cores only then)
    queued: Annotated[list[QueuedJob], msgspec.Meta(max_length=MAX_VIEW)] = \
        msgspec.field(default_factory=list)
    queues: bool = False


class HostStateReport(Message, tag="host_state", kw_only=True):
    """A user-server could (``up``) or could not (``unreachable``) reach a host;
    ``user_only``: only this user cannot (host key, login)."""

    host: HostName
    state: Literal["up", "unreachable"]
    reason: Text | None = None
    user_only: bool = False


EXEC_SERVER_STATES = ("running", "connection lost", "heartbeat lost", "stopped", "idle timeout")


class ExecServerReport(Message, tag="exec_server", kw_only=True):
    """A user-server's exec-server on ``host`` came up (with its pid), was lost, or was let
    go (``stopped``, ``idle timeout``: the user-server had nothing more for it) (version 2)."""

    host: HostName
    pid: Pid | None = None
    state: Literal["running", "connection lost", "stopped", "idle timeout"]
    reason: Text | None = None


class Undeliverable(Message, tag="undeliverable", kw_only=True):
    """The user-server could not hand these jobs to ``host``."""

    host: HostName
    ids: IdList
    reason: Text = "unreachable"


class Heartbeat(Message, tag="heartbeat", kw_only=True):
    """An exec-server is alive (every heartbeat interval), with what it sees of its host."""

    load1: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    free_memory_mb: Count | None = None
    running: Count = 0
    host: HostName | None = None


class HostFacts(Message, tag="host_facts", kw_only=True):
    """What a host is doing, measured by the host monitor (hq-server's own account): the only
    source of facts about a host that affect everyone. ``cpu_busy``, ``hq_daemons`` and
    ``hq_jobs`` are cores (1.0 = one core busy) over the last report interval."""

    cores: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    cpu_busy: Annotated[float, msgspec.Meta(ge=0, le=1e6)]
    hq_daemons: Annotated[float, msgspec.Meta(ge=0, le=1e6)]
    # the process trees of the exec-servers (hq's jobs); None from an older monitor
    hq_jobs: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    load1: Annotated[float, msgspec.Meta(ge=0, le=1e6)]
    memory_mb: Count
    free_memory_mb: Count
    host: HostName | None = None     # set by the monitor hub, for hq-server
    gpus: Count | None = None        # GPUs found (hq.hardware); None from an older monitor


class HostReach(Message, tag="host_reach", kw_only=True):
    """The host monitor could (``up``) or could not (``unreachable``) reach a host."""

    host: HostName
    state: Literal["up", "unreachable"]
    reason: Text | None = None


class MonitorHosts(Message, tag="monitor_hosts", kw_only=True):
    """hq-server -> monitor: the hosts to watch (again after every reload)."""

    hosts: Annotated[list[HostAddress], msgspec.Meta(max_length=100_000)]
    interval_s: Seconds


class Lease(Message, tag="lease", kw_only=True):
    """User-server -> exec-server: renews the lease (only while hq-server hears from it)."""


UserRequest = (Ping | Submit | SubmitPart | Status | Jobs | Show | Cancel | Hold | Release | Wait
               | UpdateArray | JobSpecs | Resubmit)


class Relay(Request, tag="relay", kw_only=True):
    """A command inside a job asks through its exec-server (exec-server -> user-server)."""

    request: UserRequest


# --- who may send what ------------------------------------------------------------------------

CLI_SENDS = UserRequest
ADMIN_SENDS = (AdminInfo | AdminStatus | ListHosts | ListUsers | SetHostActive
               | SetClusterActive | Reload | Shutdown | DrainHosts | HostEvents | AdminCancel
               | ListExecServers | Accounting)
USERD_SENDS_SERVER = (UserRequest | ReserveSubmission | JobEvents | Sync | HostStateReport
                      | Undeliverable | Heartbeat | ExecServerReport)
SERVER_SENDS_USERD = Run | CancelJobs | Withdraw | Ack | Superseded | SubmissionEnded
USERD_SENDS_EXECD = Run | CancelJobs | Withdraw | Ack | SyncRequest | Lease
EXECD_SENDS_USERD = JobEvents | Heartbeat | Relay
MONITOR_SENDS = HostFacts | HostReach
SERVER_SENDS_MONITOR = MonitorHosts
PROBE_SENDS = HostFacts

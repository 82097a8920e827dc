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
the admin's requests in ``hq.protocol.admin_messages``, the shapes of a job (JobInfo, RunJob,
...) in ``hq.protocol.job_messages``, host and exec-server reports in
``hq.protocol.host_messages``, exec-servers' job reports in ``hq.protocol.job_events``,
array workflows in ``hq.protocol.workflow_messages``, the dashboard's ``Watch`` in
``hq.protocol.watch_messages``; the rest are defined here.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from hq import array_indexes
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
from hq.protocol.host_messages import (
    ExecServerReport,
    Heartbeat,
    HostFacts,
    HostReach,
    HostStateReport,
    MonitorHosts,
)
from hq.protocol.job_events import (  # noqa: F401 (the catalogue: every kind is importable from here)
    JobEnded,
    JobEvent,
    JobEvents,
    JobStarted,
    QueuedJob,
    RunningJob,
    Sync,
    SyncReply,
    SyncRequest,
)
from hq.protocol.job_messages import (  # noqa: F401 (the catalogue: every kind is importable from here)
    MAX_ARRAY_CAP,
    MAX_DEPENDENCIES,
    ArrayLine,
    Attempt,
    AttemptInfo,
    DependencyInfo,
    DependencyRef,
    JobInfo,
    JobWaitState,
    RunJob,
    SubmissionEnv,
    check_environment,
    validate_jobs,
)
from hq.protocol.watch_messages import (  # noqa: F401 (the catalogue: every kind is importable from here)
    Watch,
    WatchHost,
    WatchJob,
    WatchQueue,
    WatchReply,
)
from hq.protocol.workflow_messages import (  # noqa: F401 (the catalogue: every kind is importable from here)
    MAX_ELEMENTS,
    ArrayCounts,
    ArrayCountsReply,
    ArrayElements,
    ArrayElementsReply,
    JobSpecs,
    JobSpecsReply,
    Resubmit,
    SubmitReply,
    UpdateArray,
    UpdateArrayReply,
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

    def job_count(self) -> int:
        """How many jobs these specs are (an array signed as a whole is all its elements)."""
        return sum(1 if spec.array_indexes is None or spec.array_index is not None
                   else array_indexes.count(spec.array_indexes) for spec in self.jobs)

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


class JobsReply(Reply, tag="reply", kw_only=True):
    jobs: list[JobInfo]
    more: bool = False     # older jobs match too: ask again with ``before`` = the first id
    # ``fold``: each array with more than one matching element, as one line (first page)
    arrays: Annotated[list[ArrayLine], msgspec.Meta(max_length=MAX_PAGE)
                      ] = msgspec.field(default_factory=list)


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
    # unfinished states only: arrays as lines (``JobsReply.arrays``), not in ``jobs`` and
    # not counted in ``limit``
    fold: bool = False
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


class ArrayChanges(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: JobId                                 # the array's
    results: dict[Text, Count]                # how many of its jobs got each result


class ChangesReply(Reply, tag="reply", kw_only=True):
    results: list[ChangeResult]
    arrays: list[ArrayChanges] = msgspec.field(default_factory=list)   # version 2


# whole arrays one change may name (each is a pass over its owner's unfinished jobs)
MAX_WHOLE_ARRAYS = 64
WholeArrays = Annotated[list[JobId], msgspec.Meta(max_length=MAX_WHOLE_ARRAYS)]


class Cancel(Request, tag="cancel", kw_only=True):
    """Cancel jobs of mine: ``ids`` one by one, and every job of each of ``arrays`` (version
    2), answered as counts per result. (hq-server -> user-server -> exec-server ``Cancel``
    is ``CancelJobs``: same tag, other peers.)"""

    ids: IdList = msgspec.field(default_factory=list)
    arrays: WholeArrays = msgspec.field(default_factory=list)
    reply_type = ChangesReply


class Hold(Request, tag="hold", kw_only=True):
    ids: IdList = msgspec.field(default_factory=list)
    arrays: WholeArrays = msgspec.field(default_factory=list)
    reply_type = ChangesReply


class Release(Request, tag="release", kw_only=True):
    ids: IdList = msgspec.field(default_factory=list)
    arrays: WholeArrays = msgspec.field(default_factory=list)
    reply_type = ChangesReply


class WaitReply(Reply, tag="reply", kw_only=True):
    jobs: list[JobWaitState]
    finished: bool


class Wait(Request, tag="wait", kw_only=True):
    """Answered when all of ``ids`` are finished, or after ``timeout_s`` (at most 60 s)."""

    ids: IdList
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    reply_type = WaitReply


USER_REQUESTS = (Ping, Submit, SubmitPart, Status, Jobs, Show, Cancel, Hold, Release, Wait,
                 UpdateArray, ArrayCounts, ArrayElements, JobSpecs, Resubmit, Watch)
"""What a command may ask its user-server, which forwards it to hq-server."""


# --- jobs on their way to a host and back ---------------------------------------------------

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


class Undeliverable(Message, tag="undeliverable", kw_only=True):
    """The user-server could not hand these jobs to ``host``."""

    host: HostName
    ids: IdList
    reason: Text = "unreachable"


class Lease(Message, tag="lease", kw_only=True):
    """User-server -> exec-server: renews the lease (only while hq-server hears from it)."""


UserRequest = (Ping | Submit | SubmitPart | Status | Jobs | Show | Cancel | Hold | Release | Wait
               | UpdateArray | ArrayCounts | ArrayElements | JobSpecs | Resubmit | Watch)


class Relay(Request, tag="relay", kw_only=True):
    """A command inside a job asks through its exec-server (exec-server -> user-server)."""

    request: UserRequest


# --- who may send what ------------------------------------------------------------------------

CLI_SENDS = UserRequest
ADMIN_SENDS = (AdminInfo | AdminStatus | ListHosts | ListUsers | SetHostActive
               | SetClusterActive | Reload | Shutdown | DrainHosts | HostEvents | AdminCancel
               | ListExecServers | Accounting | Watch)
USERD_SENDS_SERVER = (UserRequest | ReserveSubmission | JobEvents | Sync | HostStateReport
                      | Undeliverable | Heartbeat | ExecServerReport)
SERVER_SENDS_USERD = Run | CancelJobs | Withdraw | Ack | Superseded | SubmissionEnded
USERD_SENDS_EXECD = Run | CancelJobs | Withdraw | Ack | SyncRequest | Lease
EXECD_SENDS_USERD = JobEvents | Heartbeat | Relay
MONITOR_SENDS = HostFacts | HostReach
SERVER_SENDS_MONITOR = MonitorHosts
PROBE_SENDS = HostFacts

"""What exec-servers report about their jobs (through the user-server to hq-server): starts
and ends, and the state a sync finds (running, ended, queued). Every kind is importable from
``hq.protocol.messages``, the catalogue."""

from __future__ import annotations

from typing import Annotated

import msgspec

from hq.protocol.fields import (
    MAX_EVENTS,
    MAX_VIEW,
    Count,
    Epoch,
    ExitCode,
    HostName,
    JobId,
    Message,
    Pid,
    Reply,
    Request,
    SignalNumber,
    Text,
    ViewIds,
)
from hq.protocol.job_messages import Attempt


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

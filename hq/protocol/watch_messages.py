"""The live dashboard's one request (``hq-client top``, ``hq-admin top``) and its snapshot.

``Watch`` is a long poll: hq-server answers at once when its change counter differs from
``since`` (something changed, or hq-server restarted), else at the next change or when
``timeout_s`` has passed, with one snapshot and the counter to send next time. So a
dashboard costs one request per change burst, not one per refresh interval.

The same request comes from a user (through the user-server, role userd) and from an admin
(role admin); hq-server fills the snapshot with what that caller may see.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from hq.protocol.fields import (
    Count,
    Counts,
    Epoch,
    HostName,
    JobId,
    Name,
    Reply,
    Request,
    Text,
    UserName,
    Word,
)

MAX_WATCH_ROWS = 1_000   # job rows in one snapshot (arrays and submissions folded)
DEFAULT_WATCH_ROWS = 200


class WatchHost(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: HostName
    state: Word                 # up, unreachable, draining, drained, inactive, ...
    reason: Text | None
    cores: Count
    cores_busy: Count
    running_jobs: Count
    load1: float | None


class WatchQueue(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user: UserName
    counts: Counts              # state -> jobs
    # why its first pending jobs wait (reason -> jobs): only the caller's own, or all for
    # an admin; another user's reasons would name that user's jobs
    reasons: dict[Text, Count] = msgspec.field(default_factory=dict)


class WatchJob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job, or a submission of several jobs (an array) folded into one row."""

    id: JobId                   # the job, or the submission's first job (an array's id)
    owner: UserName
    name: Name | None
    state: Word                 # the job's; for a folded row: running, pending or ended
    jobs: Count = 1             # how many jobs the row stands for
    ended: Count = 0            # of them finished
    active: Count = 0           # of them dispatched or running
    array: bool = False         # a job array (else a single job or a jobs file)
    host: HostName | None = None
    reason: Text | None = None
    cores: Count = 1
    command: Annotated[str, msgspec.Meta(max_length=256)] | None = None   # its start
    stdout: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    submitted_at: Epoch | None = None


class WatchReply(Reply, tag="reply", kw_only=True):
    counter: Count              # send it as ``since`` next time
    user: UserName
    admin: bool                 # the snapshot has every user's jobs
    cluster_active: bool
    hosts: list[WatchHost]
    queue: list[WatchQueue]
    jobs: list[WatchJob]        # newest first
    more: bool = False          # older rows were left out (``limit``)


class Watch(Request, tag="watch", kw_only=True):
    """The dashboard's snapshot once something changed since ``since`` (a long poll; at most
    60 s whatever ``timeout_s`` says; 0: at once)."""

    since: Count = 0
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_WATCH_ROWS)] = DEFAULT_WATCH_ROWS
    reply_type = WatchReply

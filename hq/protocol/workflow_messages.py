"""The requests of array workflows: changing an array's cap, counting its jobs by state,
finding its elements by index, fetching stored specs for a resubmission, and the
resubmission itself (command -> user-server). Every kind is importable from
``hq.protocol.messages``, the catalogue."""

from __future__ import annotations

from typing import Annotated

import msgspec

from hq.protocol.fields import PART_JOBS, Count, JobId, Reply, Request, Word
from hq.protocol.job_messages import MAX_ARRAY_CAP, RunJob, SubmissionEnv
from hq.states import JobState


class SubmitReply(Reply, tag="reply", kw_only=True):
    ids: list[JobId]
    submission_id: JobId


class UpdateArrayReply(Reply, tag="reply", kw_only=True):
    array_id: JobId
    cap: Count | None


class UpdateArray(Request, tag="update_array", kw_only=True):
    """Change an array of mine: how many of its jobs may run at once (0: no cap)."""

    array: JobId
    cap: Annotated[int, msgspec.Meta(ge=0, le=MAX_ARRAY_CAP)]
    reply_type = UpdateArrayReply


class ArrayCountsReply(Reply, tag="reply", kw_only=True):
    array_id: JobId
    jobs: Count                              # all of them, those not stored yet included
    counts: dict[JobState, Count]            # how many are in each state now
    ended: bool = False                      # all finished and stored: nothing will change


class ArrayCounts(Request, tag="array_counts", kw_only=True):
    """How many jobs of an array of mine are in each state (``hq-client progress``): its
    cost does not grow with the array (version 2)."""

    array: JobId
    reply_type = ArrayCountsReply


# elements one request may look up by index
MAX_ELEMENTS = 10_000


class ArrayElementsReply(Reply, tag="reply", kw_only=True):
    array_id: JobId
    indexes: list[Count]                     # the ones found, in the order asked ...
    ids: list[JobId]                         # ... and their job ids


class ArrayElements(Request, tag="array_elements", kw_only=True):
    """The job ids of elements of an array of mine, by index (``42_7``, ``42_[1-5]``):
    looked up, not listed, so the cost is the indexes asked for, not the array (version
    2)."""

    array: JobId
    indexes: Annotated[list[Count], msgspec.Meta(max_length=MAX_ELEMENTS)]
    reply_type = ArrayElementsReply


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



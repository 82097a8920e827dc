"""What any field of a message may be, whoever sent it (types and ranges), and the base
classes every message kind derives from (``hq.protocol.messages`` lists the kinds)."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

# --- field types: what any value may be, whoever sent it ---------------------------------------

MAX_IDS = 100_000             # job ids in one request (commands send more in several)
MAX_PAGE = 10_000             # jobs in one answer to ``jobs``
MAX_VIEW = 1_000_000          # jobs in an exec-server's whole view (sync) and its acks
MAX_EVENTS = 10_000           # job events in one report
MAX_JOBS_PER_SUBMIT = 1_000_000
PART_JOBS = 10_000   # jobs per SubmitPart: a streamed submission's frames stay a few MB

JobId = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Pid = Annotated[int, msgspec.Meta(ge=1, le=2**22)]
Epoch = Annotated[float, msgspec.Meta(ge=0, le=1e11)]      # UTC seconds since 1970
Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
ExitCode = Annotated[int, msgspec.Meta(ge=0, le=255)]
SignalNumber = Annotated[int, msgspec.Meta(ge=1, le=128)]
Name = Annotated[str, msgspec.Meta(max_length=255)]
HostName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]     # a reason, a one-line message
Word = Annotated[str, msgspec.Meta(max_length=64)]
IdList = Annotated[list[JobId], msgspec.Meta(max_length=MAX_IDS)]
ViewIds = Annotated[list[JobId], msgspec.Meta(max_length=MAX_VIEW)]
Counts = dict[Word, Count]
Environment = Annotated[dict[Annotated[str, msgspec.Meta(max_length=4096)],
                             Annotated[str, msgspec.Meta(max_length=1024 * 1024)]],
                        msgspec.Meta(max_length=10_000)]
Umask = Annotated[int, msgspec.Meta(ge=0, le=0o777)]


class Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True,
              kw_only=True, omit_defaults=True):
    """Base of every message kind; ``type`` on the wire is the class's tag."""


class Request(Message):
    """A message that gets exactly one answer: a ``Reply`` subclass or an ``Error``."""

    rid: Count | None = None
    # The class of the answer; None: the caller says (a relayed request's answer is the
    # answer to the request inside it).
    reply_type: ClassVar[type[Reply] | None] = None


class Reply(Message, tag="reply", kw_only=True):
    """The answer to a request; subclasses add the fields of one request's answer."""

    rid: Count | None = None


class Error(Message, tag="error", kw_only=True):
    """A refused request (with its ``rid``) or a refused connection; ``code`` maps to
    ``hq.errors`` (``not_found`` -> exit 3, ...)."""

    code: Word
    message: Text
    rid: Count | None = None


class ReplyHeader(msgspec.Struct, tag_field="type", tag="reply", forbid_unknown_fields=False,
                  frozen=True):
    """Just enough of a reply to find the request it answers; the body is decoded again with
    that request's ``Reply`` class."""

    rid: Count | None = None

"""A command's requests on their way to hq-server, and its submissions signed on the way.

Every request of a command (hq-submit, hq-client, or one inside a job, relayed by its
exec-server) is passed on to hq-server as it is, but for these:
- a submission gets an id reserved at hq-server first, then each job is signed with the
  user's key for that database and id (``hq.userd.signing``), so that hq-server stores only
  what the user signed; an hq-server of protocol 1 picks the id itself (older signatures);
- a submission too large for one frame comes in parts on one connection (``SubmitPart``,
  then a closing ``Submit`` naming how many parts came); each part is signed and passed on
  in order, and a submission left open when the connection closes is never stored;
- ``resubmit`` fetches the stored specs and has the signer check that each is one this user
  signed, before it is submitted again.
The first id each database reserves for this user is noted in the ledger (the protocol-1
cutoff: older signatures are accepted only below it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hq.errors import UsageError
from hq.jobspec import submission_digest
from hq.protocol import Channel
from hq.protocol.messages import (
    PART_JOBS,
    JobSpecs,
    Request,
    ReserveSubmission,
    Resubmit,
    Submit,
    SubmitPart,
)
from hq.userd.ledger import Ledger
from hq.userd.signing import Signer


@dataclass(eq=False)
class _Stream:
    """A submission a command streams in parts, as far as it came."""

    submission_id: int
    database: str
    environment: dict[str, str]
    umask: int
    digest: str
    parts: int = 0
    jobs: int = 0


class Submitting:
    """Passes requests on to hq-server (``forward``), signing submissions on the way."""

    def __init__(self, signer: Signer, ledger_for: Callable[[str], Ledger]) -> None:
        self.signer, self._ledger_for = signer, ledger_for
        self._streams: dict[Channel, _Stream] = {}   # a command's submission being streamed

    def closed(self, client: Channel) -> None:
        """A command's connection closed: a submission it left open is never stored."""
        self._streams.pop(client, None)

    async def forward(self, server: Channel, request: Request, client: Channel | None) -> Any:
        """hq-server's answer to ``request`` (a submission's jobs signed first)."""
        timeout = float(getattr(request, "timeout_s", 0) or 0) + 60.0
        if isinstance(request, SubmitPart) or (isinstance(request, Submit) and request.parts):
            return await self._stream(server, request, client)
        if isinstance(request, Resubmit):
            stored = await server.request(JobSpecs(ids=request.ids), timeout=timeout)
            request = self.signer.resubmission(stored, hold=request.hold,
                                               submit_host=socket.gethostname()[:255])
        if not isinstance(request, Submit):
            return await server.request(request, timeout=timeout)
        for attempt in (1, 2):
            if server.version < 2:
                request = self.signer.signed_v1(request)
            else:
                reserved = await self._reserve(server, timeout)
                request = self.signer.signed(request, reserved.database, reserved.submission_id)
            try:
                return await server.request(request, timeout=timeout + request.job_count() / 1000)
            except UsageError as err:
                # hq-server restarted between the reservation and the submission: once more
                if attempt == 2 or "was not reserved" not in err.message:
                    raise
        raise AssertionError("unreachable")

    async def _reserve(self, server: Channel, timeout: float) -> Any:
        reserved = await server.request(ReserveSubmission(), timeout=timeout)
        self._ledger_for(reserved.database).first_submission(reserved.submission_id)
        return reserved

    async def _stream(self, server: Channel, request: SubmitPart | Submit,
                      client: Channel | None) -> Any:
        """A part of a streamed submission (see ``Submit``): the first reserves its id, each
        is signed and passed on in order; the closing ``Submit`` has hq-server store all."""
        if client is None:
            raise UsageError("a streamed submission must come on one connection")
        stream = self._streams.get(client)
        if isinstance(request, SubmitPart):
            if stream is None:
                if request.environment is None or request.umask is None:
                    raise UsageError("the first part of a submission must name its "
                                     "environment and umask")
                if server.version < 2:
                    raise UsageError(f"hq-server is too old for a submission of more than "
                                     f"{PART_JOBS:,} jobs: ask the hq admin to upgrade it")
                reserved = await self._reserve(server, 60.0)
                stream = self._streams[client] = _Stream(
                    reserved.submission_id, reserved.database, request.environment,
                    request.umask, submission_digest(request.environment, request.umask))
            jobs = self.signer.sign_jobs(request.jobs, stream.digest, stream.database,
                                         stream.submission_id)
            reply = await server.request(SubmitPart(jobs=jobs,
                                                    submission_id=stream.submission_id),
                                         timeout=60.0 + len(jobs) / 1000)
            stream.parts += 1
            stream.jobs = reply.received
            return reply
        self._streams.pop(client, None)
        if stream is None or stream.parts != request.parts:
            raise UsageError(f"a submission closed after {request.parts} part(s), but "
                             f"{0 if stream is None else stream.parts} came on this "
                             "connection: submit again")
        if (request.environment, request.umask) != (stream.environment, stream.umask):
            raise UsageError("a streamed submission must keep the environment and umask of "
                             "its first part")
        signed = self.signer.signed(request, stream.database, stream.submission_id)
        return await server.request(signed, timeout=60.0 + (stream.jobs + len(signed.jobs))
                                    / 1000)

"""The user-server's signatures on its user's jobs (DESIGN §3): what hq-server stores, and an
exec-server checks before it starts anything, made with the user's own key."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from hq.auth import sign_job
from hq.jobspec import JobSpec, submission_digest
from hq.protocol.messages import Submit


@dataclass(frozen=True)
class Signer:
    """Signs jobs as ``user`` with ``key`` (~/.hq/job-signing.key)."""

    key: bytes
    user: str

    def signed(self, request: Submit, database: str, submission_id: int) -> Submit:
        """``request`` with each job signed for ``database`` and ``submission_id``."""
        digest = submission_digest(request.environment, request.umask)
        return msgspec.structs.replace(
            request, jobs=self.sign_jobs(request.jobs, digest, database, submission_id),
            submission_id=submission_id)

    def sign_jobs(self, specs: list[JobSpec], digest: str, database: str,
                   submission_id: int) -> list[JobSpec]:
        return [msgspec.structs.replace(spec, signature=sign_job(
                    self.key, spec, self.user, digest, database=database,
                    submission_id=submission_id))
                for spec in specs]


    def signed_v1(self, request: Submit) -> Submit:
        """Signed for an hq-server of protocol version 1 (which picks the submission id)."""
        import hashlib
        import hmac

        from hq.jobspec import signed_text_v1

        digest = submission_digest(request.environment, request.umask)
        jobs = [msgspec.structs.replace(spec, signature=hmac.new(
                    self.key, signed_text_v1(spec, self.user, digest), hashlib.sha256).hexdigest())
                for spec in request.jobs]
        return msgspec.structs.replace(request, jobs=jobs)

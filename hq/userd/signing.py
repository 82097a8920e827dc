"""The user-server's signatures on its user's jobs (DESIGN §3): what hq-server stores, and an
exec-server checks before it starts anything, made with the user's own key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import msgspec

from hq.auth import job_signature_ok, sign_job, sign_notification
from hq.errors import PermissionDenied, UsageError
from hq.jobspec import JobSpec, submission_digest
from hq.protocol.messages import JobSpecsReply, Run, RunJob, SubmissionEnded, Submit


@dataclass(frozen=True)
class Signer:
    """Signs jobs as ``user`` with ``key`` (~/.hq/job-signing.key)."""

    key: bytes
    user: str

    def signed(self, request: Submit, database: str, submission_id: int) -> Submit:
        """``request`` with each job signed for ``database`` and ``submission_id``."""
        digest = submission_digest(request.environment, request.umask)
        notify_signature = None
        if request.notify or request.mail_user:
            notify_signature = sign_notification(
                self.key, self.user, database=database, submission_id=submission_id,
                notify=request.notify, mail_user=request.mail_user,
                mail_type=request.mail_type)
        return msgspec.structs.replace(
            request, jobs=self.sign_jobs(request.jobs, digest, database, submission_id),
            submission_id=submission_id, notify_signature=notify_signature)

    def notification_ok(self, ended: SubmissionEnded) -> bool:
        """Whether hq-server hands back what this user signed for that submission."""
        if not ended.signature:
            return False
        expected = sign_notification(
            self.key, self.user, database=ended.database, submission_id=ended.submission_id,
            notify=ended.notify, mail_user=ended.mail_user, mail_type=ended.mail_type)
        return hmac.compare_digest(expected, ended.signature)

    def check_run(self, message: Run, database: str, v1_cutoff: int | None
                  ) -> tuple[list[RunJob], list[tuple[RunJob, str]]]:
        """The jobs of ``message`` (from hq-server, for an exec-server) that carry this user's
        signature, and the others with the reason they are refused. A protocol-1 signature
        (no submission in it) counts only below ``v1_cutoff``, the first submission this
        user got since the upgrade."""
        signed, refused = [], []
        digests: dict[str, str | None] = {}  # one hash of an environment per submission
        for job in message.jobs:
            sub_id = str(job.submission_id)
            if sub_id not in digests:
                sub = message.submissions.get(sub_id)
                digests[sub_id] = None if sub is None else submission_digest(sub.environment,
                                                                              sub.umask)
            digest = digests[sub_id]
            accept_v1 = v1_cutoff is None or job.submission_id < v1_cutoff
            if digest is not None and job_signature_ok(
                    self.key, job.spec, self.user, digest, database=database,
                    submission_id=job.submission_id, accept_v1=accept_v1):
                if job.spec.array_indexes is not None:
                    job = self._as_element(job, digest, database)
                signed.append(job)
            else:
                refused.append((job, "refused: bad signature"))
        return signed, refused

    def _as_element(self, job: RunJob, digest: str, database: str) -> RunJob:
        """An element of an array signed as a whole, checked, as one job signed alone: what
        exec-servers are given (one of an earlier hq knows no ``array_indexes``)."""
        spec = msgspec.structs.replace(job.spec, array_indexes=None, signature=None)
        signature = sign_job(self.key, spec, self.user, digest, database=database,
                             submission_id=job.submission_id)
        return msgspec.structs.replace(job, spec=msgspec.structs.replace(spec,
                                                                         signature=signature))

    def sign_jobs(self, specs: list[JobSpec], digest: str, database: str,
                   submission_id: int) -> list[JobSpec]:
        return [msgspec.structs.replace(spec, signature=sign_job(
                    self.key, spec, self.user, digest, database=database,
                    submission_id=submission_id))
                for spec in specs]


    def resubmission(self, stored: JobSpecsReply, *, hold: bool, submit_host: str) -> Submit:
        """A new submission of jobs as ``stored`` has them (``hq-client resubmit``), after
        checking that each stored spec is one this user signed: a spec changed in the
        database is refused, never signed again. The new jobs get their old environment."""
        subs = {job.submission_id for job in stored.jobs}
        if len(subs) != 1:
            raise UsageError("resubmit the jobs of one submission (one array) at a time")
        (sub_id,) = subs
        env = stored.submissions.get(str(sub_id))
        if env is None:
            raise UsageError(f"submission {sub_id}: its environment is not recorded")
        digest = submission_digest(env.environment, env.umask)
        for job in stored.jobs:
            if not job_signature_ok(self.key, job.spec, self.user, digest,
                                    database=stored.database, submission_id=sub_id):
                raise PermissionDenied(f"job {job.id}: the stored spec does not carry your "
                                       "signature (changed in the database?): not resubmitted")
        # signed again one by one: the new array is the indexes chosen, not the old set
        return Submit(jobs=[msgspec.structs.replace(job.spec, signature=None,
                                                    array_indexes=None)
                            for job in stored.jobs],
                      environment=env.environment, umask=env.umask, submit_host=submit_host,
                      hold=hold, resubmit_of=[job.id for job in stored.jobs])

    def signed_v1(self, request: Submit) -> Submit:
        """Signed for an hq-server of protocol version 1 (which picks the submission id)."""
        import hashlib

        from hq.jobspec import signed_text_v1

        digest = submission_digest(request.environment, request.umask)
        # such an hq-server knows no array signed as a whole: one spec per element
        specs = [msgspec.structs.replace(element, array_indexes=None)
                 for spec in request.jobs
                 for element in (spec.elements() if spec.array_indexes is not None else [spec])]
        jobs = [msgspec.structs.replace(spec, signature=hmac.new(
                    self.key, signed_text_v1(spec, self.user, digest), hashlib.sha256).hexdigest())
                for spec in specs]
        return msgspec.structs.replace(request, jobs=jobs)

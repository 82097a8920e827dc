"""What the user-server does when hq-server says that all jobs of a submission have ended:
run the user's ``--notify`` command on the head node, and mail (``--mail-user``) through the
local sendmail. Only what this user-server signed at submit is run or mailed; hq-server's
copy of it could have been changed in the database.

The command runs in the home directory with the user-server's environment and::

    HQ_ARRAY_ID       the array's id (the job's id for a single job)
    HQ_SUBMISSION_ID  the submission
    HQ_STATE          done (all done), failed (any failed) or cancelled
    HQ_JOBS, HQ_DONE, HQ_FAILED, HQ_CANCELLED   counts
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from hq.mail import sendmail_path
from hq.protocol.messages import SubmissionEnded

log = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 600.0


def overall_state(counts: Mapping[str, int]) -> str:
    if counts.get("failed"):
        return "failed"
    if counts.get("cancelled"):
        return "cancelled"
    return "done"


def notify_environment(ended: SubmissionEnded, base: Mapping[str, str]) -> dict[str, str]:
    counts = ended.counts
    return {**base, "HQ_ARRAY_ID": str(ended.array_id),
            "HQ_SUBMISSION_ID": str(ended.submission_id),
            "HQ_STATE": overall_state(counts), "HQ_JOBS": str(sum(counts.values())),
            "HQ_DONE": str(counts.get("done", 0)), "HQ_FAILED": str(counts.get("failed", 0)),
            "HQ_CANCELLED": str(counts.get("cancelled", 0))}


def wants_mail(mail_type: str | None, state: str) -> bool:
    """Slurm's --mail-type: END and ALL mail at every end, FAIL when not all were done."""
    types = {t.strip().upper() for t in (mail_type or "END").split(",") if t.strip()}
    return bool(types & {"END", "ALL"}) or ("FAIL" in types and state != "done")


def mail_text(ended: SubmissionEnded, user: str) -> bytes:
    state = overall_state(ended.counts)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(ended.counts.items()))
    subject = f"hq: {ended.array_id} ended: {state} ({counts})"
    body = (f"All jobs of hq submission {ended.submission_id} (id {ended.array_id}) of {user} "
            f"have ended: {counts}.\n\nhq-client jobs --all --array {ended.array_id}\n")
    return (f"To: {ended.mail_user}\nSubject: {subject}\n\n{body}").encode()


async def act_on(ended: SubmissionEnded, user: str, home: str) -> None:
    """Run the notification command and send the mail ``ended`` asks for."""
    try:
        await _act_on(ended, user, home)
    except Exception:   # the task boundary: say why, keep serving
        log.exception("submission %s: notifying failed", ended.submission_id)


async def _act_on(ended: SubmissionEnded, user: str, home: str) -> None:
    state = overall_state(ended.counts)
    if ended.notify:
        env = notify_environment(ended, os.environ)
        process = await asyncio.create_subprocess_shell(
            ended.notify, cwd=home, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            code = await asyncio.wait_for(process.wait(), NOTIFY_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            code = await process.wait()
        log.info("submission %s ended %s: --notify command exited %s", ended.submission_id,
                 state, code)
    if ended.mail_user and wants_mail(ended.mail_type, state):
        sendmail = sendmail_path()
        if sendmail is None:
            log.warning("submission %s: no sendmail here: mail to %s not sent",
                        ended.submission_id, ended.mail_user)
            return
        process = await asyncio.create_subprocess_exec(
            sendmail, "-t", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await process.communicate(mail_text(ended, user))
        log.info("submission %s: mail to %s handed to sendmail (exit %s)",
                 ended.submission_id, ended.mail_user, process.returncode)

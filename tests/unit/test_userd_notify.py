"""The user-server's end-of-submission notifications: only what it signed is acted on, the
command gets the counts, mail goes only when --mail-type asks for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from hq.protocol.messages import SubmissionEnded
from hq.userd.notify import act_on, mail_text, notify_environment, overall_state, wants_mail
from hq.userd.signing import Signer

SIGNER = Signer(key=b"k" * 32, user="alice")


def _signed(**fields: object) -> SubmissionEnded:
    from hq.auth import sign_notification

    base = {"submission_id": 7, "array_id": 41, "counts": {"done": 3, "failed": 1},
            "notify": "echo hi", "database": "db1", **fields}
    signature = sign_notification(SIGNER.key, SIGNER.user, database=base["database"],
                                  submission_id=base["submission_id"], notify=base["notify"],
                                  mail_user=base.get("mail_user"),
                                  mail_type=base.get("mail_type"))
    return SubmissionEnded(**base, signature=signature)  # type: ignore[arg-type]


def test_only_what_the_user_server_signed_counts():
    ended = _signed()
    assert SIGNER.notification_ok(ended)
    for change in ({"notify": "rm -rf ~"}, {"submission_id": 8}, {"database": "db2"},
                   {"mail_user": "eve@example.org"}, {"signature": None}):
        assert not SIGNER.notification_ok(msgspec.structs.replace(ended, **change)), change
    assert not Signer(key=b"x" * 32, user="alice").notification_ok(ended)


def test_the_command_gets_the_counts_and_the_state():
    env = notify_environment(_signed(), {"PATH": "/bin"})
    assert {k: env[k] for k in ("HQ_ARRAY_ID", "HQ_STATE", "HQ_JOBS", "HQ_DONE", "HQ_FAILED",
                                "HQ_CANCELLED", "PATH")} == {
        "HQ_ARRAY_ID": "41", "HQ_STATE": "failed", "HQ_JOBS": "4", "HQ_DONE": "3",
        "HQ_FAILED": "1", "HQ_CANCELLED": "0", "PATH": "/bin"}
    assert overall_state({"done": 2}) == "done"
    assert overall_state({"done": 2, "cancelled": 1}) == "cancelled"


def test_mail_types_as_in_slurm():
    assert wants_mail("END", "done") and wants_mail("ALL", "failed")
    assert wants_mail("FAIL", "failed") and not wants_mail("FAIL", "done")
    assert not wants_mail("NONE", "failed")
    text = mail_text(_signed(mail_user="me@example.org"), "alice").decode()
    assert text.startswith("To: me@example.org\nSubject: hq: 41 ended: failed (3 done, 1 failed)")


def test_the_command_runs_in_the_home_directory(tmp_path: Path):
    ended = _signed(notify='echo "$HQ_ARRAY_ID $HQ_STATE $HQ_DONE" > told.txt; pwd >> told.txt')
    asyncio.run(act_on(ended, "alice", str(tmp_path)))
    assert (tmp_path / "told.txt").read_text() == f"41 failed 3\n{tmp_path}\n"

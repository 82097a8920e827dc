"""A job's signature still verifies after the job has been through the database, on both
backends: hq-server restarts hand out jobs it read back, and a user-server refuses any whose
spec differs by a byte from what it signed.

The regression behind this file: the signed text left out fields at their default by
msgspec's ``omit_defaults``, which compares a default string by identity; a shell read back
from the database is an equal string but another object, so after every restart of hq-server
each pending job was refused with "bad signature".
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from hq.auth import job_signature_ok, sign_job
from hq.db.jobs import insert_submission, load_unfinished
from hq.db.model import users
from hq.job import Job, Submission
from hq.jobspec import JobSpec, as_signed, submission_digest

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
KEY = b"k" * 32

PLAIN = JobSpec(command="true", cwd="/tmp")
FULL = JobSpec(command="echo ü; exit 3", cwd="/home/alice/w", shell="/bin/bash", name="n",  # noqa: S604
               cores=3, memory_mb=100, priority=-5, group="g", info_text="i",
               time_limit_s=60, estimated_time_s=30, estimated_memory_mb=50,
               stdout="/dev/null", stderr="e-%j", log_path="l-%a",
               excluded_hosts=("n1", "n2"), requeue=False, array_index=4)
# an element of an array signed as a whole: its index set is stored with the submission
ELEMENT = JobSpec(command="sim", cwd="/tmp", array_index=5, array_indexes="1-9:2")


@pytest.mark.parametrize("spec", [PLAIN, FULL, ELEMENT],
                         ids=["defaults", "every-field", "array-element"])
def test_a_spec_read_back_from_the_database_verifies(engine, spec):
    environment, umask = {"PATH": "/bin", "X": "y"}, 0o027
    digest = submission_digest(environment, umask)
    signed = JobSpec(**{**{f: getattr(spec, f) for f in spec.__struct_fields__},
                        "signature": sign_job(KEY, as_signed(spec), "alice", digest,
                                              database="db1", submission_id=7)})
    with engine.begin() as conn:
        owner_id = conn.execute(sa.insert(users).values(
            name="alice", retired=False, created_at=T0, updated_at=T0)).inserted_primary_key[0]
        insert_submission(conn, Submission(id=7, owner="alice", environment=environment,
                                           umask=umask, submitted_at=T0, submit_host="head",
                                           job_count=1, first_job_id=1,
                                           array_indexes=spec.array_indexes),
                          owner_id, [Job(id=1, submission_id=7, owner="alice",
                                         owner_id=owner_id, spec=signed, submitted_at=T0,
                                         eligible_at=T0)])
    with engine.connect() as conn:
        subs, found = load_unfinished(conn)
    (back,) = found
    assert back.spec == signed
    (sub,) = subs
    digest_back = submission_digest(sub.environment, sub.umask)
    assert job_signature_ok(KEY, back.spec, "alice", digest_back, database="db1",
                            submission_id=7, accept_v1=False)
    # and the signature still binds: another submission or database does not verify
    assert not job_signature_ok(KEY, back.spec, "alice", digest_back, database="db1",
                                submission_id=8, accept_v1=False)
    assert not job_signature_ok(KEY, back.spec, "alice", digest_back, database="db2",
                                submission_id=7, accept_v1=False)

"""Workflows through the real programs, on SQLite and MariaDB: arrays with a cap, element ids,
dependencies and what happens when they can never be met, retries, batch scripts."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time

import pytest
import sqlalchemy as sa
from fixtures.running_hq import eventually, wait_gone

from hq.db.model import job_attempts, job_dependencies, jobs, submissions


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _ids(result) -> list[int]:
    return _json(result)["ids"]


def _states(hq, ids: list[int]) -> dict[int, str]:
    return {i: hq.show(i)["state"] for i in ids}


def _wait_all(hq, ids: list[int], timeout: float = 60) -> None:
    result = hq.client("wait", ",".join(map(str, ids)), timeout=timeout)
    assert result.returncode in (0, 1), result.stderr


def test_an_array_with_a_cap_never_runs_more_than_the_cap(running_hq):
    hq = running_hq
    ids = _ids(hq.submit("--json", "--array", "1-12%3", "-o", "arr-%A_%a.out",
                         'echo "$HQ_ARRAY_ID $HQ_ARRAY_INDEX $SLURM_ARRAY_JOB_ID '
                         '$SLURM_ARRAY_TASK_ID ${SLURM_JOB_ID:-none}"; '
                         'date +%s.%N > "stamp-$HQ_ARRAY_INDEX.start"; sleep 0.3; '
                         'date +%s.%N > "stamp-$HQ_ARRAY_INDEX.end"'))
    assert len(ids) == 12 and ids == list(range(ids[0], ids[0] + 12))
    array = ids[0]
    _wait_all(hq, ids)
    assert set(_states(hq, ids).values()) == {"done"}
    spans = [(float((hq.workdir / f"stamp-{i}.start").read_text()),
              float((hq.workdir / f"stamp-{i}.end").read_text())) for i in range(1, 13)]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 3, f"{most} of the array ran at once with %3"
    assert (hq.workdir / f"arr-{array}_5.out").read_text().split() == [
        str(array), "5", str(array), "5", "none"]
    info = hq.show(ids[4])
    assert info["array_id"] == array and info["array_index"] == 5
    (row,) = hq.db_rows(sa.select(submissions.c.array_cap, submissions.c.first_job_id)
                        .where(submissions.c.first_job_id == array))
    assert tuple(row) == (3, array)


def test_array_elements_are_named_by_index(running_hq):
    hq = running_hq
    ids = _ids(hq.submit("--json", "--hold", "--array", "0-20:5", "true"))
    array = ids[0]
    assert [hq.show(i)["array_index"] for i in ids] == [0, 5, 10, 15, 20]
    shown = _json(hq.client("show", f"{array}_10", "--json"))["job"]
    assert shown["id"] == ids[2]
    # the table of unfinished jobs: one line for the array, folded by hq-server
    (line,) = [row for row in hq.client("jobs").stdout.splitlines()[1:] if row.strip()]
    assert line.split()[:3] == [f"{array}_[0,5,10,15,20]", "5", "held"]
    released = hq.client("release", f"{array}_[5,15]")
    assert released.returncode == 0, released.stderr
    assert released.stdout.splitlines() == [f"job {ids[1]}: released", f"job {ids[3]}: released"]
    missing = hq.client("release", f"{array}_7")
    assert missing.returncode == 3 and f"array {array} has no element 7" in missing.stderr
    cancelled = hq.client("cancel", f"{array}_*")   # a whole array: one line of counts
    assert cancelled.returncode == 0, cancelled.stderr
    (line,) = cancelled.stdout.splitlines()
    assert line.startswith(f"array {array}: 3 cancelled"), line
    counted = _json(hq.client("cancel", "--json", "--array", str(array)))["arrays"]
    assert counted[0]["id"] == array and sum(counted[0]["results"].values()) == 5
    assert counted[0]["results"].get("already cancelled", 0) >= 3
    _wait_all(hq, ids)


def test_update_changes_the_cap_of_a_running_array(running_hq):
    hq = running_hq
    ids = _ids(hq.submit("--json", "--array", "1-4%1", "sleep 30"))
    array = ids[0]
    eventually(lambda: hq.show(ids[0])["state"] == "running", what="the first element")
    assert hq.show(ids[2])["state_reason"] == f"array {array} has its cap of 1 running"
    updated = hq.client("update", str(array), "--cap", "2")
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout == f"array {array}: cap 2\n"
    eventually(lambda: sum(1 for s in _states(hq, ids).values() if s == "running") == 2,
               what="two elements running after the cap was raised")
    assert [hq.show(i)["state"] for i in ids[2:]] == ["pending", "pending"]
    (cap,) = hq.db_rows(sa.select(submissions.c.array_cap)
                        .where(submissions.c.first_job_id == array))
    assert cap[0] == 2
    assert hq.client("cancel", "--array", str(array)).returncode == 0
    _wait_all(hq, ids)


def test_a_chain_where_the_first_job_fails(running_hq):
    hq = running_hq
    a = hq.submit_id("--hold", "exit 4")
    b = hq.submit_id("--dependency", f"afterok:{a}", "echo b > b.out")
    c = hq.submit_id("-d", f"afternotok:{b}", "echo c > c.out")
    d = hq.submit_id("--after", str(a), "true")
    info_b = hq.show(b)
    assert info_b["state"] == "pending"
    assert info_b["state_reason"] == f"waiting for job {a} (afterok)"
    assert info_b["dependencies"] == [{"id": a, "kind": "afterok", "state": "held"}]
    assert hq.client("release", str(a)).returncode == 0
    waited = hq.client("wait", str(b))
    assert waited.returncode == 1
    assert f"job {b}: cancelled (dependency never satisfied: job {a} failed)" in waited.stderr
    assert hq.wait_for(c, {"done", "failed", "cancelled"})["state"] == "done"
    assert (hq.workdir / "c.out").read_text() == "c\n"
    assert not (hq.workdir / "b.out").exists()
    assert hq.wait_for(d, {"cancelled"})["state_reason"] == \
        f"dependency never satisfied: job {a} failed"
    table = hq.client("jobs", "--all")
    assert "dependency never satisfied" in table.stdout
    rows = hq.db_rows(sa.select(job_dependencies.c.job_id, job_dependencies.c.depends_on_id,
                                job_dependencies.c.kind).order_by(job_dependencies.c.job_id))
    assert [tuple(r) for r in rows] == [(b, a, "afterok"), (c, b, "afternotok"),
                                        (d, a, "afterok")]


def test_afterany_runs_after_a_cancel_and_aftercorr_pairs_indexes(running_hq):
    hq = running_hq
    slow = hq.submit_id("sleep 30")
    after = hq.submit_id("-d", f"afterany:{slow}", "echo any > any.out")
    assert hq.client("cancel", str(slow)).returncode == 0
    assert hq.wait_for(after, {"done", "failed", "cancelled"}, timeout=30)["state"] == "done"

    first = _ids(hq.submit("--json", "--array", "1-3", 'sleep 0.2; test $HQ_ARRAY_INDEX != 2'))
    second = _ids(hq.submit("--json", "--array", "1-3", "-d", f"aftercorr:{first[0]}",
                            'echo "$HQ_ARRAY_INDEX" > corr-$HQ_ARRAY_INDEX.out'))
    _wait_all(hq, first + second)
    assert _states(hq, second) == {second[0]: "done", second[1]: "cancelled",
                                   second[2]: "done"}
    assert hq.show(second[1])["state_reason"] == \
        f"dependency never satisfied: job {first[1]} failed"


def test_a_dependency_on_a_job_that_does_not_exist_stores_nothing(running_hq):
    hq = running_hq
    before = hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0]
    result = hq.submit("-d", "afterok:999999", "true")
    assert result.returncode == 3, result.stderr
    assert "no such job: 999999" in result.stderr
    assert hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0] == before


def test_kill_on_invalid_dep_no_keeps_the_job_waiting_and_resubmit_rewires_it(running_hq):
    hq = running_hq
    scan = _ids(hq.submit("--json", "--array", "1-4",
                          'test -e "fixed" || test $HQ_ARRAY_INDEX != 3'))
    merge = hq.submit_id("-d", f"afterok:{scan[0]}", "--kill-on-invalid-dep", "no",
                         "echo merged > merge.out")
    _wait_all(hq, scan)
    eventually(lambda: (hq.show(merge)["state_reason"] or "").startswith(
        "dependency never satisfied"), what="the merge step to see the failure")
    assert hq.show(merge)["state"] == "pending"
    (hq.workdir / "fixed").write_text("")
    again = hq.client("resubmit", str(scan[0]), "--state", "failed", "--json")
    new = _json(again)["ids"]
    assert len(new) == 1 and hq.show(new[0])["resubmit_of"] == scan[2]
    assert hq.show(new[0])["array_index"] == 3
    assert hq.wait_for(merge, {"done", "failed", "cancelled"}, timeout=30)["state"] == "done"
    assert (hq.workdir / "merge.out").read_text() == "merged\n"


def test_retries_record_every_attempt(running_hq):
    hq = running_hq
    job = hq.submit_id("--retries", "2",
                       'n=$(cat tries 2>/dev/null || echo 0); echo $((n + 1)) > tries; '
                       'test $n -ge 2 || exit $((n + 5))')
    info = hq.wait_for(job, {"done", "failed", "cancelled"}, timeout=60)
    assert info["state"] == "done" and info["retry_count"] == 2, info["state_reason"]
    # the last run's record is written with the batch that follows its end
    eventually(lambda: len(hq.show(job)["attempts"]) == 3, what="the last attempt's record")
    info = hq.show(job)
    attempts = [(a["state"], a["exit_code"]) for a in info["attempts"]]
    assert attempts == [("failed", 5), ("failed", 6), ("done", 0)]
    rows = hq.db_rows(sa.select(job_attempts.c.attempt, job_attempts.c.exit_code)
                      .where(job_attempts.c.job_id == job).order_by(job_attempts.c.attempt))
    assert [r.exit_code for r in rows] == [5, 6, 0]
    assert len({r.attempt for r in rows}) == 3
    (hq.workdir / "tries").unlink()
    gives_up = hq.submit("--retries", "1", "--wait", "exit 9")
    assert gives_up.returncode == 9
    assert "failed (exit code 9)" in gives_up.stderr


def test_a_batch_script_with_directives_is_copied_at_submit(running_hq):
    hq = running_hq
    script = hq.workdir / "run.sh"
    script.write_text("#!/bin/sh\n"
                      "#SBATCH --job-name=scan -c 1 -o scan-%j.out\n"
                      "#SBATCH --partition=gpu\n"
                      "#HQ --priority 5\n"
                      'echo "version 1: $1 $2"\n')
    result = hq.submit("--json", "./run.sh", "alpha", "two words")
    assert result.returncode == 0, result.stderr
    assert "run.sh:3: #SBATCH --partition is not supported by hq: ignored" in result.stderr
    assert "copied into the job" in result.stderr
    job = json.loads(result.stdout)["ids"][0]
    script.write_text("#!/bin/sh\necho edited\n")
    info = hq.wait_for(job, {"done", "failed"})
    assert info["state"] == "done" and info["name"] == "scan" and info["priority"] == 5
    assert (hq.workdir / f"scan-{job}.out").read_text() == "version 1: alpha two words\n"
    overridden = hq.submit_id("--name", "mine", "./run.sh")
    assert hq.show(overridden)["name"] == "mine"


def test_dependencies_and_caps_survive_kill_9_of_hq_server(running_hq):
    hq = running_hq
    first = hq.submit_id("sleep 2")
    later = hq.submit_id("--after", str(first), "true")
    capped = _ids(hq.submit("--json", "--array", "1-4%1", "sleep 0.5"))
    os.kill(hq.server_pid(), signal.SIGKILL)   # no chance to write anything more
    wait_gone(hq.server_pid())
    hq.start_server()
    assert hq.show(later)["state"] == "pending"
    assert hq.wait_for(later, {"done", "failed", "cancelled"}, timeout=60)["state"] == "done"
    assert hq.show(later)["started_at"] >= hq.show(first)["ended_at"]
    _wait_all(hq, capped)
    spans = [(hq.show(i)["started_at"], hq.show(i)["ended_at"]) for i in capped]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


def test_a_big_array_answers_before_it_is_stored_and_survives_kill_9(running_hq):
    """hq-submit answers once the array is durable, not once its 100,000 jobs are stored;
    every count has them all at once, and a kill -9 in the middle of storing them loses
    none (hq.server.layout)."""
    hq = running_hq
    count = 100_000   # about 5 s to store: the kill comes well before that
    ids = _ids(hq.submit("--json", "--hold", "--array", f"1-{count}", "true"))
    assert ids == list(range(ids[0], ids[0] + count))
    status = _json(hq.client("status", "--json"))
    assert status["mine"] == {"held": count}
    folded = hq.client("jobs")
    assert folded.returncode == 0 and f"{count} held" in folded.stdout, folded.stdout
    os.kill(hq.server_pid(), signal.SIGKILL)
    wait_gone(hq.server_pid())
    (stored,) = hq.db_rows(sa.select(sa.func.count()).where(jobs.c.id >= ids[0]))[0]
    assert stored < count, "all stored before the kill: the restart would prove nothing"
    hq.start_server()
    last = hq.show(ids[-1])     # waits until the rest is stored
    assert (last["state"], last["array_index"], last["array_id"]) == ("held", count, ids[0])
    rows = hq.db_rows(sa.select(sa.func.count(), sa.func.min(jobs.c.id), sa.func.max(jobs.c.id),
                                sa.func.count(sa.distinct(jobs.c.array_index)))
                      .where(jobs.c.id >= ids[0], jobs.c.state == "held"))
    assert tuple(rows[0]) == (count, ids[0], ids[-1], count)
    assert hq.submit_id("true") == ids[-1] + 1   # the array's ids stayed its own


def test_a_big_array_cancelled_whole_at_once_is_stored_cancelled(running_hq):
    """A mistaken ``--array 1-100000`` is cancelled at once, while its jobs are still being
    stored: one line of counts, every job stored cancelled, told once when all are."""
    hq = running_hq
    count, told = 100_000, hq.home / "told-big.txt"
    ids = _ids(hq.submit("--json", "--array", f"1-{count}", "--notify",
                         f'echo "$HQ_STATE $HQ_JOBS $HQ_CANCELLED" >> {told}', "sleep 600"))
    cancelled = hq.client("cancel", f"{ids[0]}_*")
    assert cancelled.returncode == 0, cancelled.stderr
    (stored,) = hq.db_rows(sa.select(sa.func.count()).where(jobs.c.id >= ids[0]))[0]
    assert stored < count, "all stored before the cancel: it proves nothing"
    # the few that started are being killed; the others, stored or not, are cancelled
    (line,) = cancelled.stdout.splitlines()
    shape = rf"array {ids[0]}: (100,000|99,\d{{3}}) cancelled(, \d cancelling)?"
    assert re.fullmatch(shape, line), line
    assert sum(_json(hq.client("status", "--json"))["mine"].get(s, 0)
               for s in ("pending", "held")) == 0
    counted = hq.client("progress", str(ids[0]), "--json", timeout=120)
    assert counted.returncode == 1   # not all done
    assert json.loads(counted.stdout) == {str(ids[0]): {"cancelled": count}}
    (rows,) = hq.db_rows(sa.select(sa.func.count()).where(jobs.c.id >= ids[0],
                                                          jobs.c.state == "cancelled"))
    assert rows[0] == count
    eventually(told.exists, what="the --notify command")
    time.sleep(1.0)
    assert told.read_text() == f"cancelled {count} {count}\n"


def test_waiting_for_a_whole_array_reports_its_counts(running_hq):
    """``hq-client wait 42_*`` and ``hq-submit --wait --array`` wait by the array's counts
    and end with one line; an array of one job still exits with that job's exit code."""
    hq = running_hq
    ids = _ids(hq.submit("--json", "--array", "1-4", 'test "$HQ_ARRAY_INDEX" != 3'))
    waited = hq.client("wait", f"{ids[0]}_*", timeout=120)
    assert waited.returncode == 1, waited.stderr
    assert waited.stderr.splitlines()[-1] == "4 jobs finished: 3 done, 1 failed"
    assert [hq.show(i)["state"] for i in ids] == ["done", "done", "failed", "done"]
    submitted = hq.submit("--wait", "--array", "1-3", "true")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stderr.splitlines()[-1] == "3 jobs finished: 3 done"
    (one,) = _ids(hq.submit("--json", "--array", "7", "exit 3"))
    alone = hq.client("wait", "--array", str(one), timeout=120)
    assert alone.returncode == 3 and f"job {one}: failed" in alone.stderr, alone.stderr


def test_notify_runs_once_per_array_with_the_counts(running_hq):
    hq = running_hq
    told = hq.home / "told.txt"
    ids = _ids(hq.submit("--json", "--array", "1-5",
                         "--notify", f'echo "$HQ_ARRAY_ID $HQ_STATE $HQ_DONE $HQ_FAILED" >> {told}',
                         'test "$HQ_ARRAY_INDEX" != 4'))
    _wait_all(hq, ids)
    eventually(told.exists, what="the --notify command")
    time.sleep(1.0)   # a second run would have come by now
    assert told.read_text() == f"{ids[0]} failed 4 1\n"


def test_mail_without_a_local_sendmail_is_refused_at_submit(running_hq):
    from hq.mail import sendmail_path

    if sendmail_path() is not None:
        pytest.skip("this machine has a sendmail: the refusal cannot show here")
    result = running_hq.submit("--mail-user", "me@example.org", "true")
    assert result.returncode == 2
    assert "this host has no sendmail" in result.stderr and "--notify" in result.stderr


def test_wait_says_why_a_job_ended(running_hq):
    result = running_hq.submit("--time-limit", "1", "--wait", "sleep 30")
    assert result.returncode != 0
    assert result.stderr.strip().endswith(": failed (time limit 1s reached)"), result.stderr
    jobs_file = running_hq.workdir / "jobs.txt"
    jobs_file.write_text("command::sleep 0.3\n" * 4)
    ids = _ids(running_hq.submit("--json", "-f", str(jobs_file), "--array-cap", "1"))
    _wait_all(running_hq, ids)
    spans = sorted((running_hq.show(i)["started_at"], running_hq.show(i)["ended_at"])
                   for i in ids)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


def test_progress_follows_an_array_until_it_is_done(running_hq):
    hq = running_hq
    ids = _ids(hq.submit("--json", "--array", "1-4", 'sleep 0.3; test "$HQ_ARRAY_INDEX" != 2'))
    shown = hq.client("progress", str(ids[0]), "--interval", "0.2", timeout=120)
    assert shown.returncode == 1, shown.stderr   # one element failed
    assert f"array {ids[0]}" in shown.stdout and "4/4" in shown.stdout
    counted = hq.client("progress", str(ids[0]), "--json")
    assert counted.returncode == 1   # as without --json: not all done
    assert json.loads(counted.stdout) == {str(ids[0]): {"done": 3, "failed": 1}}
    listing = hq.client("jobs", "--all").stdout
    assert f"{ids[0]}_[1-4]" in listing and "3 done" in listing
    expanded = hq.client("jobs", "--all", "--expand", "--array", str(ids[0])).stdout
    assert len([line for line in expanded.splitlines() if f"({ids[0]}_" in line]) == 4

"""Jobs queued ahead at the exec-server (DESIGN §7), with the real daemons on one machine:
what a queued job does when hq-server wants it back, or dies.

Every job appends a line to a file of its own when it has run: a file with two lines is a job
run twice, a file of a job that was withdrawn or cancelled is one that started after all.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time

import sqlalchemy as sa
from fixtures.running_hq import eventually

from hq.db.model import events, jobs

FINISHED = {"done", "failed", "cancelled"}


def _states(hq, ids):
    rows = hq.db_rows(sa.select(jobs.c.id, jobs.c.state, jobs.c.restart_count)
                      .where(jobs.c.id.in_(ids)))
    return {r.id: (str(r.state), r.restart_count) for r in rows}


def _submit_file(hq, lines: list[str]) -> list[int]:
    jobs_file = hq.workdir / "jobs.tab"
    jobs_file.write_text("".join(f"command::{line}\n" for line in lines))
    result = hq.submit("-f", str(jobs_file), "--json", "-o", "/dev/null", "-O", "/dev/null")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["ids"]


def _runs(directory) -> collections.Counter[int]:
    return collections.Counter({int(p.name): len(p.read_text().splitlines())
                                for p in directory.iterdir()})


def test_killing_hq_server_during_a_deep_queue_ends_every_job_exactly_once(running_hq):
    hq = running_hq
    runs = hq.workdir / "runs"
    runs.mkdir()
    ids = _submit_file(hq, [f"echo ran >> {runs}/$HQ_JOB_ID"] * 5000)
    eventually(lambda: len(list(runs.iterdir())) >= 300, timeout=60, what="300 jobs to run")
    queued = sum(1 for s, _r in _states(hq, ids).values() if s == "dispatched")
    os.kill(hq.server_pid(), signal.SIGKILL)
    time.sleep(1.0)   # the exec-server goes on with its queue while hq-server is away
    hq.start_server()
    eventually(lambda: all(s in FINISHED for s, _r in _states(hq, ids).values()),
               timeout=240, what="all 5000 jobs to finish")
    states = _states(hq, ids)
    assert collections.Counter(s for s, _r in states.values()) == {"done": 5000}
    assert {r for _s, r in states.values()} == {0}
    counted = _runs(runs)
    assert sorted(counted) == ids, "a job did not run"
    assert set(counted.values()) == {1}, "a job ran more than once"
    # the queue was deep when hq-server died: more jobs handed over than the 2 cores
    assert queued > 2
    # every job's start and end are in the event log once
    rows = hq.db_rows(sa.select(events.c.job_id, events.c.new_state)
                      .where(events.c.job_id.in_(ids), events.c.new_state == "done"))
    assert collections.Counter(r.job_id for r in rows) == dict.fromkeys(ids, 1)


def test_withdrawn_and_cancelled_queued_jobs_never_start(running_hq):
    hq = running_hq
    runs = hq.workdir / "runs"
    runs.mkdir()
    # 0.2 s a job on 2 cores: about 5 a core wait at the exec-server once a few have ended
    ids = _submit_file(hq, [f"sleep 0.2; echo ran >> {runs}/$HQ_JOB_ID"] * 80)

    def dispatched() -> list[int]:
        return sorted(i for i, (s, _r) in _states(hq, ids).items() if s == "dispatched")

    eventually(lambda: len(dispatched()) >= 6, timeout=60, what="jobs queued ahead")
    tail = dispatched()[-6:]
    to_hold, to_cancel = tail[:3], tail[3:]
    held = hq.client("hold", *map(str, to_hold))
    assert held.returncode == 0, held.stderr
    cancelled = hq.client("cancel", *map(str, to_cancel))
    assert cancelled.returncode == 0, cancelled.stderr
    deactivated = hq.admin("deactivatehost", "localhost")
    assert deactivated.returncode == 0, deactivated.stderr
    # what still waited at the exec-server comes back; only what had started runs on
    eventually(lambda: not dispatched(), timeout=30, what="the queue to be withdrawn")
    eventually(lambda: not any(s == "running" for s, _r in _states(hq, ids).values()),
               timeout=30, what="the started jobs to end")
    before = _runs(runs)
    time.sleep(1.0)
    assert _runs(runs) == before, "a job started on a deactivated host"
    states = _states(hq, ids)
    pending = [i for i, (s, _r) in states.items() if s == "pending"]
    assert pending, "nothing was withdrawn"
    assert not any(i in before for i in pending)
    # the database's "dispatched" may lag the exec-server: a job picked as queued may have
    # started (even ended) before the cancel reached it; one that had not never runs
    for job_id in to_cancel:
        expected = {"done", "cancelled"} if job_id in before else {"cancelled"}
        assert states[job_id][0] in expected, (job_id, states[job_id])
    # a held job that was still waiting is held now and never ran; one that had started
    # meanwhile just ran (hold does not kill)
    for job_id in to_hold:
        assert (states[job_id][0], job_id in before) in (("held", False), ("done", True))
    assert any(states[i][0] == "held" for i in to_hold)
    assert hq.admin("activatehost", "localhost").returncode == 0
    assert hq.client("release", *map(str, to_hold)).returncode == 0
    rest = [i for i in ids if i not in to_cancel]
    eventually(lambda: all(_states(hq, rest)[i][0] == "done" for i in rest), timeout=90,
               what="the others to run")
    counted = _runs(runs)
    assert sorted(counted) == rest and set(counted.values()) == {1}
    assert {r for _s, r in _states(hq, ids).values()} == {0}

"""The short chaos run of CI: 300 jobs while each of hq's daemons is killed with -9 at random
moments (benchmarks/chaos.py is the long one, with a MariaDB restart too). Nothing is lost,
nothing runs twice, and every job row agrees with its events, on both backends."""

from __future__ import annotations

from fixtures.chaos import ROLES, run_jobs_through_chaos


def test_killing_every_daemon_at_random_loses_nothing_and_runs_nothing_twice(running_hq):
    hq = running_hq
    result = run_jobs_through_chaos(hq.run, hq.processes, hq.workdir, jobs=300,
                                    kills={role: 1 for role in ROLES}, span_s=8.0,
                                    seed=7, timeout_s=240)
    print(result.as_dict())
    assert sum(result.kills.values()) >= 3   # the daemons were there to be killed
    assert (result.lost, result.twice, result.disagreeing, result.not_done) == (0, 0, 0, 0)

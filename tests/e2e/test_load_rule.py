"""The load rule with the real host monitor (DESIGN §7): foreign work keeps cores back, hq's
own work does not. The default ``load_factor`` (1.1) on the 2-core ``localhost`` of a
scratch installation; the monitor reports every 0.5 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from fixtures.running_hq import eventually

from hq.db.model import jobs

CONFIG = ("[server]\nuser_server_idle_timeout = 600\nexec_server_idle_timeout = 600\n"
          "heartbeat_interval = 0.5\n")
BURN = "timeout {secs} sh -c 'while :; do :; done'; true"


@pytest.fixture
def default_load_rule_hq(installed_hq):
    (installed_hq.inst.etc / "hq-server.cfg").write_text(CONFIG)
    installed_hq.start_server()
    return installed_hq


def _intervals(hq, ids):
    rows = hq.db_rows(sa.select(jobs.c.id, jobs.c.state, jobs.c.started_at, jobs.c.ended_at)
                      .where(jobs.c.id.in_(ids)).order_by(jobs.c.id))
    assert {str(r.state) for r in rows} == {"done"}, [(r.id, str(r.state)) for r in rows]
    return [(r.started_at, r.ended_at) for r in rows]


def _submit(hq, command, count):
    jobs_file = hq.workdir / "jobs.tab"
    jobs_file.write_text("".join(f"command::{command}\n" for _ in range(count)))
    result = hq.submit("--json", "-o", "/dev/null", "-O", "/dev/null", "-f", str(jobs_file))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["ids"]


def _wait_done(hq, ids, timeout):
    def done() -> bool:
        rows = hq.db_rows(sa.select(jobs.c.state).where(jobs.c.id.in_(ids)))
        return all(str(r.state) in ("done", "failed", "cancelled") for r in rows)
    eventually(done, timeout=timeout, what=f"jobs {ids[0]}-{ids[-1]} to finish")


def test_a_one_core_burner_leaves_one_core_to_hq(default_load_rule_hq):
    hq = default_load_rule_hq
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.0)   # a few monitor reports that see it
        ids = _submit(hq, "sleep 0.3", 4)
        _wait_done(hq, ids, timeout=60)
        assert len(_intervals(hq, ids)) == 4
    finally:
        burner.kill()
        burner.wait()


def test_hqs_own_full_load_does_not_throttle_hq(default_load_rule_hq):
    hq = default_load_rule_hq
    # two waves of two CPU-bound jobs: the second starts while the monitor's last report
    # still shows both cores busy with the first wave, which was hq's own work
    ids = _submit(hq, BURN.format(secs=2), 4)
    _wait_done(hq, ids, timeout=60)
    (a_start, a_end), (b_start, b_end), (c_start, c_end), (d_start, d_end) = \
        _intervals(hq, ids)
    assert max(a_start, b_start) < min(a_end, b_end), "the first wave did not run together"
    assert max(c_start, d_start) < min(c_end, d_end), "the second wave was held back"
    # and the second wave came right after the first: no wait for the load to settle
    assert (min(c_start, d_start) - max(a_end, b_end)).total_seconds() < 1.5

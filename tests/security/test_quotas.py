"""Quotas (etc/hq-server.cfg): a submission over a limit is refused whole, with one line that
names the setting, and stores nothing; within the limits everything is taken. Both backends."""

from __future__ import annotations

import sqlalchemy as sa

from hq.db.model import jobs, submissions


def _counts(hq) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return (hq.db_rows(sa.select(sa.func.count()).select_from(jobs))[0][0],
            hq.db_rows(sa.select(sa.func.count()).select_from(submissions))[0][0])


def test_a_submission_over_a_quota_is_refused_whole_naming_the_setting(installed_hq):
    hq = installed_hq
    (hq.inst.etc / "hq-server.cfg").write_text(
        "[server]\nuser_server_idle_timeout = 600\nexec_server_idle_timeout = 600\n"
        "[scheduler]\nload_factor = 100\nmax_jobs_per_submission = 3\n"
        "max_queued_per_user = 5\n")
    hq.start_server()
    jobs_file = hq.workdir / "four.tab"
    jobs_file.write_text("command::sleep 30\n" * 4)

    result = hq.submit("-f", str(jobs_file))
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "at most 3 jobs, this one has 4" in line and "max_jobs_per_submission" in line
    assert _counts(hq) == (0, 0)

    jobs_file.write_text("command::sleep 30\n" * 3)
    assert hq.submit("-f", str(jobs_file)).returncode == 0       # 3 queued
    result = hq.submit("-f", str(jobs_file))                     # 3 more: 6 > 5
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "has 3 unfinished jobs and may have at most 5" in line
    assert "max_queued_per_user" in line
    assert _counts(hq) == (3, 1)
    assert hq.submit("--hold", "sleep 30").returncode == 0        # 4 fit
    assert hq.submit("--hold", "sleep 30").returncode == 0        # 5 fit
    assert _counts(hq) == (5, 3)

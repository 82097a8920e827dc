"""The usage report's numbers (hq.report.data) on both backends: a known history, each
plot's figures checked by hand and against SQL a report writer runs on the report views;
and ``hq-admin report`` end to end."""

from __future__ import annotations

import json
import stat

import pytest
import sqlalchemy as sa
from fixtures.installation import hq_env, run_hq
from fixtures.report_history import NOW, SINCE, UNTIL, write_history

from hq.config import load_database
from hq.db.engine import create_engine, is_mysql
from hq.db.types import UtcDateTime
from hq.report.data import DURATION_EDGES, load_report
from hq.report.figures import FIGURES

WINDOW = {"s": SINCE, "u": UNTIL}


@pytest.fixture
def history(engine):
    with engine.begin() as conn:
        write_history(conn)
    return engine


def sql(engine, text: str, **params):  # type: ignore[no-untyped-def]
    """Rows of ``text`` with the window (and other times) bound as UTC datetimes."""
    values = {k: v for k, v in {**WINDOW, **params}.items() if f":{k}" in text}
    query = sa.text(text).bindparams(*(sa.bindparam(k, type_=UtcDateTime()) for k in values))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query, values)]


def report(engine):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return load_report(conn, SINCE, UNTIL, NOW)


def test_jobs_and_core_hours_per_user_per_day(history):
    days = [(d.day, d.owner, d.jobs, d.core_hours) for d in report(history).user_days]
    # alice: jobs 1, 2, 6 and the cancelled 8 (2 + 0.5 + 1.5 + 0 core-hours); bob: 7, then 3
    assert days == [("2026-11-20", "alice", 4, 4.0), ("2026-11-20", "bob", 1, 0.0028),
                    ("2026-11-21", "bob", 1, 4.0)]
    by_sql = sql(history, """
        SELECT DATE(ended_at), owner, COUNT(*), SUM(cores * COALESCE(run_s, 0)) / 3600.0
        FROM report_jobs WHERE ended_at >= :s AND ended_at < :u
        GROUP BY DATE(ended_at), owner ORDER BY DATE(ended_at), owner""")
    assert [(str(d), o, n, round(float(h), 4)) for d, o, n, h in by_sql] == days


def _bins_sql(column: str, where: str) -> str:
    cases = " ".join(f"WHEN ROUND({column}, 3) < {edge} THEN {i}"
                     for i, edge in enumerate(DURATION_EDGES[1:]))
    return (f"SELECT CASE {cases} ELSE {len(DURATION_EDGES) - 1} END AS bin, COUNT(*) "
            f"FROM report_jobs WHERE {where} GROUP BY 1 ORDER BY 1")


def _counts(rows) -> list[int]:  # type: ignore[no-untyped-def]
    counts = [0] * len(DURATION_EDGES)
    for b, n in rows:
        counts[int(b)] = int(n)
    return counts


def test_waiting_times_of_jobs_that_started_in_the_window(history):
    wait = report(history).wait
    # jobs 4 (0.5 s), 2 (5 s), 7 (30 s), 9 (60 s), 1 (600 s), 3 (1800 s); 6 started before
    assert wait.counts == [1, 1, 1, 1, 2, 0, 0, 0]
    assert (wait.jobs, wait.median_s) == (6, 45.0)
    assert wait.counts == _counts(sql(history, _bins_sql(
        "wait_s", "started_at >= :s AND started_at < :u")))


def test_run_times_of_jobs_that_ended_in_the_window(history):
    run = report(history).run
    # job 7 (10 s), 2 (30 min), 1 and 3 (1 h), 6 (90 min); 8 never ran, 4 runs, 9 ends later
    assert run.counts == [0, 0, 1, 0, 1, 3, 0, 0]
    assert (run.jobs, run.median_s) == (5, 3600.0)
    assert run.counts == _counts(sql(history, _bins_sql(
        "run_s", "ended_at >= :s AND ended_at < :u AND run_s IS NOT NULL")))


def test_failures_by_reason(history):
    failures = [(f.reason, f.jobs) for f in report(history).failures]
    assert failures == [("exit code 3", 2), ("time limit", 1)]
    by_sql = sql(history, """
        SELECT state_reason, exit_code, signal_number, COUNT(*) FROM report_jobs
        WHERE state = 'failed' AND ended_at >= :s AND ended_at < :u
        GROUP BY state_reason, exit_code, signal_number""")
    assert sorted(by_sql, key=str) == sorted([(None, 3, None, 2), ("time limit", None, 9, 1)],
                                             key=str)


def test_cores_busy_per_host_over_time(history):
    rep = report(history)
    assert rep.bin_s == 900 and len(rep.bin_starts) == 192
    busy = {h.host: h for h in rep.hosts}
    assert (busy["node1"].cores, busy["node2"].cores) == (4, 8)
    node1 = {i: v for i, v in enumerate(busy["node1"].busy) if v}
    # job 6 until 0:30, jobs 1 + 2 from 1:00, job 1 alone from 1:30, job 7's 10 s at 2:00
    assert node1 == {0: 1.0, 1: 1.0, 4: 3.0, 5: 3.0, 6: 2.0, 7: 2.0, 8: 0.0111}
    node2 = {i: v for i, v in enumerate(busy["node2"].busy) if v}
    # job 3 from 23:30 to 24:30, job 4 from 34:00:00.5 to NOW (36:00), job 9 from 47:00 on
    assert node2 == {**dict.fromkeys(range(94, 98), 4.0), 136: 7.9956,
                     **dict.fromkeys(range(137, 144), 8.0), **dict.fromkeys(range(188, 192), 2.0)}
    assert (busy["node1"].core_hours, busy["node2"].core_hours) == (3.0028, 21.9989)
    # every bin lies between the cores of the jobs that cover all of it and of those that
    # touch it, both as a report writer's SQL finds them
    for i, start in enumerate(rep.bin_starts):
        end = start + (rep.bin_starts[1] - rep.bin_starts[0])
        covering = dict(sql(history, """
            SELECT host, SUM(cores) FROM report_jobs WHERE host IS NOT NULL
            AND started_at <= :b AND (ended_at >= :e OR (ended_at IS NULL
                AND state IN ('dispatched', 'running') AND :n >= :e))
            GROUP BY host""", b=start, e=end, n=NOW))
        touching = dict(sql(history, """
            SELECT host, SUM(cores) FROM report_jobs WHERE host IS NOT NULL
            AND started_at < :e AND (ended_at > :b OR (ended_at IS NULL
                AND state IN ('dispatched', 'running') AND :n > :b))
            GROUP BY host""", b=start, e=end, n=NOW))
        for host, h in busy.items():
            assert int(covering.get(host, 0)) <= h.busy[i] <= int(touching.get(host, 0)), \
                (host, start)
        # and exactly what doc/admin-guide.md's query gives (NOW standing for the clock)
        exact = {host: round(float(v), 4) for host, v in sql(history, _busy_sql(history),
                                                              b=start, e=end, n=NOW)}
        assert exact == {host: h.busy[i] for host, h in busy.items() if host in exact}


def _busy_sql(engine) -> str:  # type: ignore[no-untyped-def]
    """The admin guide's cores-busy query for one 900 s bin [:b, :e)."""
    if is_mysql(engine):
        held = ("TIMESTAMPDIFF(MICROSECOND, GREATEST(started_at, :b), "
                "LEAST(COALESCE(ended_at, :n), :e)) / 1e6")
    else:
        held = ("(julianday(MIN(COALESCE(ended_at, :n), :e)) "
                "- julianday(MAX(started_at, :b))) * 86400.0")
    return f"""
        SELECT host, SUM(cores * {held}) / 900 AS cores_busy FROM report_jobs
        WHERE host IS NOT NULL AND started_at < :e
          AND (ended_at > :b OR (ended_at IS NULL AND state IN ('dispatched', 'running')
                                 AND :n > :b))
        GROUP BY host"""


def test_an_empty_window_has_no_numbers(history):
    with history.connect() as conn:
        rep = load_report(conn, UNTIL.replace(year=2027), UNTIL.replace(year=2027, month=12),
                          NOW)
    assert rep.user_days == [] and rep.failures == [] and rep.wait.jobs == rep.run.jobs == 0
    assert all(not any(h.busy) for h in rep.hosts)


@pytest.fixture
def report_install(hq_install):
    """A scratch installation whose database holds the known history."""
    result = run_hq(hq_install, "hq.cli.dbadmin", "--create-tables")
    assert result.returncode == 0, result.stderr
    engine = create_engine(load_database(hq_install))
    try:
        with engine.begin() as conn:
            write_history(conn)
    finally:
        engine.dispose()
    return hq_install


def admin(inst, *args: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    # days on the command line are local days: UTC here, so they match the fixture's window
    return subprocess.run([sys.executable, "-m", "hq.cli.admin", *args],
                          env=hq_env(inst, TZ="UTC"), cwd=inst.root, capture_output=True,
                          text=True, timeout=120, check=False)


def test_hq_admin_report_writes_html_png_and_json(report_install, tmp_path):
    page, plots = tmp_path / "usage.html", tmp_path / "plots"
    result = admin(report_install, "report", "--since", "2026-11-20", "--until", "2026-11-22",
                   "--html", str(page), "--png", str(plots), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(d["day"], d["owner"], d["jobs"]) for d in data["user_days"]] == [
        ("2026-11-20", "alice", 4), ("2026-11-20", "bob", 1), ("2026-11-21", "bob", 1)]
    assert data["failures"] == [{"reason": "exit code 3", "jobs": 2},
                                {"reason": "time limit", "jobs": 1}]
    assert data["wait"]["counts"] == [1, 1, 1, 1, 2, 0, 0, 0]

    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == len(FIGURES)
    for name, _title in FIGURES:
        assert f'id="{name}"' in text
    # self-contained: nothing fetched, nothing run
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "<td>exit code 3</td><td>2</td>" in text      # the numbers under the plot
    assert stat.S_IMODE(plots.stat().st_mode) == 0o755
    files = sorted(p.name for p in plots.iterdir())
    assert files == sorted(f"{name}.png" for name, _ in FIGURES)
    assert all((plots / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)


def test_hq_admin_report_needs_an_output_and_refuses_a_linked_png_directory(report_install,
                                                                            tmp_path):
    result = admin(report_install, "report")
    assert result.returncode != 0
    assert "give --html FILE, --png DIR or --json" in result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    result = admin(report_install, "report", "--png", str(tmp_path / "link"))
    assert result.returncode != 0
    assert "--png" in result.stderr and "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_hq_admin_report_on_a_database_not_made_yet_names_the_command(hq_install, db_config):
    result = admin(hq_install, "report", "--json")
    assert result.returncode == 6
    assert "run 'hq-dbadmin --create-tables --add-standard-entries'" in result.stderr
    if db_config.dialect == "sqlite":
        assert not db_config.sqlite_path.exists()     # a report writes no database file

"""Chaos: N jobs on MariaDB (or SQLite) while hq-server, the user-server, the exec-server and
the bridge are each killed with -9 at random moments, several times, and MariaDB is
restarted once. Prints jobs lost, jobs run twice and job rows disagreeing with their events
(all must be 0), and the time lost against an undisturbed run of the same jobs.

Run by hand (the short version runs in CI as tests/security/test_chaos.py):

    hqVE/bin/python benchmarks/chaos.py                     # 10,000 jobs, MariaDB, 3 kills each
    hqVE/bin/python benchmarks/chaos.py --jobs 2000 --backend sqlite --kills 2 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from fixtures.chaos import ROLES, run_jobs_through_chaos  # noqa: E402
from hqbench import Database, say, scratch  # noqa: E402

SERVER_CFG = ("[server]\nheartbeat_interval = 1\nheartbeat_timeout = 5\nlease = 10\n"
              "lease_grace = 3\n[scheduler]\nload_factor = 100\n")


def restart_mariadb(server) -> None:  # type: ignore[no-untyped-def]
    """Stop the private MariaDB server cleanly and start it again on the same data."""
    import os
    import signal

    from fixtures.mariadb import MARIADBD, _wait_until_answering

    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(server.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    user = ["--user=mysql"] if os.getuid() == 0 else []
    proc = subprocess.Popen([str(MARIADBD), f"--defaults-file={server.defaults_file}", *user],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_until_answering(proc, server.socket, server.admin_user,
                          server.base / "run" / "mariadbd.err")
    object.__setattr__(server, "pid", proc.pid)   # (frozen: its owner stops it by this pid)
    RESTARTED.append(proc)


RESTARTED: list[subprocess.Popen[bytes]] = []


def one(db: Database, jobs: int, kills: int, chaos: bool, seed: int) -> dict[str, object]:
    with scratch(db, keep=False, label="chaos") as inst:
        inst.create()
        inst.run("hq.cli.client", "status")
        restart = None
        if chaos and db.server is not None:
            restart = lambda: restart_mariadb(db.server)  # noqa: E731
        result = run_jobs_through_chaos(
            lambda *a, **k: inst.run(*a, check=False, **k), inst.processes, inst.work,
            jobs=jobs, kills={role: kills if chaos else 0 for role in ROLES},
            span_s=max(10.0, jobs / 150), seed=seed, timeout_s=max(600.0, jobs / 5),
            restart_database=restart)
        return result.as_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--backend", choices=("sqlite", "mariadb"), default="mariadb")
    parser.add_argument("--kills", type=int, default=3, help="kills of each daemon")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        server = None
        if args.backend == "mariadb":
            from fixtures.mariadb import private_mariadb

            server = stack.enter_context(private_mariadb())
        db = Database(args.backend, server, SERVER_CFG)
        undisturbed = one(db, args.jobs, args.kills, chaos=False, seed=args.seed)
        disturbed = one(db, args.jobs, args.kills, chaos=True, seed=args.seed)
        for proc in RESTARTED:   # the restarted servers are ours to stop
            proc.terminate()
            proc.wait(60)
    report = {"backend": args.backend, "jobs": args.jobs, "undisturbed": undisturbed,
              "chaos": disturbed,
              "time_lost_s": round(float(disturbed["elapsed_s"])  # type: ignore[arg-type]
                                   - float(undisturbed["elapsed_s"]), 2)}  # type: ignore
    if args.json:
        print(json.dumps(report))
    else:
        say(f"chaos on {args.backend}, {args.jobs} jobs: kills {disturbed['kills']}")
        for key in ("lost", "run_twice", "rows_disagreeing", "not_done", "unknown_end"):
            say(f"  {key:18} {disturbed[key]}")
        for job_id, state, reason in disturbed["not_done_jobs"]:  # type: ignore[attr-defined]
            say(f"    job {job_id}: {state}: {reason}")
        say(f"  time: {disturbed['elapsed_s']} s against {undisturbed['elapsed_s']} s "
            f"undisturbed ({report['time_lost_s']} s lost)")
    bad = any(disturbed[k] for k in ("lost", "run_twice", "rows_disagreeing", "not_done"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

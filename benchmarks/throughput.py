"""Whole-system throughput: N ``true`` jobs through hq against ``xargs -P <cores>`` (DESIGN §7).

Run by hand, never by CI:

    hqVE/bin/python benchmarks/throughput.py [--jobs 10000] [--runs 3] [--backend both]
    hqVE/bin/python benchmarks/throughput.py --jobs 2000 --runs 1 --backend both   # quick
    hqVE/bin/python benchmarks/throughput.py --profile py-spy --profile-dir /tmp/prof
    hqVE/bin/python benchmarks/throughput.py --jobs 2000 --runs 1 --backend sqlite \
        --peer hyperqueue --json > result.json

Each measurement gets a fresh scratch installation in a temporary directory: etc/cluster.tab
with ``localhost`` and ``$(nproc)`` cores, etc/users with the invoking account as admin,
``hq-dbadmin -C -a``, ``hq-server --daemon``, and HOME set to a temporary directory so that
~/.hq (signing key, logs) is private to the run. ``hq-client status`` then starts the user's
hq-user-server (not timed: any earlier hq command would have started it); the exec-server is
started by the first dispatch, inside the timed span.

Timed span: from launching ``hq-submit --json -f jobs.txt`` (one jobs file, N lines
``command::true``) to the exit of ``hq-client wait FIRST-LAST`` (started right after
hq-submit returned; it exits 0 once every job is ``done``). hq-submit's own wall time is
reported separately. Two hq figures per run:

- ``/dev/null``: every line also says ``stdout::/dev/null<TAB>stderr::/dev/null``;
- ``files``: the default output files (``hq-%j.out``/``hq-%j.err``, 2N files) in a temporary
  submit directory.

Baseline, measured in the same run: ``seq N | xargs -P <cores> -n 1 true``. Per run the order
is baseline, /dev/null, files; each backend gets --runs runs and the report shows medians (and
min-max) of the times and the median of the per-run ratios hq / baseline. After each hq
measurement, before the daemons are stopped, their CPU seconds (user+system, from psutil) are
read: hq-server, hq-user-server, hq-exec-server (and its reaped jobs), the bridge; and
hq-server's RSS (psutil) just before hq-submit starts and right after hq-client wait returns.

``--json``: stdout gets one JSON object and nothing else (file descriptor 1 points to stderr
during the runs, so progress, the human report and any child's output go there): the machine
(cpu_count, python, host, load1 at the start), the commit measured (``code``: work tree or
--rev, and whether hq/ had uncommitted changes), the settings, and per backend the xargs times
and for ``devnull`` and ``files``: the times and their median, the per-run ratios to xargs
and their median, hq-submit's wall time, hq-server's CPU µs per job (median over runs of its
CPU seconds in the span / N), each role's CPU seconds (medians) and hq-server's RSS before
and after each measurement; with --peer, ``peers.hyperqueue`` likewise. Without --json the
output is the human report on stdout.

``--peer hyperqueue``: HyperQueue 0.27 on the same N ``/bin/true`` tasks with no output, as
the fourth measurement of each run (xargs, hq /dev/null, hq files, hyperqueue), in the runs of
the first backend only (sqlite unless --backend mariadb): it has no database. Its server and a
``$(nproc)``-core worker run as separate processes from the ``hyperqueue`` PyPI wheel in a
scratch virtualenv (``--hq-venv``, created if it lacks hyperqueue 0.27.0; never a dependency
of hq), timed from ``submit_job`` until staggered waiters saw the job complete; the method is
in hyperqueue_peer.py's docstring. Reported: its times, ratio to the same run's xargs,
tasks/s, server CPU µs per task, worker and task CPU seconds, server RSS.

MariaDB: a private server from Debian's binaries, started once per invocation the way
tests/fixtures/mariadb.py does (its ``private_mariadb`` is reused), with a fresh database per
measurement, reached as the invoking account through the unix socket.

``--profile py-spy|cprofile`` instead runs one SQLite round of --jobs (devnull outputs) with the
daemons profiled, and prints the top functions by cumulative and by self time for each:
py-spy (a sampling profiler, ``pip install py-spy``; ``--py-spy PATH``) is attached to the
running daemons after a one-job warm-up; cprofile starts hq-server, the user-server and the
exec-server in the foreground under ``python -m cProfile`` and stops them with SIGTERM (cProfile
sees only each daemon's main thread, not hq-server's database writer thread; it gives call
counts, py-spy gives times with little overhead). ``--tables DIR`` prints the tables again.
Profiles use the same defaults as a measurement; ``--set scheduler.load_factor=100`` keeps the
load rule from throttling dispatch while the profilers themselves load the machine.

Every process the script started is stopped at the end (the installation's processes are
found by their HQPATH environment variable, as tests/fixtures/running_hq.py does; HyperQueue's
by the pids of the processes it started), and the temporary directories are removed unless
--keep is given (the --hq-venv virtualenv is kept for the next run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hyperqueue_peer  # noqa: E402
from hqbench import (  # noqa: E402
    CORES,
    DAEMONS,
    Database,
    HqTimes,
    Run,
    attempts,
    one_run,
    say,
    server_cfg_text,
)

# --------------------------------------------------------------------------- report

def spread(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:8.2f} s"
    return f"{med:8.2f} s  [{min(values):.2f}-{max(values):.2f}]"


def report(backend: str, count: int, runs: list[Run]) -> None:
    base = [r.baseline_s for r in runs]
    say(f"\n== {backend}: {count} x true, {CORES} cores, {len(runs)} run(s); "
        f"medians [min-max]")
    say(f"  {f'xargs -P {CORES} -n 1 true':<34}{spread(base)}   "
        f"{count / statistics.median(base):7.0f} jobs/s")
    for kind in ("devnull", "files"):
        times = [getattr(r, kind) for r in runs]
        totals = [t.total_s for t in times]
        ratios = [t.total_s / r.baseline_s for t, r in zip(times, runs, strict=True)]
        name = "/dev/null" if kind == "devnull" else "output files"
        say(f"  {'hq submit -> all done, ' + name:<34}{spread(totals)}   "
            f"{count / statistics.median(totals):7.0f} jobs/s   ratio to xargs "
            f"{statistics.median(ratios):.2f}"
            + (f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else ""))
        say(f"  {'  of which hq-submit (wall)':<34}{spread([t.submit_s for t in times])}")
        roles = [*DAEMONS, "jobs", "clients"] + (["mariadbd"] if backend == "mariadb" else [])
        cpu = {role: statistics.median([t.cpu.get(role, 0.0) for t in times]) for role in roles}
        machine = statistics.median([t.cpu.get("machine", 0.0) for t in times])
        say("    CPU s in the span (median): "
            + ", ".join(f"{role} {cpu[role]:.1f}" for role in roles)
            + f"; sum {sum(cpu.values()):.1f}; whole machine busy {machine:.1f} of "
              f"{CORES * statistics.median(totals):.1f} available; load1 at submit "
            + "/".join(f"{t.load1:.1f}" for t in times))
    say(f"    baseline CPU s (median): xargs+jobs "
        f"{statistics.median([r.baseline_cpu_s for r in runs]):.1f}, whole machine busy "
        f"{statistics.median([r.baseline_machine_s for r in runs]):.1f} of "
        f"{CORES * statistics.median(base):.1f} available")


def report_peer(backend: str, count: int, runs: list[Run]) -> None:
    """The block of --peer hyperqueue (measured in ``backend``'s runs, after hq's two)."""
    peers: list[hyperqueue_peer.PeerTimes] = [r.peer for r in runs]  # type: ignore[misc]
    totals = [p.total_s for p in peers]
    ratios = [p.total_s / r.baseline_s for p, r in zip(peers, runs, strict=True)]
    med = statistics.median(totals)
    say(f"\n== hyperqueue {hyperqueue_peer.VERSION} (PyPI wheel: a server and a "
        f"{peers[0].cores}-core worker process): {count} x /bin/true, no output, in the "
        f"{backend} runs; medians [min-max]")
    say(f"  {'hyperqueue submit -> all done':<34}{spread(totals)}   "
        f"{count / med:7.0f} tasks/s  ratio to xargs {statistics.median(ratios):.2f}"
        + (f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else ""))
    say(f"  {'  of which submit_job (wall)':<34}{spread([p.submit_s for p in peers])}   "
        f"(building the Job in Python, before the clock: "
        f"{statistics.median([p.build_s for p in peers]):.2f} s)")
    server = statistics.median([p.server_cpu_s for p in peers])
    say(f"    CPU s in the span (median): server {server:.1f} "
        f"({statistics.median([p.server_cpu_s / count * 1e6 for p in peers]):.0f} µs per "
        f"task), worker {statistics.median([p.worker_cpu_s for p in peers]):.1f}, tasks "
        f"{statistics.median([p.tasks_cpu_s for p in peers]):.1f}; whole machine busy "
        f"{statistics.median([p.machine_s for p in peers]):.1f} of {CORES * med:.1f} "
        f"available; load1 at submit " + "/".join(f"{p.load1:.1f}" for p in peers))
    say("    server RSS MiB before/after: "
        + ", ".join(f"{p.server_rss_before / 2**20:.1f}/{p.server_rss_after / 2**20:.1f}"
                    for p in peers))


def measure(args: argparse.Namespace, code: dict[str, object]) -> dict[str, object]:
    """The runs, their report, and the summary that --json prints."""
    backends = ["sqlite", "mariadb"] if args.backend == "both" else [args.backend]
    load1_at_start = os.getloadavg()[0]
    say(f"hq throughput benchmark: {args.jobs} jobs, {args.runs} run(s) per backend, "
        f"{CORES} cores, python {sys.version.split()[0]}, host {socket.gethostname()}")
    if args.set:
        say("  etc/hq-server.cfg: " + "; ".join(args.set))
    peer_python = (hyperqueue_peer.ensure_venv(Path(args.hq_venv), say)
                   if args.peer == "hyperqueue" else None)
    peer_backend = backends[0]  # the peer has no database: measured in one backend's runs
    results: dict[str, list[Run]] = {}
    with contextlib.ExitStack() as stack:
        for backend in backends:
            db = Database(backend, server_cfg=server_cfg_text(args.set))
            if backend == "mariadb":
                db.server = stack.enter_context(start_mariadb())
            results[backend] = []
            for number in range(1, args.runs + 1):
                run = one_run(db, args.jobs, args.keep)
                if peer_python is not None and backend == peer_backend:
                    run.peer = attempts("hyperqueue", hyperqueue_peer.measure, peer_python,
                                        args.jobs, args.keep, CORES)
                results[backend].append(run)
                say(f"  {backend} run {number}: xargs {run.baseline_s:.2f} s, "
                    f"load1 {run.devnull.load1:.1f}/{run.files.load1:.1f}, "
                    f"hq /dev/null {run.devnull.total_s:.2f} s (submit "
                    f"{run.devnull.submit_s:.2f} s), hq files {run.files.total_s:.2f} s "
                    f"(submit {run.files.submit_s:.2f} s)"
                    + (f", hyperqueue {run.peer.total_s:.2f} s"  # type: ignore[attr-defined]
                       if run.peer is not None else ""))
    for backend in backends:
        report(backend, args.jobs, results[backend])
        if peer_python is not None and backend == peer_backend:
            report_peer(backend, args.jobs, results[backend])
    summary: dict[str, object] = {
        "benchmark": "hq throughput (benchmarks/throughput.py)",
        "jobs": args.jobs,
        "runs": args.runs,
        "cpu_count": CORES,
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "load1_at_start": load1_at_start,
        "commit": code["commit"],
        "code": code,
        "settings": args.set,
        "backends": {backend: backend_summary(backend, args.jobs, results[backend])
                     for backend in backends},
    }
    if peer_python is not None:
        summary["peers"] = {"hyperqueue": peer_summary(
            peer_backend, args.jobs, results[peer_backend], Path(args.hq_venv))}
    return summary


# --------------------------------------------------------------------------- --json

def xargs_summary(runs: list[Run]) -> dict[str, object]:
    times = [r.baseline_s for r in runs]
    return {"command": f"seq N | xargs -P {CORES} -n 1 true", "times_s": times,
            "median_s": statistics.median(times),
            "cpu_s_median": statistics.median([r.baseline_cpu_s for r in runs]),
            "machine_busy_s_median": statistics.median([r.baseline_machine_s for r in runs])}


def hq_summary(backend: str, count: int, runs: list[Run], kind: str) -> dict[str, object]:
    times: list[HqTimes] = [getattr(r, kind) for r in runs]
    totals = [t.total_s for t in times]
    ratios = [t.total_s / r.baseline_s for t, r in zip(times, runs, strict=True)]
    roles = [*DAEMONS, "jobs", "clients"] + (["mariadbd"] if backend == "mariadb" else [])
    submits = [t.submit_s for t in times]
    return {
        "times_s": totals,
        "median_s": statistics.median(totals),
        "jobs_per_s": count / statistics.median(totals),
        "ratios_to_xargs": ratios,
        "ratio_to_xargs_median": statistics.median(ratios),
        "submit_wall_s": submits,
        "submit_wall_median_s": statistics.median(submits),
        "hq_server_cpu_us_per_job": statistics.median([t.cpu.get("hq-server", 0.0) / count * 1e6
                                             for t in times]),
        "cpu_s_median": {role: statistics.median([t.cpu.get(role, 0.0) for t in times])
                         for role in [*roles, "machine"]},
        "hq_server_rss_bytes": [{"before": t.rss_before, "after": t.rss_after}
                                for t in times],
        "load1_at_submit": [t.load1 for t in times],
    }


def backend_summary(backend: str, count: int, runs: list[Run]) -> dict[str, object]:
    return {"xargs": xargs_summary(runs),
            **{kind: hq_summary(backend, count, runs, kind) for kind in ("devnull", "files")}}


def peer_summary(backend: str, count: int, runs: list[Run], venv: Path) -> dict[str, object]:
    peers: list[hyperqueue_peer.PeerTimes] = [r.peer for r in runs]  # type: ignore[misc]
    totals = [p.total_s for p in peers]
    ratios = [p.total_s / r.baseline_s for p, r in zip(peers, runs, strict=True)]
    return {
        "version": hyperqueue_peer.VERSION,
        "venv": str(venv),
        "measured_in": f"{backend} runs, after hq's two measurements",
        "variant": "devnull (stdout=None, stderr=None)",
        "worker_cores": peers[0].cores,
        "waiters": hyperqueue_peer.WAITERS,
        "times_s": totals,
        "median_s": statistics.median(totals),
        "tasks_per_s": count / statistics.median(totals),
        "ratios_to_xargs": ratios,
        "ratio_to_xargs_median": statistics.median(ratios),
        "submit_call_s": [p.submit_s for p in peers],
        "build_s_median": statistics.median([p.build_s for p in peers]),
        "server_cpu_us_per_task": statistics.median([p.server_cpu_s / count * 1e6 for p in peers]),
        "worker_cpu_s_median": statistics.median([p.worker_cpu_s for p in peers]),
        "cpu_s_median": {"server": statistics.median([p.server_cpu_s for p in peers]),
                         "worker": statistics.median([p.worker_cpu_s for p in peers]),
                         "tasks": statistics.median([p.tasks_cpu_s for p in peers]),
                         "machine": statistics.median([p.machine_s for p in peers])},
        "server_rss_bytes": [{"before": p.server_rss_before, "after": p.server_rss_after}
                             for p in peers],
        "load1_at_submit": [p.load1 for p in peers],
    }


def rounded(value: object) -> object:
    """``value`` with every float rounded to 4 decimals (CPU times have 10 ms resolution)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[object]:
    """For --json: file descriptor 1 goes to stderr meanwhile (progress, reports, and whatever
    a child process writes), and the yielded file is the real stdout, for the JSON alone."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(real), "w") as out:
            yield out
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


@contextlib.contextmanager
def start_mariadb() -> Iterator[object]:
    """A private MariaDB server for this invocation (tests/fixtures/mariadb.py's code)."""
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.mariadb import INSTALL_DB, MARIADBD, private_mariadb

    for binary in (MARIADBD, INSTALL_DB):
        if not binary.exists():
            raise SystemExit(f"{binary} is missing: install Debian's mariadb-server "
                             "(as root: scripts/install-system-deps.sh mariadb)")
    if os.getuid() == 0:
        os.environ.setdefault("HQ_DB_OSUSER", "mysql")
    with private_mariadb() as server:
        say(f"  private MariaDB: pid {server.pid}, socket {server.socket}")
        yield server


# --------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs per backend (medians)")
    parser.add_argument("--backend", choices=("sqlite", "mariadb", "both"), default="both")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch installations (logs, database, outputs) in "
                             "/tmp; the private MariaDB is always removed")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for etc/hq-server.cfg of every installation, e.g. "
                             "scheduler.load_factor=100 or server.db_flush_interval=0.001 "
                             "(repeatable; default: no such file, hq's defaults)")
    parser.add_argument("--rev", metavar="COMMIT",
                        help="run hq/ as of this commit (e.g. HEAD), not the work tree, which "
                             "others may edit during a long run")
    parser.add_argument("--profile", choices=("py-spy", "cprofile"),
                        help="instead: one profiled SQLite round (see the module docstring)")
    parser.add_argument("--profile-dir", help="where profiles go (default: a new /tmp dir)")
    parser.add_argument("--py-spy", help="path of py-spy (default: from PATH)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--tables", metavar="DIR",
                        help="only print the tables of the profiles in DIR (an earlier "
                             "--profile-dir)")
    parser.add_argument("--top", type=int, default=15, help="rows per profile table")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (medians, per-run ratios, CPU, RSS, the "
                             "machine and the commit) on stdout; everything else on stderr")
    parser.add_argument("--peer", choices=("hyperqueue",),
                        help="also measure HyperQueue 0.27 on the same N /bin/true tasks, no "
                             "output, in each run of the first backend (see "
                             "hyperqueue_peer.py)")
    parser.add_argument("--hq-venv", default=str(hyperqueue_peer.DEFAULT_VENV), metavar="PATH",
                        help="scratch virtualenv with hyperqueue for --peer (created with "
                             "python3 -m venv + pip install hyperqueue==0.27.0 if it lacks it; "
                             "default %(default)s)")
    args = parser.parse_args()
    if args.jobs < 1 or args.runs < 1:
        parser.error("--jobs and --runs must be positive")
    if (args.json or args.peer) and (args.profile or args.tables):
        parser.error("--json and --peer are for measurements, not --profile or --tables")
    if args.tables:
        from profiling import print_tables

        print_tables(Path(args.tables), args)
        return 0
    if args.json:
        with stdout_to_stderr() as out:
            with pinned_code(args.rev) as code:
                summary = measure(args, code)
            json.dump(rounded(summary), out, indent=2)
            out.write("\n")
        return 0
    with pinned_code(args.rev) as code:
        if args.profile:
            from profiling import profile

            return profile(args)
        measure(args, code)
        return 0


@contextlib.contextmanager
def pinned_code(rev: str | None) -> Iterator[dict[str, object]]:
    """With ``rev``: every hq program runs hq/ as of that commit (``git archive`` into a
    temporary directory put first on PYTHONPATH), so edits in the work tree during a long run
    change nothing. Without: the work tree as it is, while it is. Yields what was measured
    (for --json): the commit, and whether hq/ had uncommitted changes at the start."""
    if rev is None:
        dirty = bool(_git("status", "--porcelain", "hq"))
        say(f"  code: work tree {REPO} (git HEAD {_git('rev-parse', '--short', 'HEAD')}"
            + (", with uncommitted changes in hq/)" if dirty else ")"))
        yield {"commit": _git("rev-parse", "HEAD"), "source": "work tree",
               "uncommitted_changes_in_hq": dirty}
        return
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = Path(tempfile.mkdtemp(prefix="hq-bench-code-", dir="/tmp"))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "hq"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(tree) + (f":{old}" if old else "")
        say(f"  code: hq/ as of commit {commit[:12]} ({tree})")
        yield {"commit": commit, "source": f"git archive of --rev {rev}",
               "uncommitted_changes_in_hq": False}
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())

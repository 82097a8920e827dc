"""Whole-system throughput: N ``true`` jobs through hq against ``xargs -P <cores>`` (DESIGN §7).

Run by hand, never by CI:

    hqVE/bin/python benchmarks/throughput.py [--jobs 10000] [--runs 3] [--backend both]
    hqVE/bin/python benchmarks/throughput.py --jobs 2000 --runs 1 --backend both   # quick
    hqVE/bin/python benchmarks/throughput.py --profile py-spy --profile-dir /tmp/prof

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
read: hq-server, hq-user-server, hq-exec-server (and its reaped jobs), the bridge.

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
found by their HQPATH environment variable, as tests/fixtures/running_hq.py does), and the
temporary directories are removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import contextlib
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

from hqbench import (  # noqa: E402
    CORES,
    DAEMONS,
    Database,
    Run,
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


def measure(args: argparse.Namespace) -> int:
    backends = ["sqlite", "mariadb"] if args.backend == "both" else [args.backend]
    say(f"hq throughput benchmark: {args.jobs} jobs, {args.runs} run(s) per backend, "
        f"{CORES} cores, python {sys.version.split()[0]}, host {socket.gethostname()}")
    if args.set:
        say("  etc/hq-server.cfg: " + "; ".join(args.set))
    results: dict[str, list[Run]] = {}
    with contextlib.ExitStack() as stack:
        for backend in backends:
            db = Database(backend, server_cfg=server_cfg_text(args.set))
            if backend == "mariadb":
                db.server = stack.enter_context(start_mariadb())
            results[backend] = []
            for number in range(1, args.runs + 1):
                run = one_run(db, args.jobs, args.keep)
                results[backend].append(run)
                say(f"  {backend} run {number}: xargs {run.baseline_s:.2f} s, "
                    f"load1 {run.devnull.load1:.1f}/{run.files.load1:.1f}, "
                    f"hq /dev/null {run.devnull.total_s:.2f} s (submit "
                    f"{run.devnull.submit_s:.2f} s), hq files {run.files.total_s:.2f} s "
                    f"(submit {run.files.submit_s:.2f} s)")
    for backend in backends:
        report(backend, args.jobs, results[backend])
    return 0


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
    args = parser.parse_args()
    if args.jobs < 1 or args.runs < 1:
        parser.error("--jobs and --runs must be positive")
    if args.tables:
        from profiling import print_tables

        print_tables(Path(args.tables), args)
        return 0
    with pinned_code(args.rev):
        if args.profile:
            from profiling import profile

            return profile(args)
        return measure(args)


@contextlib.contextmanager
def pinned_code(rev: str | None) -> Iterator[None]:
    """With ``rev``: every hq program runs hq/ as of that commit (``git archive`` into a
    temporary directory put first on PYTHONPATH), so edits in the work tree during a long run
    change nothing. Without: the work tree as it is, while it is."""
    if rev is None:
        say(f"  code: work tree {REPO} (git HEAD {_git('rev-parse', '--short', 'HEAD')}"
            + (", with uncommitted changes in hq/)" if _git("status", "--porcelain", "hq")
               else ")"))
        yield
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
        yield
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

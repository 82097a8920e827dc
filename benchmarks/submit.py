"""Submitting: a big jobs file, the answers of status and jobs beside it, and one small job.

Run by hand, never by CI:

    hqVE/bin/python benchmarks/submit.py [--jobs 100000] [--runs 3] [--backend sqlite] [--json]
    hqVE/bin/python benchmarks/submit.py --jobs 1000000 --runs 1      # the 1M-line jobs file

Per run, a fresh scratch installation (benchmarks/hqbench.py) and, in the same run:

- ``hq-submit --hold -f FILE`` of --jobs lines ``command::true`` (held: nothing runs, so the
  figure is the submission alone, streamed in parts above 10,000 jobs), its wall time against
  the baseline of reading and parsing the same file in this process (``str.split``), and
  hq-server's RSS before and after (bytes per pending job);
- ``hq-submit --hold --array 1-N true`` with N = --jobs: the same number of jobs as one array,
  signed once as a whole and laid out into its elements by hq-server;
- ``hq-client status`` and ``hq-client jobs --limit 20`` with those jobs pending;
- ``hq-submit "true"`` with a warm user-server, --calls times (median), against
  ``python -c pass`` and ``python -c "import hq.cli.submit"`` (the interpreter's start and
  the imports, which hq cannot go below).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hqbench import PY, Database, figure_runs, rss, say, scratch


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                            check=False, timeout=3600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {result.returncode}: "
                           f"{result.stderr.strip()[-400:]}")
    return elapsed


def one_run(db: Database, count: int, calls: int) -> dict[str, float]:
    with scratch(db, False, "submit") as inst:
        inst.create()
        inst.run("hq.cli.client", "status")        # the user-server, warm
        env, work = inst.env(), inst.work
        jobs_file = inst.base / "jobs.txt"
        jobs_file.write_text("command::true\n" * count)
        start = time.perf_counter()
        lines = [line.split("::", 1) for line in jobs_file.read_text().splitlines()]
        parse_s = time.perf_counter() - start
        assert len(lines) == count
        server = inst.daemons()["hq-server"]
        rss_before = rss(server)
        submit_s = timed([PY, "-m", "hq.cli.submit", "--hold", "-q", "-f", str(jobs_file)],
                         env, work)
        time.sleep(2.0)   # (hq-server gives a burst's memory back a moment after)
        rss_after = rss(server)
        # the same number of jobs as one --array: signed once, laid out by hq-server
        array_s = timed([PY, "-m", "hq.cli.submit", "--hold", "-q", "--array",
                         f"1-{count}", "true"], env, work)
        status_s = timed([PY, "-m", "hq.cli.client", "status"], env, work)
        jobs_s = timed([PY, "-m", "hq.cli.client", "jobs", "--limit", "20"], env, work)
        small = [timed([PY, "-m", "hq.cli.submit", "-q", "true"], env, work)
                 for _ in range(calls)]
        python = [timed([PY, "-c", "pass"], env, work) for _ in range(calls)]
        imports = [timed([PY, "-c", "import hq.cli.submit"], env, work) for _ in range(calls)]
    return {"submit_s": submit_s, "array_submit_s": array_s, "parse_baseline_s": parse_s,
            "rss_before": rss_before or 0, "rss_after": rss_after or 0,
            "bytes_per_pending_job": ((rss_after or 0) - (rss_before or 0)) / count,
            "status_s": status_s, "jobs_limit_20_s": jobs_s,
            "small_submit_s": statistics.median(small), "python_start_s": statistics.median(python),
            "import_submit_s": statistics.median(imports)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20, help="small hq-submit calls per run")
    parser.add_argument("--backend", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    runs, med = figure_runs(
        args.backend, args.runs, lambda db: one_run(db, args.jobs, args.calls),
        lambda r: f"submit {r['submit_s']:.2f} s, status {r['status_s']:.3f} s, jobs "
                  f"{r['jobs_limit_20_s']:.3f} s, small submit {r['small_submit_s'] * 1000:.0f} ms")
    summary = {"jobs": args.jobs, "runs": len(runs), "backend": args.backend,
               "cpu_count": os.cpu_count(), "medians": med, "per_run": runs,
               "submit_ratio_to_parse": med["submit_s"] / max(med["parse_baseline_s"], 1e-9),
               "small_submit_ratio_to_python_start":
                   med["small_submit_s"] / max(med["python_start_s"], 1e-9)}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    say(f"== {args.backend}: {args.jobs:,} held jobs in one jobs file, {len(runs)} run(s), "
        "medians")
    say(f"  hq-submit -f                  {med['submit_s']:8.2f} s   "
        f"({args.jobs / med['submit_s']:,.0f} jobs/s; reading+splitting the file here: "
        f"{med['parse_baseline_s']:.2f} s, ratio {summary['submit_ratio_to_parse']:.0f})")
    say(f"  hq-submit --array 1-{args.jobs:<9}{med['array_submit_s']:8.2f} s   "
        f"({args.jobs / med['array_submit_s']:,.0f} jobs/s; the same jobs as one array)")
    say(f"  hq-server RSS per pending job {med['bytes_per_pending_job']:8.0f} bytes "
        f"({med['rss_before'] / 2**20:.0f} -> {med['rss_after'] / 2**20:.0f} MiB)")
    say(f"  hq-client status              {med['status_s'] * 1000:8.0f} ms")
    say(f"  hq-client jobs --limit 20     {med['jobs_limit_20_s'] * 1000:8.0f} ms")
    say(f"  hq-submit true (warm)         {med['small_submit_s'] * 1000:8.0f} ms   "
        f"(python -c pass {med['python_start_s'] * 1000:.0f} ms, import hq.cli.submit "
        f"{med['import_submit_s'] * 1000:.0f} ms; ratio to python start "
        f"{summary['small_submit_ratio_to_python_start']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

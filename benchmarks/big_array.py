"""A big array: how long hq-submit waits for it, and how long until every element is stored.

Per run, a fresh scratch installation (benchmarks/hqbench.py) whose cluster is deactivated
(``hq-admin deactivate``: jobs wait in the queues and none runs), and in the same run:
- ``hq-submit --array 1-N true``: the time until it answers with the ids. By then the
  array is accepted and durable: its submission row and its first elements (hq.server.layout)
  have committed;
- right after the answer, one more job (its id comes after the array's, so every batch
  stored later goes into a queue whose last job is newer), then ``hq-client status``
  and the folded ``hq-client jobs``, which count the elements not stored yet;
- ``hq-client show`` of the last element, which waits until every element is stored: the
  time from the submit's start to its answer is the time until the array is laid out;
- once it is stored, one look of ``hq-client progress`` (the array's counts by state,
  ``hq.api.Client.array_counts``: median of 5) beside what a look cost before it had a
  request of its own, listing every element (``Client.jobs(array=...)``; up to 200,000);
- the baseline: ``hq-submit --hold true``, one job, in the same installation, before.

    hqVE/bin/python benchmarks/big_array.py --jobs 1000000 --runs 3 [--backend mariadb] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hqbench import PY, Database, figure_runs, say, scratch
from submit import timed

LOOKS = r"""
import json, statistics, sys, time
from hq.api import Client
array, listing = int(sys.argv[1]), sys.argv[2] == "yes"
with Client() as hq:
    looks = []
    for _ in range(5):
        start = time.perf_counter()
        counts = hq.array_counts(array)
        looks.append(time.perf_counter() - start)
    figures = {"counts_look_s": statistics.median(looks), "counts": counts}
    if listing:
        start = time.perf_counter()
        figures["listed_jobs"] = len(hq.jobs(array=array))
        figures["listing_look_s"] = time.perf_counter() - start
print(json.dumps(figures))
"""
CONFIG = "[scheduler]\nmax_jobs_per_submission = {n}\nmax_queued_per_user = {n}\n"


def one_run(db: Database, count: int) -> dict[str, float]:
    with scratch(db, False, "big-array") as inst:
        config = inst.root / "etc" / "hq-server.cfg"
        config.write_text((db.server_cfg or "") + CONFIG.format(n=count + 10))
        inst.create()
        # nothing runs: the array stays pending, in the queues, as a big one does at first
        inst.run("hq.cli.admin", "deactivate")
        inst.run("hq.cli.client", "status")        # the user-server, warm
        env, work = inst.env(), inst.work
        one_s = timed([PY, "-m", "hq.cli.submit", "--hold", "-q", "true"], env, work)
        start = time.perf_counter()
        submit_s = timed([PY, "-m", "hq.cli.submit", "-q", "--array", f"1-{count}", "true"],
                         env, work)
        # a job submitted while the array is stored queues behind none of it: each stored
        # batch then goes into a queue whose last job is newer (kept in order, not sorted)
        during_s = timed([PY, "-m", "hq.cli.submit", "-q", "true"], env, work)
        status_s = timed([PY, "-m", "hq.cli.client", "status"], env, work)
        jobs_s = timed([PY, "-m", "hq.cli.client", "jobs"], env, work)
        while True:   # answered "still being stored" after 20 s
            last = inst.run("hq.cli.client", "show", "--json", str(count + 1), check=False)
            if last.returncode == 0 or "still being stored" not in last.stderr:
                break
        laid_out_s = time.perf_counter() - start
        if last.returncode != 0:
            raise RuntimeError(f"hq-client show {count + 1}: {last.stderr.strip()}")
        job = json.loads(last.stdout)["job"]
        if (job["array_index"], job["state"]) != (count, "pending"):
            raise RuntimeError(f"the last element is not index {count}, pending: {job}")
        looked = subprocess.run([PY, "-c", LOOKS, "2", "yes" if count <= 200_000 else "no"],
                                env=env, cwd=work, capture_output=True, text=True,
                                timeout=600, check=True)
        looks = json.loads(looked.stdout)
        if looks["counts"] != {"pending": count}:
            raise RuntimeError(f"array 2 counted {looks['counts']}, not {count:,} pending")
    figures = {"one_job_submit_s": one_s, "array_submit_s": submit_s,
               "one_job_during_layout_s": during_s, "status_s": status_s,
               "jobs_folded_s": jobs_s, "laid_out_s": laid_out_s,
               "progress_look_s": looks["counts_look_s"]}
    if "listing_look_s" in looks:
        figures["listing_look_s"] = looks["listing_look_s"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    runs, med = figure_runs(
        args.backend, args.runs, lambda db: one_run(db, args.jobs),
        lambda r: f"submit {r['array_submit_s']:.2f} s, laid out {r['laid_out_s']:.1f} s")
    summary = {"jobs": args.jobs, "runs": len(runs), "backend": args.backend,
               "cpu_count": os.cpu_count(), "medians": med, "per_run": runs,
               "submit_ratio_to_one_job": med["array_submit_s"] / med["one_job_submit_s"]}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    say(f"== {args.backend}: one pending array of {args.jobs:,}, {len(runs)} run(s), medians")
    say(f"  hq-submit --array 1-{args.jobs:<10}{med['array_submit_s']:8.2f} s   (one job: "
        f"{med['one_job_submit_s']:.2f} s, ratio {summary['submit_ratio_to_one_job']:.1f})")
    say(f"  hq-submit of one job meanwhile {med['one_job_during_layout_s']:6.2f} s")
    say(f"  hq-client status after it    {med['status_s']:8.2f} s")
    say(f"  hq-client jobs (folded)      {med['jobs_folded_s']:8.2f} s")
    say(f"  every element stored after   {med['laid_out_s']:8.1f} s   "
        f"({args.jobs / med['laid_out_s']:,.0f} elements/s)")
    say(f"  hq-client progress, a look   {med['progress_look_s'] * 1000:8.2f} ms"
        + (f"   (listing every element: {med['listing_look_s']:.2f} s)"
           if "listing_look_s" in med else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

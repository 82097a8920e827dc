"""Start-up time of hq's programs in each form: the virtualenv's Python, PyInstaller onedir and
onefile, and a zipapp (scripts/makeFreezedVersion.py builds the last three).

Run by hand, never by CI:

    hqVE/bin/python benchmarks/startup.py [--calls 20] [--json]
    hqVE/bin/python benchmarks/startup.py --dest /tmp/frozen --no-build   # builds already there

Measured per program (``hq-submit --help``, and ``hq-exec-server --help``: it has no
--version), after one warm-up call each (the page cache, onefile's first unpacking): the
median wall time of --calls calls of each form, and its ratio to the virtualenv form measured in
the same run. ``python -c pass`` is printed beside them: no Python form can start faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / "hqVE" / "bin" / "python")
PROGRAMS = {"hq-submit": "hq.cli.submit", "hq-exec-server": "hq.execd.main"}
FORMS = ("venv", "onedir", "onefile", "zipapp")


def build(dest: Path) -> dict[str, float]:
    """Every program in the three frozen forms into dest/<form>/; build seconds per form."""
    took = {}
    for form in FORMS[1:]:
        started = time.monotonic()
        subprocess.run([PY, str(REPO / "scripts" / "makeFreezedVersion.py"), "--programs",
                        ",".join(PROGRAMS), "--form", form, "--dest", str(dest / form)],
                       check=True, stdout=subprocess.DEVNULL)
        took[form] = time.monotonic() - started
    return took


def command(program: str, form: str, dest: Path) -> list[str]:
    if form == "venv":
        return [PY, "-P", "-m", PROGRAMS[program], "--help"]
    if form == "onedir":
        return [str(dest / form / program / program), "--help"]
    if form == "onefile":
        return [str(dest / form / program), "--help"]
    return [PY, "-P", str(dest / form / f"{program}.pyz"), "--help"]


def median_start(argv: list[str], calls: int, env: dict[str, str]) -> float:
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)   # warm-up
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per form (median)")
    parser.add_argument("--dest", type=Path,
                        help="where the builds go (default: a temporary directory)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the builds already in --dest")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    if args.no_build and args.dest is None:
        parser.error("--no-build: give --dest with the builds")
    env = {k: v for k, v in os.environ.items() if k not in ("HQ_VE_PATH",)}
    env["HQPATH"] = str(REPO)
    with tempfile.TemporaryDirectory(prefix="hq-startup-") as tmp:
        dest = (args.dest or Path(tmp)).resolve()
        build_s = {} if args.no_build else build(dest)
        load1 = os.getloadavg()[0]
        python_s = median_start([PY, "-c", "pass"], args.calls, env)
        figures: dict[str, dict[str, float]] = {}
        for program in PROGRAMS:
            figures[program] = {form: median_start(command(program, form, dest), args.calls,
                                                   env) for form in FORMS}
        sizes = {form: sum(f.stat().st_size for f in (dest / form).rglob("*") if f.is_file())
                 for form in FORMS[1:]}
    summary = {"calls": args.calls, "cpu_count": os.cpu_count(), "load1": load1,
               "python_c_pass_s": python_s, "median_s": figures,
               "ratio_to_venv": {p: {f: t / figures[p]["venv"] for f, t in forms.items()}
                                 for p, forms in figures.items()},
               "build_s": build_s, "bytes_per_form_both_programs": sizes}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"== start-up, median of {args.calls} calls (load1 {load1:.1f}; python -c pass "
          f"{python_s * 1000:.0f} ms)")
    for program, forms in figures.items():
        for form, seconds in forms.items():
            ratio = summary["ratio_to_venv"][program][form]
            print(f"  {program} --help  {form:8} {seconds * 1000:6.0f} ms   ratio to venv "
                  f"{ratio:4.2f}")
    if build_s:
        print("  build (both programs): " + ", ".join(f"{f} {s:.0f} s"
                                                     for f, s in build_s.items()))
    print("  size (both programs):  " + ", ".join(f"{f} {b / 2**20:.0f} MiB"
                                                 for f, b in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

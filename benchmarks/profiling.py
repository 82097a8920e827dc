"""Profiling one hq round for throughput.py --profile: py-spy or cProfile on each daemon,
and the tables of top functions (see throughput.py's docstring)."""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hqbench import (  # noqa: E402
    DAEMONS,
    PY,
    Database,
    HqTimes,
    Scratch,
    say,
    scratch,
    server_cfg_text,
    time_hq,
    time_xargs,
)

# --------------------------------------------------------------------------- profiling

def profile(args: argparse.Namespace) -> int:
    out = Path(args.profile_dir or tempfile.mkdtemp(prefix="hq-profile-", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    say(f"profiling one SQLite round of {args.jobs} jobs with {args.profile}; files in {out}")
    baseline = time_xargs(args.jobs)[0]
    say(f"  xargs baseline: {baseline:.2f} s")
    db = Database("sqlite", server_cfg=server_cfg_text(args.set))
    with scratch(db, args.keep, "profile") as inst:
        if args.profile == "py-spy":
            times = profile_py_spy(inst, args, out)
        else:
            times = profile_cprofile(inst, args, out)
    say(f"  profiled round: total {times.total_s:.2f} s (submit {times.submit_s:.2f} s), "
        f"ratio to xargs {times.total_s / baseline:.2f}; CPU s "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(times.cpu.items())))
    print_tables(out, args)
    return 0


def print_tables(out: Path, args: argparse.Namespace) -> None:
    for role in DAEMONS:
        if (path := out / f"{role}.pyspy.txt").exists():
            print_pyspy_tables(role, path, args.top, args.rate)
        if (path := out / f"{role}.prof").exists():
            print_cprofile_tables(role, path, args.top)


def _warm_up(inst: Scratch) -> None:
    """One job, so that the user-server, the bridge and the exec-server all run."""
    inst.run("hq.cli.submit", "--wait", "-q", "-o", "/dev/null", "-O", "/dev/null", "true")


def profile_py_spy(inst: Scratch, args: argparse.Namespace, out: Path) -> HqTimes:
    py_spy = args.py_spy or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: pip install py-spy (e.g. into a temporary venv) "
                         "and pass --py-spy PATH, or use --profile cprofile")
    inst.create()
    _warm_up(inst)
    daemons = inst.daemons()
    spies = []
    for role, proc in daemons.items():
        with open(out / f"{role}.pyspy.log", "w") as log:
            spies.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(proc.pid), "--rate", str(args.rate),
                 "--format", "raw", "--nonblocking", "--threads",
                 "--output", str(out / f"{role}.pyspy.txt")],
                stdout=subprocess.DEVNULL, stderr=log))
    time.sleep(1.0)  # py-spy attaches
    try:
        times = time_hq(inst, args.jobs, devnull=True)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    return times


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if path.exists():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} does not listen on {path}")
        time.sleep(0.05)


def profile_cprofile(inst: Scratch, args: argparse.Namespace, out: Path) -> HqTimes:
    """hq-server, user-server and exec-server in the foreground under cProfile."""
    inst.create(start_server=False)
    env = inst.env()

    def start(role: str, module: str, *extra: str) -> subprocess.Popen[bytes]:
        with open(out / f"{role}.log", "w") as log:
            proc = subprocess.Popen([PY, "-m", "cProfile", "-o", str(out / f"{role}.prof"),
                                     "-m", module, *extra], env=env, cwd="/",
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        inst.foreground.append(proc)
        return proc

    server = start("hq-server", "hq.server.main")
    _wait_for_socket(inst.root / "var" / "run" / "hq-server.sock", server, "hq-server")
    inst.rundir.parent.mkdir(mode=0o700, exist_ok=True)
    inst.rundir.mkdir(mode=0o700, exist_ok=True)
    execd = start("exec-server", "hq.execd.main", "--foreground")
    _wait_for_socket(inst.rundir / f"execd-{socket.gethostname()}.sock", execd, "exec-server")
    userd = start("user-server", "hq.userd.main")
    _wait_for_socket(inst.rundir / "userd.sock", userd, "user-server")
    _warm_up(inst)
    times = time_hq(inst, args.jobs, devnull=True)
    # Stop in this order so that nobody restarts anybody; each writes its profile on exit.
    for proc in (userd, execd, server):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            say(f"  warning: pid {proc.pid} did not stop on SIGTERM: killed, no profile")
            proc.kill()
            proc.wait()
    return times


def _short(path: str) -> str:
    """A module path without its installation prefix: ``hq/server/main.py``, ``json/...``."""
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    if match := re.search(r"/lib/python3\.\d+/", path):
        return path[match.end():]
    if "/hq/" in path:  # the work tree or a --rev copy
        return path[path.rfind("/hq/") + 1:]
    return path


def print_cprofile_tables(role: str, path: Path, top: int) -> None:
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        where = f"{_short(file)}:{line}" if file != "~" else "(builtin)"
        rows.append((f"{where}({func})", ncalls, tottime, cumtime))
    say(f"\n-- {role} (cProfile: {path}) --")
    for title, key in (("cumulative", 3), ("self (tottime)", 2)):
        say(f"  top {top} by {title}:")
        say(f"    {'ncalls':>9} {'tottime':>8} {'cumtime':>8}  function")
        for name, ncalls, tottime, cumtime in sorted(rows, key=lambda r: -r[key])[:top]:
            say(f"    {ncalls:>9} {tottime:8.2f} {cumtime:8.2f}  {name}")
    hq_rows = [r for r in rows if r[0].startswith("hq/")]
    say(f"  top {top} hq/ functions by cumulative:")
    for name, ncalls, tottime, cumtime in sorted(hq_rows, key=lambda r: -r[3])[:top]:
        say(f"    {ncalls:>9} {tottime:8.2f} {cumtime:8.2f}  {name}")


def _frame_name(frame: str) -> str:
    """``func (file:line)`` -> ``file:func`` (one entry per function, not per line)."""
    func, _, rest = frame.partition(" (")
    file = rest.rsplit(":", 1)[0] if rest else "?"
    return f"{_short(file)}:{func}"


_CALLBACK = "asyncio/events.py:Handle._run"
_RUN_ONCE = "asyncio/base_events.py:BaseEventLoop._run_once"


def _below_loop(names: list[str]) -> list[str]:
    """The frames of one stack that do hq's work: below asyncio's callback runner, or below
    a thread's start; a sample in the loop's own code counts as ``(event loop itself)``."""
    if _CALLBACK in names:
        return names[len(names) - names[::-1].index(_CALLBACK):]
    if _RUN_ONCE in names:
        return ["(event loop itself: select, scheduling)"]
    if names[0].startswith("threading.py:"):
        return [n for n in names if not n.startswith("threading.py:")] or names
    return names


def print_pyspy_tables(role: str, path: Path, top: int, rate: int) -> None:
    cumulative: Counter[str] = Counter()
    below_loop: Counter[str] = Counter()   # frames under asyncio's Handle._run (callbacks)
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += count
            frames = frames[1:]
        names = [_frame_name(f) for f in frames if f]
        if not names:
            continue
        total += count
        own[names[-1]] += count
        for name in set(names):
            cumulative[name] += count
        below_loop.update({name: count for name in set(_below_loop(names))})
    say(f"\n-- {role} (py-spy, {rate} Hz, non-idle samples: {total} = {total / rate:.1f} s "
        f"of CPU; {path}) --")
    if len(threads) > 1:
        say("  by thread: " + ", ".join(f"{t} {n}" for t, n in threads.most_common()))
    for title, counter in (("cumulative", cumulative), ("self", own),
                           ("cumulative, below the event loop (callbacks and tasks; other "
                            "threads below their start)", below_loop)):
        say(f"  top {top} by {title}:")
        for name, count in counter.most_common(top):
            say(f"    {count:7d} {100 * count / max(total, 1):5.1f}%  {name}")

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
exec-server in the foreground under ``python -m cProfile`` and stops them with SIGTERM.

Every process the script started is stopped at the end (the installation's processes are
found by their HQPATH environment variable, as tests/fixtures/running_hq.py does), and the
temporary directories are removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hq.auth import installation_id  # noqa: E402

PY = sys.executable
CORES = os.cpu_count() or 1
DAEMONS = ("hq-server", "user-server", "exec-server", "bridge")


def os_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- the installation

@dataclasses.dataclass
class Database:
    """Where a scratch installation keeps its data: SQLite (file) or a MariaDB database."""

    backend: str                     # "sqlite" or "mariadb"
    server: object | None = None     # fixtures.mariadb.MariaDBServer for mariadb
    server_cfg: str = ""             # etc/hq-server.cfg of every installation ("" = none)

    def cfg_text(self, root: Path) -> tuple[str, str | None]:
        """(etc/hq-db.cfg text, database name to drop afterwards or None)."""
        if self.backend == "sqlite":
            return (f"[DATABASE]\ndatabase_dialect = sqlite\n"
                    f"database_path = {root / 'var' / 'hq.db'}\n"), None
        from fixtures.mariadb import unique_name

        server = self.server
        name = unique_name("hq_bench")
        server.admin_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "  # type: ignore
                         f"COLLATE utf8mb4_unicode_ci")
        return (f"[DATABASE]\ndatabase_dialect = mysql\ndatabase_name = {name}\n"
                f"database_port = {server.port}\n"                         # type: ignore
                f"database_socket = {server.socket}\n"                     # type: ignore
                f"database_username = {server.admin_user}\n"), name        # type: ignore

    def drop(self, name: str | None) -> None:
        if name is not None and self.server is not None:
            with contextlib.suppress(Exception):
                self.server.admin_sql(f"DROP DATABASE IF EXISTS `{name}`")  # type: ignore


class Scratch:
    """One scratch installation with its own HOME; stops all its processes on close."""

    def __init__(self, db: Database, keep: bool, label: str) -> None:
        self.db, self.keep = db, keep
        self.base = Path(tempfile.mkdtemp(prefix=f"hq-bench-{label}-", dir="/tmp"))
        self.root = self.base / "hq"
        self.home = self.base / "home"
        self.work = self.base / "work"
        for path in (self.root / "etc", self.root / "var", self.work):
            path.mkdir(parents=True)
        self.home.mkdir(mode=0o700)
        self.rundir = Path(f"/tmp/hq-{os.geteuid()}") / installation_id(self.root)
        text, self.db_name = db.cfg_text(self.root)
        fd = os.open(self.root / "etc" / "hq-db.cfg", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        (self.root / "etc" / "cluster.tab").write_text(f"host\tcores\nlocalhost\t{CORES}\n")
        (self.root / "etc" / "users").write_text(f"{os_user()} admin\n")
        if db.server_cfg:
            (self.root / "etc" / "hq-server.cfg").write_text(db.server_cfg)
        self.foreground: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HQPATH", "HQ_VE_PATH")}
        env.update(HQPATH=str(self.root), HOME=str(self.home))
        return env

    def run(self, module: str, *args: str, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([PY, "-m", module, *args], env=self.env(), cwd=self.work,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)[:80]} exited {result.returncode}: "
                               f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result

    def create(self, start_server: bool = True) -> None:
        self.run("hq.cli.dbadmin", "--create-tables", "--add-standard-entries")
        if start_server:
            self.run("hq.server.main", "--daemon")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this installation (daemons, bridge, jobs), by HQPATH."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("HQPATH") == str(self.root) \
                        and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def daemons(self) -> dict[str, psutil.Process]:
        """The installation's hq processes by role (see DAEMONS)."""
        out: dict[str, psutil.Process] = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                role = daemon_role(proc.cmdline())
                if role is not None:
                    out[role] = proc
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user+system) each daemon used so far; ``jobs``: what the exec-server
        reaped (its children's times)."""
        out: dict[str, float] = {}
        for role, proc in self.daemons().items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[role] = times.user + times.system
                if role == "exec-server":
                    out["jobs"] = times.children_user + times.children_system
        if self.db.server is not None:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(self.db.server.pid).cpu_times()  # type: ignore
                out["mariadbd"] = times.user + times.system
        return out

    def close(self) -> None:
        for proc in self.foreground:  # profiled daemons we started: their own stop path
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.foreground:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _gone, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        if left := self.processes():
            say(f"warning: still running for {self.root}: {[p.pid for p in left]}")
        self.db.drop(self.db_name)
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self.keep:
            say(f"  kept {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def daemon_role(cmdline: list[str]) -> str | None:
    text = " ".join(cmdline)
    if "hq.server.main" in text:
        return "hq-server"
    if "hq.userd.main" in text:
        return "user-server"
    if "hq.execd.main" in text:
        return "bridge" if "--bridge" in cmdline else "exec-server"
    return None


@contextlib.contextmanager
def scratch(db: Database, keep: bool, label: str) -> Iterator[Scratch]:
    inst = Scratch(db, keep, label)
    try:
        yield inst
    finally:
        inst.close()


# --------------------------------------------------------------------------- measurements

@dataclasses.dataclass
class HqTimes:
    submit_s: float
    total_s: float
    cpu: dict[str, float]   # CPU s in the span by role, "clients" (CLIs), "machine" (all)
    load1: float = 0.0      # the 1-minute load average when hq-submit started


def write_jobs_file(path: Path, count: int, devnull: bool) -> None:
    line = "command::true" + ("\tstdout::/dev/null\tstderr::/dev/null" if devnull else "")
    path.write_text((line + "\n") * count)


def time_hq(inst: Scratch, count: int, devnull: bool) -> HqTimes:
    """Submit ``count`` true jobs as one jobs file and wait until all are done."""
    jobs_file = inst.base / "jobs.txt"
    write_jobs_file(jobs_file, count, devnull)
    inst.run("hq.cli.client", "status")  # starts the user-server (not timed)
    env = inst.env()
    timeout = 120 + count * 0.1
    cpu_before = inst.cpu_seconds()
    busy_before, clients_before = system_busy_s(), clients_cpu_s()
    load1 = os.getloadavg()[0]
    start = time.perf_counter()
    submit = subprocess.run([PY, "-m", "hq.cli.submit", "--json", "-f", str(jobs_file)],
                            env=env, cwd=inst.work, capture_output=True, text=True,
                            timeout=timeout, check=False)
    submitted = time.perf_counter()
    if submit.returncode != 0:
        raise RuntimeError(f"hq-submit exited {submit.returncode}: {submit.stderr.strip()}")
    ids = json.loads(submit.stdout)["ids"]
    if len(ids) != count:
        raise RuntimeError(f"hq-submit accepted {len(ids)} jobs, not {count}")
    first, last = min(ids), max(ids)
    if last - first + 1 != count:
        raise RuntimeError(f"job ids are not contiguous: {first}..{last} for {count} jobs")
    wait = subprocess.run([PY, "-m", "hq.cli.client", "wait", f"{first}-{last}"],
                          env=env, cwd=inst.work, capture_output=True, text=True,
                          timeout=timeout, check=False)
    done = time.perf_counter()
    cpu_after = inst.cpu_seconds()
    cpu = {role: value - cpu_before.get(role, 0.0) for role, value in cpu_after.items()}
    cpu["clients"] = clients_cpu_s() - clients_before
    cpu["machine"] = system_busy_s() - busy_before
    if wait.returncode != 0:
        status = inst.run("hq.cli.client", "status", check=False)
        raise RuntimeError(f"hq-client wait exited {wait.returncode}: "
                           f"{(wait.stderr or wait.stdout).strip()[-400:]}\n{status.stdout}")
    if not devnull:
        outputs = sum(1 for _ in inst.work.glob("hq-*.out"))
        if outputs != count:
            raise RuntimeError(f"expected {count} output files, found {outputs}")
    return HqTimes(submit_s=submitted - start, total_s=done - start, cpu=cpu, load1=load1)


def system_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (all processes, all cores)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def clients_cpu_s() -> float:
    """CPU seconds of our reaped children (hq-submit, hq-client wait, xargs and its jobs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_xargs(count: int) -> tuple[float, float, float]:
    """(wall s, CPU s of xargs and its jobs, CPU s the whole machine was busy)."""
    busy, own = system_busy_s(), clients_cpu_s()
    start = time.perf_counter()
    subprocess.run(f"seq {count} | xargs -P {CORES} -n 1 true", shell=True,  # noqa: S602
                   check=True)
    wall = time.perf_counter() - start
    return wall, clients_cpu_s() - own, system_busy_s() - busy


def attempts(what: str, fn, *args):
    """``fn(*args)``, tried up to 3 times: other sessions' tests share this machine."""
    for attempt in range(1, 4):
        try:
            return fn(*args)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            if attempt == 3:
                raise
            say(f"  {what}: attempt {attempt} failed, trying again: {err}")
    raise AssertionError("unreachable")


@dataclasses.dataclass
class Run:
    baseline_s: float
    baseline_cpu_s: float       # xargs and its jobs
    baseline_machine_s: float   # the whole machine busy during the baseline
    devnull: HqTimes
    files: HqTimes


def measure_hq(db: Database, count: int, keep: bool, devnull: bool) -> HqTimes:
    label = f"{db.backend}-{'devnull' if devnull else 'files'}"
    with scratch(db, keep, label) as inst:
        inst.create()
        return time_hq(inst, count, devnull)


def one_run(db: Database, count: int, keep: bool) -> Run:
    baseline, baseline_cpu, baseline_machine = time_xargs(count)
    results = {devnull: attempts(f"hq {db.backend} {'/dev/null' if devnull else 'files'}",
                                 measure_hq, db, count, keep, devnull)
               for devnull in (True, False)}
    return Run(baseline, baseline_cpu, baseline_machine, results[True], results[False])


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


def server_cfg_text(settings: list[str]) -> str:
    """``["scheduler.load_factor=100", ...]`` as the text of an etc/hq-server.cfg."""
    sections: dict[str, list[str]] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise SystemExit(f"--set {setting!r}: expected SECTION.KEY=VALUE, e.g. "
                             "scheduler.load_factor=100")
        sections.setdefault(section.strip(), []).append(f"{name.strip()} = {value.strip()}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n"
                   for section, lines in sections.items())


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
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO))
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
        print_tables(Path(args.tables), args)
        return 0
    with pinned_code(args.rev):
        return profile(args) if args.profile else measure(args)


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

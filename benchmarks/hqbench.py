"""What the throughput and profiling scripts share: scratch installations of hq, timing a
jobs file through them, and the xargs baseline (see throughput.py for the method)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


def figure_runs(backend: str, runs: int, one_run: Callable[[Database], dict[str, float]],
                line: Callable[[dict[str, float]], str],
                ) -> tuple[list[dict[str, float]], dict[str, float]]:
    """``runs`` runs of ``one_run`` on ``backend`` (MariaDB: one private server for all of
    them), each with the load1 seen at its start and a ``line`` about it on stderr; the
    runs and the median of each figure."""
    with contextlib.ExitStack() as stack:
        server = None
        if backend == "mariadb":
            from fixtures.mariadb import private_mariadb

            server = stack.enter_context(private_mariadb())
        db = Database(backend, server)
        found = []
        for n in range(runs):
            load1 = os.getloadavg()[0]
            result = {**one_run(db), "load1": load1}
            found.append(result)
            print(f"run {n + 1}: {line(result)}, load1 {load1:.1f}", file=sys.stderr)
    return found, {key: statistics.median(r[key] for r in found) for key in found[0]}


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
    rss_before: int = 0     # hq-server's RSS (bytes) just before hq-submit started
    rss_after: int = 0      # ... and right after hq-client wait returned (all jobs done)


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
    server = inst.daemons().get("hq-server")
    cpu_before = inst.cpu_seconds()
    busy_before, clients_before = system_busy_s(), clients_cpu_s()
    load1 = os.getloadavg()[0]
    rss_before = rss(server)
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
    rss_after = rss(server)
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
    return HqTimes(submit_s=submitted - start, total_s=done - start, cpu=cpu, load1=load1,
                   rss_before=rss_before, rss_after=rss_after)


def rss(proc: psutil.Process | None) -> int:
    """The resident set size of ``proc`` in bytes (0 if it is gone or unknown)."""
    if proc is None:
        return 0
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


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
    peer: object | None = None  # hyperqueue_peer.PeerTimes with --peer hyperqueue


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

"""HyperQueue 0.27 as a peer of hq in throughput.py (``--peer hyperqueue``).

HyperQueue (https://github.com/It4innovations/hyperqueue) is measured on the same work as hq
and xargs: N ``/bin/true`` tasks, no output (stdout and stderr not kept), timed from the
submission until all are done.

Where it comes from: the ``hyperqueue`` PyPI wheel, version 0.27.0, in a scratch virtualenv of
its own (``--hq-venv``, default /tmp/hq-bench-hyperqueue-venv; :func:`ensure_venv` creates it
with ``python3 -m venv`` and ``pip install hyperqueue==0.27.0`` when it lacks that version). It
is never a dependency of hq: hq's venv does not import it; this file is also the driver script
that the scratch venv's python runs, one role per process (``python hyperqueue_peer.py ROLE
...``), so its top level imports only the standard library.

The wheel has no ``hq`` executable, but it carries the whole engine (server and worker, in
Rust) as a Python extension, ``hyperqueue.ffi``. One measurement, all processes started by
:func:`measure` (from hq's venv, which reads their CPU times and RSS with psutil):

- ``server DIR``: ``ffi.cluster_start(DIR)``, a HyperQueue server in this process, as ``hq
  server start`` would run it (the wheel's defaults: encrypted connections, no journal);
- ``worker DIR SERVER_DIR CORES``: a second process whose own ``cluster_start(DIR)`` is only a
  vehicle: DIR's ``hq-current`` link is re-pointed at SERVER_DIR's server before
  ``add_worker(CORES)``, so the worker (with ``$(nproc)`` cores, as xargs -P and hq's
  cluster.tab get) connects to the server of the first process, as ``hq worker start`` would.
  The worker spawns and reaps the tasks, so its children's CPU time is the tasks'. The idle
  local server of this process counts in the worker's CPU;
- ``submit SERVER_DIR CTL WORKDIR N``: builds a ``hyperqueue.Job`` of N ``/bin/true`` programs
  (``stdout=None, stderr=None``) through ``hyperqueue.Client`` before the clock (that is the
  Python API's cost, which ``hq submit --array`` would not have), then, when told to go, takes
  t0 and calls ``submit_job`` once;
- ``waiter SERVER_DIR CTL INDEX COUNT``: the wheel's ``wait_for_jobs`` polls the server once a
  second, so COUNT (10) waiters, connected before the clock, start waiting INDEX/COUNT s after
  the ``submit_job`` call returned, and the earliest moment one of them saw the job complete is
  the end of the span (resolution ~1/COUNT s plus a round trip; the waiters' polls are part of
  what the server does in the span).

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process of the
machine). The server and worker are started and idle (worker registered) before the clock, as
hq-server and the user-server are in hq's measurement. Reported: submit -> complete, the
``submit_job`` call alone, the build (not in the span), the CPU seconds of the server process,
of the worker process and of its reaped tasks between t0 and the end (read when the first waiter
reported), the whole machine's busy CPU seconds, the server's RSS just before t0 and at the end.
Every process is stopped by its pid (a STOP file first, then SIGKILL), and the scratch
directory is removed unless ``keep``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = "0.27.0"
DEFAULT_VENV = Path("/tmp/hq-bench-hyperqueue-venv")
WAITERS = 10
HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- the scratch venv

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path) -> str | None:
    python = venv_python(venv)
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('hyperqueue'))"],
        capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_venv(venv: Path, say) -> Path:
    """The python of ``venv`` with hyperqueue==VERSION, creating the venv or installing the
    wheel into it first if need be (progress through ``say``, pip's output to stderr)."""
    version = installed_version(venv)
    if version == VERSION:
        say(f"  hyperqueue {VERSION}: {venv}")
        return venv_python(venv)
    if not venv_python(venv).exists():
        say(f"  creating {venv} for hyperqueue {VERSION} (python3 -m venv)")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True,
                       stdout=sys.stderr)
    say(f"  pip install hyperqueue=={VERSION} into {venv}"
        + (f" (it has {version})" if version else ""))
    subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", f"hyperqueue=={VERSION}"],
                   check=True, stdout=sys.stderr)
    if (version := installed_version(venv)) != VERSION:
        raise SystemExit(f"{venv}: hyperqueue {version} after pip install, not {VERSION}")
    return venv_python(venv)


# --------------------------------------------------------------------------- one measurement

@dataclasses.dataclass
class PeerTimes:
    total_s: float             # submit -> all tasks complete
    submit_s: float            # the submit_job call
    build_s: float             # building the Job in Python (before the clock)
    server_cpu_s: float        # the server process, in the span
    worker_cpu_s: float        # the worker process (without its tasks)
    tasks_cpu_s: float         # the tasks the worker reaped
    machine_s: float           # the whole machine busy in the span
    server_rss_before: int     # bytes, just before t0
    server_rss_after: int      # bytes, when the first waiter saw the job complete
    load1: float               # the 1-minute load average at t0
    cores: int                 # the worker's cores


def measure(python: Path, count: int, keep: bool, cores: int,
            waiters: int = WAITERS) -> PeerTimes:
    """N ``/bin/true`` tasks through a fresh HyperQueue server and worker (see the module
    docstring); raises RuntimeError if a process dies, a task fails or it takes too long."""
    import psutil
    from hqbench import say, system_busy_s

    base = Path(tempfile.mkdtemp(prefix="hq-bench-hyperqueue-", dir="/tmp"))
    server_dir, worker_dir = base / "server", base / "worker"
    ctl, work, logs = base / "ctl", base / "work", base / "log"
    for path in (ctl, work, logs):
        path.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    deadline = time.monotonic() + 120 + count * 0.1

    def start(name: str, *args: object) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(python), str(HERE), *map(str, args)],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=work)
        procs[name] = proc
        return proc

    def wait_for(paths: list[Path], what: str) -> None:
        """Until one of ``paths`` exists; RuntimeError if a process died or at the deadline."""
        while not any(path.exists() for path in paths):
            for name, proc in procs.items():
                if proc.poll() not in (None, 0):
                    tail = (logs / f"{name}.log").read_text(errors="replace")[-800:]
                    raise RuntimeError(f"hyperqueue {name} exited {proc.returncode} while "
                                       f"waiting for {what}: {tail.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"hyperqueue: timed out waiting for {what}")
            time.sleep(0.005)

    try:
        server = start("server", "server", server_dir)
        wait_for([server_dir / "READY"], "the server")
        worker = start("worker", "worker", worker_dir, server_dir, cores)
        wait_for([worker_dir / "READY"], "the worker")
        for index in range(waiters):
            start(f"waiter{index}", "waiter", server_dir, ctl, index, waiters)
        start("submit", "submit", server_dir, ctl, work, count)
        wait_for([ctl / "built"], "the job to be built")
        for index in range(waiters):
            wait_for([ctl / f"waiter{index}.ready"], f"waiter {index} to connect")
        build_s = float((ctl / "built").read_text())
        server_ps, worker_ps = psutil.Process(server.pid), psutil.Process(worker.pid)
        server_before, worker_before = server_ps.cpu_times(), worker_ps.cpu_times()
        busy_before = system_busy_s()
        load1 = os.getloadavg()[0]
        rss_before = server_ps.memory_info().rss
        _atomic_write(ctl / "go", "go")

        done = [ctl / f"waiter{index}.done" for index in range(waiters)]
        wait_for(done, "the tasks to complete")
        rss_after = server_ps.memory_info().rss
        server_after, worker_after = server_ps.cpu_times(), worker_ps.cpu_times()
        busy_after = system_busy_s()
        for path in done:
            wait_for([path], f"{path.stem} to see the job complete")
        submitted = json.loads((ctl / "job").read_text())
        reports = [json.loads(path.read_text()) for path in done]
        if failed := max(report["failed_tasks"] for report in reports):
            raise RuntimeError(f"hyperqueue: {failed} of {count} tasks failed")
        end = min(report["t"] for report in reports)
        return PeerTimes(
            total_s=end - submitted["t0"],
            submit_s=submitted["t_submitted"] - submitted["t0"],
            build_s=build_s,
            server_cpu_s=_cpu(server_after) - _cpu(server_before),
            worker_cpu_s=_cpu(worker_after) - _cpu(worker_before),
            tasks_cpu_s=_children(worker_after) - _children(worker_before),
            machine_s=busy_after - busy_before,
            server_rss_before=rss_before,
            server_rss_after=rss_after,
            load1=load1,
            cores=cores,
        )
    finally:
        stop(procs, [worker_dir, server_dir], say)
        if keep:
            say(f"  kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def stop(procs: dict[str, subprocess.Popen[bytes]], daemon_dirs: list[Path], say) -> None:
    """Stop what :func:`measure` started, by pid: clients still running (only after a failure)
    get SIGTERM; the worker, then the server, a STOP file (their own ``ctx.stop()``); whatever
    has not exited 20 s later is killed."""
    for name, proc in procs.items():
        if name not in ("server", "worker") and proc.poll() is None:
            proc.terminate()
    for directory in daemon_dirs:
        if directory.exists():
            _atomic_write(directory / "STOP", "stop")
    for name, proc in procs.items():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            say(f"  hyperqueue {name} (pid {proc.pid}) did not stop: killed")
            proc.kill()
            proc.wait()


def _cpu(times) -> float:
    return times.user + times.system


def _children(times) -> float:
    return times.children_user + times.children_system


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_file(path: Path, interval: float = 0.001) -> str:
    while not path.exists():
        time.sleep(interval)
    return path.read_text()


# --------------------------------------------------------------------------- the roles
# (run by the scratch venv's python: ``python hyperqueue_peer.py ROLE ...``)

def role_server(directory: Path) -> None:
    from hyperqueue.ffi import ffi

    ctx = ffi.cluster_start(str(directory))
    _atomic_write(directory / "READY", str(os.getpid()))
    _serve_until_stop(ctx, directory)


def role_worker(directory: Path, server_dir: Path, cores: int) -> None:
    from hyperqueue.ffi import ffi

    ctx = ffi.cluster_start(str(directory))
    link = directory / "hq-current"
    tmp = directory / "hq-current.tmp"
    os.symlink((server_dir / "hq-current").resolve(), tmp)
    os.replace(tmp, link)
    ctx.add_worker(cores)
    time.sleep(1.0)  # let the worker register before it is reported ready
    _atomic_write(directory / "READY", str(os.getpid()))
    _serve_until_stop(ctx, directory)


def _serve_until_stop(ctx, directory: Path) -> None:
    while not (directory / "STOP").exists():
        time.sleep(0.2)
    ctx.stop()


def role_submit(server_dir: Path, ctl: Path, workdir: Path, count: int) -> None:
    from hyperqueue import Client, Job

    client = Client(server_dir)
    start = time.monotonic()
    job = Job(default_workdir=workdir, max_fails=None)
    for _ in range(count):
        job.program(["/bin/true"], stdout=None, stderr=None)
    description = job._build(client)
    _atomic_write(ctl / "built", repr(time.monotonic() - start))
    _wait_file(ctl / "go")
    t0 = time.monotonic()
    job_id = client.connection.submit_job(description)
    t_submitted = time.monotonic()
    _atomic_write(ctl / "job", json.dumps({"id": job_id, "t0": t0,
                                           "t_submitted": t_submitted}))


def role_waiter(server_dir: Path, ctl: Path, index: int, count: int) -> None:
    from hyperqueue.ffi.client import ClientConnection

    connection = ClientConnection(str(server_dir))
    _atomic_write(ctl / f"waiter{index}.ready", "ready")
    job = json.loads(_wait_file(ctl / "job"))
    # staggered from the end of the submit call (the earliest a wait can start)
    time.sleep(max(0.0, job["t_submitted"] + index / count - time.monotonic()))
    failed_jobs = connection.wait_for_jobs([job["id"]], lambda _status: None)
    t = time.monotonic()
    failed_tasks = 0
    if failed_jobs:
        failed_tasks = sum(len(tasks) for tasks in
                           connection.get_failed_tasks(failed_jobs).values())
    _atomic_write(ctl / f"waiter{index}.done", json.dumps({"t": t, "failed_tasks": failed_tasks}))


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "server":
        role_server(Path(args[0]))
    elif role == "worker":
        role_worker(Path(args[0]), Path(args[1]), int(args[2]))
    elif role == "submit":
        role_submit(Path(args[0]), Path(args[1]), Path(args[2]), int(args[3]))
    elif role == "waiter":
        role_waiter(Path(args[0]), Path(args[1]), int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown role {role!r}: server, worker, submit or waiter")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Every fork, exec, kill and wait of the exec-server: start jobs, reap them, end them.

A job is ``shell -c command`` in its own session and process group, started on Python's fast
spawn path (``start_new_session`` and ``umask`` are handled by the C code; no ``preexec_fn``,
so CPython may use vfork and the cost of a start does not grow with the daemon's size). Its
output files are opened here first, never through a symlink, so a failure to start is an
``Outcome`` with ``reason="cannot start: ..."`` instead of a half-started job. With
``[execd] pin_cpus`` a job is bound to CPUs of its own (``hq.execd.pinning``), inherited from
the spawning thread so the fast path stays.

Children are reaped in one place: a SIGCHLD handler on the event loop that calls
``os.wait4(-1, WNOHANG)`` until nothing is left, which also yields each job's CPU time and
peak RSS. Nothing polls a job and asyncio's child watchers are not used.

Stopping a job (cancel, time limit, lease) sends SIGTERM to its process group, to every
descendant psutil finds and to every process carrying the job's marker (``hq.execd.processes``:
descendants that started a session of their own, double-forked orphans), then SIGKILL to
whatever of them is left after a grace period. When a job's shell ends, what it left behind
is ended the same way (as Slurm does at the end of a job). The exec-server is the subreaper
of its jobs, so their orphans are its children and are reaped here too.

A job is known by its key, (database identity, job id, attempt): daemons outlive databases
(a recreated one starts its ids at 1 again), and a job requeued after its host was lost runs
again as its next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psutil

from hq.execd import memory, processes
from hq.execd.outputs import OutputRefused, open_output
from hq.execd.pinning import CpuPinner
from hq.protocol.messages import JobEnded

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0
TIME_LIMIT_GRACE_S = 10.0
REASON_CANCELLED = "cancelled"
REASON_TIME_LIMIT = "time limit"
REASON_LEASE = "lease expired: no contact with a user-server"
REASON_UNKNOWN_END = "exit status unknown: it ended while no exec-server watched it"
REASON_WITHDRAWN = "withdrawn"   # taken back by hq-server before it started (never will)
LEFTOVER_GRACE_S = 2.0
MEMORY_GRACE_S = 1.0        # SIGTERM, then SIGKILL: a job over its memory gets little time
LEFTOVER_RECHECKS = 4       # looks again for what ended jobs left, this many times ...
LEFTOVER_RECHECK_S = 0.25   # ... this far apart

JobKey = tuple[str, int, int]
"""(database identity, job id, attempt)"""



@dataclass(frozen=True)
class Launch:
    """One job, verified and resolved by the service: exactly what ``JobRunner.start`` runs."""

    key: JobKey
    command: str
    shell: str
    cwd: str
    env: dict[str, str]
    umask: int
    stdout: str  # absolute path
    stderr: str  # absolute path; the same file as stdout when equal
    time_limit_s: float | None = None
    memory_limit_mb: int | None = None   # --memory: enforced as memory_enforce says
    cores: int = 1                       # -c: the CPUs it is bound to with pin_cpus


@dataclass(frozen=True)
class Outcome:
    """How a job ended: the fields of an ``ended`` JobEvent (doc/protocol.md)."""

    key: JobKey
    ended_at: float
    started_at: float | None = None
    pid: int | None = None
    exit_code: int | None = None  # None when killed by a signal or never started
    signal: int | None = None
    cpu_time_s: float | None = None
    max_rss_kb: int | None = None
    reason: str | None = None  # cancelled, time limit, cannot start: ..., refused: ...

    def event(self) -> JobEnded:
        """The ``ended`` event as it goes on the wire."""
        return JobEnded(id=self.key[1], attempt=self.key[2], at=self.ended_at,
                        started_at=self.started_at,
                        pid=self.pid, exit_code=self.exit_code, signal=self.signal,
                        cpu_time_s=self.cpu_time_s, max_rss_kb=self.max_rss_kb,
                        reason=self.reason)


@dataclass
class RunningJob:
    """A started job until it is reaped (or, adopted from a predecessor, seen to end)."""

    key: JobKey
    pid: int
    started_at: float
    process: subprocess.Popen[bytes] | None = field(repr=False)   # None: adopted
    marker: str = ""
    stop_reason: str | None = None  # set once a cancel or the time limit has begun
    limit_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    pidfd: int | None = field(default=None, repr=False)   # an adopted job's end shows here
    memory_limit_mb: int | None = None
    peak_pss_kb: int = 0
    warned: bool = False


class JobRunner:
    """Starts jobs, reaps them through SIGCHLD and stops them; reports each end to ``on_end``.

    Call ``install`` once on the running loop before ``start``. ``clock`` is the time seam.
    """

    def __init__(self, on_end: Callable[[Outcome], None], *,
                 cancel_grace_s: float = CANCEL_GRACE_S,
                 time_limit_grace_s: float = TIME_LIMIT_GRACE_S,
                 clock: Callable[[], float] = time.time, memory_enforce: str = "kill") -> None:
        self.on_end = on_end
        self.memory_enforce = memory_enforce
        self.pinner: CpuPinner | None = None   # [execd] pin_cpus: each job on its own CPUs
        self._memory_timer: asyncio.TimerHandle | None = None
        self.cancel_grace_s = cancel_grace_s
        self.time_limit_grace_s = time_limit_grace_s
        self.clock = clock
        self.jobs: dict[JobKey, RunningJob] = {}
        self._by_pid: dict[int, RunningJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # markers of ended jobs to look for again, with the looks left (_end_leftovers)
        self._leftover_looks: dict[str, int] = {}
        self._leftover_timer: asyncio.TimerHandle | None = None
        # One /dev/null for every job's stdin instead of an open and close per start.
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reap through SIGCHLD on ``loop`` (the main thread's loop); become the subreaper
        of the jobs, so that their orphans are ours to find and to reap."""
        self._loop = loop
        if not processes.become_subreaper():
            log.warning("cannot become the jobs' subreaper: orphans go to init")
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        """Stop reaping (at shutdown); running jobs are left alone, they belong to the user."""
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            for timer in (self._leftover_timer, self._memory_timer):
                if timer is not None:
                    timer.cancel()
            self._leftover_timer = self._memory_timer = None
            for job in self.jobs.values():
                if job.limit_timer is not None:
                    job.limit_timer.cancel()
                if job.pidfd is not None:
                    self._loop.remove_reader(job.pidfd)
            self._loop = None

    # --- start ----------------------------------------------------------------------------

    def start(self, launch: Launch) -> RunningJob | Outcome:
        """Start ``launch``; a job that cannot start comes back as an Outcome, never raised."""
        if launch.key in self.jobs:
            raise ValueError(f"job {launch.key} is already running")
        try:
            _check_directory(launch.cwd)
            out_fd = _open_output(launch.stdout, launch.umask, "stdout")
        except _CannotStart as err:
            return self._cannot_start(launch, str(err))
        err_fd = out_fd
        env = launch.env
        cpus = None if self.pinner is None else self.pinner.choose(launch.key, launch.cores)
        if cpus is not None:
            env = {**env, "HQ_CPU_LIST": ",".join(map(str, cpus))}
        try:
            if launch.stderr != launch.stdout:
                err_fd = _open_output(launch.stderr, launch.umask, "stderr")
            with _bound_to(cpus):
                process = subprocess.Popen(
                    shell_argv(launch.shell, launch.command), cwd=launch.cwd, env=env,
                    stdin=self._devnull, stdout=out_fd, stderr=err_fd, start_new_session=True,
                    umask=launch.umask, close_fds=True)
        except _CannotStart as err:
            return self._not_started(launch, str(err))
        except OSError as err:
            return self._not_started(launch, _describe_spawn_error(err, launch))
        except (ValueError, TypeError) as err:  # NUL bytes or non-strings in the environment
            return self._not_started(launch, f"bad environment: {err}")
        finally:
            os.close(out_fd)
            if err_fd != out_fd:
                os.close(err_fd)
        job = RunningJob(launch.key, process.pid, self.clock(), process,
                         marker=launch.env.get(processes.MARKER, ""),
                         memory_limit_mb=launch.memory_limit_mb)
        self.jobs[job.key] = job
        self._by_pid[job.pid] = job
        memory.raise_oom_score(job.pid)
        if job.memory_limit_mb and self.memory_enforce != "off":
            self._watch_memory()
        if launch.time_limit_s is not None and self._loop is not None:
            job.limit_timer = self._loop.call_later(launch.time_limit_s, self._time_limit_hit,
                                                    job.key)
        return job

    def _watch_memory(self) -> None:
        if self._memory_timer is None and self._loop is not None:
            self._memory_timer = self._loop.call_later(memory.INTERVAL_S, self._check_memory)

    def _check_memory(self) -> None:
        """Each job with a memory limit, measured by PSS: over it, stopped (or logged)."""
        self._memory_timer = None
        limited = [j for j in self.jobs.values() if j.memory_limit_mb and j.stop_reason is None]
        if not limited or self.memory_enforce == "off":
            return
        trees = memory.process_trees(job.pid for job in limited)
        for job in limited:
            used = memory.pss_kb(trees[job.pid])
            job.peak_pss_kb = max(job.peak_pss_kb, used)
            limit = job.memory_limit_mb or 0
            if used <= limit * 1024:
                continue
            reason = memory.over_limit_reason(limit, used)
            if self.memory_enforce == "kill":
                log.info("job %s: %s: stopping it", job.key[1], reason)
                self.stop([job.key], reason, MEMORY_GRACE_S)
            elif not job.warned:
                job.warned = True
                log.warning("job %s: %s (memory_enforce = warn: left running)",
                            job.key[1], reason)
        self._watch_memory()

    def _not_started(self, launch: Launch, text: str) -> Outcome:
        if self.pinner is not None:
            self.pinner.release(launch.key)
        return self._cannot_start(launch, text)

    def _cannot_start(self, launch: Launch, text: str) -> Outcome:
        # One line, whatever the OS put into the message.
        reason = "cannot start: " + " ".join(text.split())
        return Outcome(launch.key, self.clock(), reason=reason)

    def adopt(self, key: JobKey, pid: int, started_at: float, marker: str) -> RunningJob | None:
        """Watch a job a predecessor started (not our child: its end shows on a pidfd, its
        exit status is lost). None when it is gone already."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        job = RunningJob(key, pid, started_at, None, marker=marker, pidfd=pidfd)
        self.jobs[key] = job
        if self._loop is not None:
            self._loop.add_reader(pidfd, self._adopted_ended, key)
        return job

    def _adopted_ended(self, key: JobKey) -> None:
        job = self.jobs.pop(key, None)
        if job is None or job.pidfd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(job.pidfd)
        os.close(job.pidfd)
        self._end_leftovers([job])
        self._report(Outcome(key, self.clock(), started_at=job.started_at, pid=job.pid,
                             reason=job.stop_reason or REASON_UNKNOWN_END))

    # --- reap -----------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect every child that has ended; called on SIGCHLD (and safe to call anytime).
        Children that are no job's shell are orphans we adopted as the subreaper."""
        ended: list[RunningJob] = []
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break  # no children at all
            if pid == 0:
                break  # children exist, none has ended
            job = self._by_pid.pop(pid, None)
            if job is None:
                log.debug("pid %s: reaped, an orphan", pid)
                continue
            del self.jobs[job.key]
            if self.pinner is not None:
                self.pinner.release(job.key)
            if job.limit_timer is not None:
                job.limit_timer.cancel()
            # So that Popen's finaliser does not wait for a pid that may since have been reused.
            assert job.process is not None
            job.process.returncode = os.waitstatus_to_exitcode(status)
            signaled = os.WIFSIGNALED(status)
            ended.append(job)
            self._report(Outcome(
                job.key, self.clock(), started_at=job.started_at, pid=pid,
                exit_code=None if signaled else os.WEXITSTATUS(status),
                signal=os.WTERMSIG(status) if signaled else None,
                cpu_time_s=round(usage.ru_utime + usage.ru_stime, 6),
                max_rss_kb=usage.ru_maxrss, reason=job.stop_reason))
        if ended:
            self._end_leftovers(ended)

    def _report(self, outcome: Outcome) -> None:
        try:
            self.on_end(outcome)
        except Exception:
            # The loop boundary: one bad report must not stop the reaping of the others.
            log.exception("job %s: reporting its end failed", outcome.key)

    def _end_leftovers(self, jobs: list[RunningJob]) -> None:
        """What ended jobs left running (double forks, daemons): orphans that are now our
        children and carry one of their markers get SIGTERM, and SIGKILL after a grace.

        Looked for now and again a few times shortly after: /proc's list of children may
        omit one while another child exits, and a process inside execve shows no
        environment for a moment (both seen under load). The later looks are shared by all
        jobs that ended meanwhile, so they cost a few reads per interval, not per job."""
        markers = {job.marker for job in jobs if job.marker}
        if not markers:
            return
        self._end_orphans_marked(markers)
        if self._loop is None:
            return
        for marker in markers:
            self._leftover_looks[marker] = LEFTOVER_RECHECKS
        if self._leftover_timer is None:
            self._leftover_timer = self._loop.call_later(LEFTOVER_RECHECK_S, self._look_again)

    def _look_again(self) -> None:
        self._leftover_timer = None
        looks = self._leftover_looks
        self._end_orphans_marked(set(looks))
        for marker in list(looks):
            looks[marker] -= 1
            if looks[marker] <= 0:
                del looks[marker]
        if looks and self._loop is not None:
            self._leftover_timer = self._loop.call_later(LEFTOVER_RECHECK_S, self._look_again)

    def _end_orphans_marked(self, markers: set[str]) -> None:
        running = {job.pid for job in self.jobs.values()}
        orphans = [pid for pid in processes.own_children() - running
                   if processes.marker_of(pid) in markers]
        if not orphans:
            return
        tree = [p for p in _processes(orphans) + _descendants(orphans)]
        log.info("%d process(es) left behind by ended jobs: ending them", len(tree))
        _signal_all(tree, signal.SIGTERM)
        if self._loop is not None:
            self._loop.call_later(LEFTOVER_GRACE_S, _signal_all, tree, signal.SIGKILL)

    # --- stop -----------------------------------------------------------------------------

    def cancel(self, keys: Iterable[JobKey]) -> list[JobKey]:
        """Stop these jobs with reason ``cancelled``; returns the keys that were running."""
        return self.stop(keys, REASON_CANCELLED, self.cancel_grace_s)

    def _time_limit_hit(self, key: JobKey) -> None:
        if self.stop([key], REASON_TIME_LIMIT, self.time_limit_grace_s):
            log.info("job %s: time limit reached, stopping it", key[1])

    def stop(self, keys: Iterable[JobKey], reason: str, grace_s: float) -> list[JobKey]:
        """SIGTERM each job's every process now, SIGKILL what is left of them after
        ``grace_s``. A job already being stopped keeps its first reason. Returns the keys
        now stopping."""
        jobs = [self.jobs[k] for k in keys if k in self.jobs and self.jobs[k].stop_reason is None]
        if not jobs:
            return []
        # Take the tree before signalling: once a parent dies its children are reparented
        # and can no longer be found as descendants (the markers still find them).
        tree = self._tree_of(jobs)
        for job in jobs:
            job.stop_reason = reason
            _signal_group(job.pid, signal.SIGTERM)
        _signal_all(tree, signal.SIGTERM)
        if self._loop is not None:
            self._loop.call_later(grace_s, self._kill_remains, [j.key for j in jobs], tree)
        else:
            self._kill_remains([j.key for j in jobs], tree)
        return [job.key for job in jobs]

    def stop_processes(self, pids: Iterable[int]) -> None:
        """End processes that belong to no running job any more (a job's leftovers):
        SIGTERM now, SIGKILL after a short grace."""
        tree = _processes(pids)
        tree += _descendants(p.pid for p in tree)
        _signal_all(tree, signal.SIGTERM)
        if self._loop is not None:
            self._loop.call_later(LEFTOVER_GRACE_S, _signal_all, tree, signal.SIGKILL)
        else:
            _signal_all(tree, signal.SIGKILL)

    def kill_now(self, pids: Iterable[int], wait_s: float = 5.0) -> None:
        """SIGKILL ``pids`` and their descendants, and wait (up to ``wait_s``) until they are
        gone: for a copy that must be dead before another one starts."""
        tree = _processes(pids)
        tree += _descendants(p.pid for p in tree)
        _signal_all(tree, signal.SIGKILL)
        deadline = time.monotonic() + wait_s
        while any(_is_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _tree_of(self, jobs: list[RunningJob]) -> list[psutil.Process]:
        """Every process of ``jobs``: descendants of their shells, and whatever carries their
        markers (one scan of this account's processes)."""
        markers = {job.marker for job in jobs if job.marker}
        marked = [pid for pid, marker in processes.marked_processes(_installation_of(markers))
                  .items() if marker in markers] if markers else []
        roots = [job.pid for job in jobs] + marked
        seen: dict[int, psutil.Process] = {p.pid: p for p in _processes(marked)}
        for proc in _descendants(roots):
            seen.setdefault(proc.pid, proc)
        return list(seen.values())

    def _kill_remains(self, keys: list[JobKey], tree: list[psutil.Process]) -> None:
        alive = [job for k in keys if (job := self.jobs.get(k)) is not None]
        survivors = [p for p in tree if _is_alive(p)]
        # Descendants born after the SIGTERM (a trap that forked, say) die too.
        tree = survivors + _descendants([j.pid for j in alive] + [p.pid for p in survivors])
        # The group only while its leader is unreaped: afterwards the number may be reused.
        for job in alive:
            _signal_group(job.pid, signal.SIGKILL)
        _signal_all(tree, signal.SIGKILL)
        if tree or alive:
            count = len({p.pid for p in tree} | {j.pid for j in alive})
            log.info("jobs %s: %d process(es) left after the grace period: killed",
                     ",".join(str(k[1]) for k in keys), count)


def _installation_of(markers: set[str]) -> str:
    """The installation part the markers share (one exec-server serves one installation)."""
    return next(iter(markers)).partition("/")[0]


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def shell_argv(shell: str, command: str) -> list[str]:
    """``shell -c command``; a command that starts with ``-`` is not an option of the shell
    (``sh -c -- -x`` runs the command ``-x``, ``sh -c -x`` would turn on tracing)."""
    if command.startswith("-"):
        return [shell, "-c", "--", command]
    return [shell, "-c", command]


class _CannotStart(Exception):
    """A job cannot start; the message completes ``cannot start: ...``."""


@contextlib.contextmanager
def _bound_to(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """The calling thread bound to ``cpus`` meanwhile: a child it spawns inherits the binding
    from its first instruction (binding the job's pid after the spawn would miss what the
    job forks at once, and a preexec_fn would cost the fast vfork path)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _check_directory(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _CannotStart(f"working directory {path} does not exist") from None
    except OSError as err:
        raise _CannotStart(f"working directory {path}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _CannotStart(f"working directory {path} is not a directory")


def _open_output(path: str, umask: int, what: str) -> int:
    """A job's output file, opened by the rules of ``hq.execd.outputs`` (no link planted by
    another account is followed, no file of another account is written)."""
    try:
        return open_output(path, umask, what)
    except OutputRefused as err:
        raise _CannotStart(str(err)) from None


def _describe_spawn_error(err: OSError, launch: Launch) -> str:
    if err.filename == launch.shell:
        return f"shell {launch.shell}: {err.strerror}"
    if err.filename == launch.cwd:
        return f"working directory {launch.cwd}: {err.strerror}"
    return f"{err.filename}: {err.strerror}" if err.filename else str(err.strerror or err)


def _descendants(roots: Iterable[int]) -> list[psutil.Process]:
    """Every live descendant of ``roots``, from one scan of the process table."""
    wanted = set(roots)
    if not wanted:
        return []
    children: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc)
    found: list[psutil.Process] = []
    seen = set(wanted)
    stack = list(wanted)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                stack.append(child.pid)
    return found


def _signal_group(pgid: int, signum: int) -> None:
    # ESRCH: the group is gone (its leader may be a zombie we are about to reap)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _signal_all(procs: Iterable[psutil.Process], signum: int) -> None:
    for proc in procs:
        # psutil checks the pid still names the same process (no reuse accident).
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signum)


def _is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

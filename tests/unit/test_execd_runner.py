"""The exec-server's JobRunner with real processes: exit codes, signals, environment, output
files, refusals, cancel of a whole process tree, time limits, CPU time and peak memory."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from hq.execd.processes import MARKER, marked_processes, marker_value
from hq.execd.runner import REASON_UNKNOWN_END, JobRunner, Launch, Outcome, RunningJob

PATH = "/usr/local/bin:/usr/bin:/bin"
INSTALLATION = f"test{os.getpid()}"


def launch(tmp_path: Path, job_id: int, command: str, **overrides: Any) -> Launch:
    fields: dict[str, Any] = {
        "key": ("db", job_id, 0), "command": command, "shell": "/bin/sh", "cwd": str(tmp_path),
        "env": {"PATH": PATH, MARKER: marker_value(INSTALLATION, "db", job_id, 0)},
        "umask": 0o022, "stdout": str(tmp_path / f"{job_id}.out"),
        "stderr": str(tmp_path / f"{job_id}.err")}
    fields.update(overrides)
    return Launch(**fields)


class Jobs:
    """A JobRunner on the running loop, with a way to wait for a job's end."""

    def __init__(self, **runner_options: Any) -> None:
        self.ended: dict[int, Outcome] = {}
        self.runner = JobRunner(self._record, **runner_options)
        self.runner.install(asyncio.get_running_loop())

    def _record(self, outcome: Outcome) -> None:
        self.ended[outcome.key[1]] = outcome

    def start(self, what: Launch) -> RunningJob:
        started = self.runner.start(what)
        assert isinstance(started, RunningJob), started
        return started

    async def outcome(self, job_id: int, timeout: float = 10.0) -> Outcome:
        deadline = time.monotonic() + timeout
        while job_id not in self.ended:
            assert time.monotonic() < deadline, f"job {job_id} did not end in {timeout} s"
            await asyncio.sleep(0.01)
        return self.ended[job_id]


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def wrapped() -> None:
        await test()
    asyncio.run(wrapped())


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting for init counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} was not written"
        await asyncio.sleep(0.01)
    return path.read_text()


def test_exit_codes_and_signals_are_recorded(tmp_path: Path) -> None:
    async def test() -> None:
        jobs = Jobs()
        before = time.time()
        for job_id, command in ((1, "true"), (2, "exit 3"), (3, "kill -9 $$")):
            jobs.start(launch(tmp_path, job_id, command))
        ok, three, killed = [await jobs.outcome(i) for i in (1, 2, 3)]
        assert (ok.exit_code, ok.signal, ok.reason) == (0, None, None)
        assert (three.exit_code, three.signal) == (3, None)
        assert (killed.exit_code, killed.signal) == (None, 9)
        assert ok.pid and ok.started_at is not None
        assert before <= ok.started_at <= ok.ended_at <= time.time()
        assert jobs.runner.jobs == {}
    run(test)


def test_job_gets_its_directory_environment_and_umask(tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()

    async def test() -> None:
        jobs = Jobs()
        env = {"PATH": PATH, "GREETING": "hello world"}
        jobs.start(launch(tmp_path, 1, "pwd; umask; env", cwd=str(workdir), env=env,
                          umask=0o027))
        assert (await jobs.outcome(1)).exit_code == 0
    run(test)
    lines = (tmp_path / "1.out").read_text().splitlines()
    assert lines[0] == str(workdir)
    assert lines[1] == "0027"
    assert "GREETING=hello world" in lines
    # exactly the given environment: nothing leaks in from the daemon
    assert not any(line.startswith(("HOME=", "PYTEST_CURRENT_TEST=")) for line in lines)


def test_output_files_get_the_job_umask_split_or_shared(tmp_path: Path) -> None:
    async def test() -> None:
        jobs = Jobs()
        saved = os.umask(0o077)  # the daemon's own umask must not narrow the job's files
        try:
            jobs.start(launch(tmp_path, 1, "echo out; echo err >&2", umask=0o027))
            shared = str(tmp_path / "both.log")
            jobs.start(launch(tmp_path, 2, "echo out; echo err >&2; echo out2", umask=0o002,
                              stdout=shared, stderr=shared))
        finally:
            os.umask(saved)
        await jobs.outcome(1)
        await jobs.outcome(2)
    run(test)
    assert (tmp_path / "1.out").read_text() == "out\n"
    assert (tmp_path / "1.err").read_text() == "err\n"
    assert stat.S_IMODE((tmp_path / "1.out").stat().st_mode) == 0o640
    assert (tmp_path / "both.log").read_text() == "out\nerr\nout2\n"
    assert stat.S_IMODE((tmp_path / "both.log").stat().st_mode) == 0o664
    assert not (tmp_path / "2.err").exists()


def test_jobs_that_cannot_start_say_why(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (tmp_path / "1.out").symlink_to(target)

    missing_shell = launch(tmp_path, 3, "true", shell="/bin/no-such-shell")  # noqa: S604

    async def test() -> None:
        jobs = Jobs()
        results = [
            jobs.runner.start(launch(tmp_path, 1, "echo overwritten")),
            jobs.runner.start(launch(tmp_path, 2, "true", cwd=str(tmp_path / "gone"),
                                     stdout="/dev/null", stderr="/dev/null")),
            jobs.runner.start(missing_shell),
            jobs.runner.start(launch(tmp_path, 4, "true",
                                     stdout=str(tmp_path / "no" / "dir" / "4.out"))),
        ]
        for result in results:
            assert isinstance(result, Outcome)
            assert result.exit_code is None and result.pid is None
            assert result.started_at is None
            assert result.reason is not None and result.reason.startswith("cannot start: ")
            assert "\n" not in result.reason
        symlink, no_cwd, no_shell, no_dir = (r.reason for r in results)  # type: ignore[union-attr]
        assert "symbolic link" in symlink
        assert str(tmp_path / "gone") in no_cwd
        assert "/bin/no-such-shell" in no_shell
        assert str(tmp_path / "no" / "dir") in no_dir
        assert jobs.runner.jobs == {}
    run(test)
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "no").exists()


def test_cancel_kills_the_whole_tree_even_a_new_session(tmp_path: Path) -> None:
    # A child in the job's group, and a grandchild in a session of its own that ignores
    # SIGTERM, so only the SIGKILL after the grace period ends it.
    command = ("sleep 60 & echo $! > child.pid; "
               "setsid sh -c 'trap \"\" TERM; echo $$ > grandchild.pid; exec sleep 60' & "
               "wait")

    async def test() -> None:
        jobs = Jobs(cancel_grace_s=0.5)
        job = jobs.start(launch(tmp_path, 1, command))
        child = int(await wait_for_file(tmp_path / "child.pid"))
        grandchild = int(await wait_for_file(tmp_path / "grandchild.pid"))
        await asyncio.sleep(0.1)  # let the grandchild's shell exec sleep
        assert os.getsid(grandchild) != job.pid, "the test needs a grandchild in a new session"
        assert jobs.runner.cancel([("db", 1, 0), ("db", 999, 0)]) == [("db", 1, 0)]
        outcome = await jobs.outcome(1)
        assert outcome.reason == "cancelled"
        assert outcome.signal == 15 and outcome.exit_code is None
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in (job.pid, child, grandchild)):
            assert time.monotonic() < deadline, "a process of the cancelled job survived"
            await asyncio.sleep(0.05)
    run(test)


def test_time_limit_stops_the_job(tmp_path: Path) -> None:
    async def test() -> None:
        jobs = Jobs()
        started = time.monotonic()
        jobs.start(launch(tmp_path, 1, "sleep 30", time_limit_s=0.3))
        outcome = await jobs.outcome(1, timeout=5)
        assert outcome.reason == "time limit"
        assert outcome.signal == 15
        assert 0.25 < time.monotonic() - started < 3
    run(test)


def test_cpu_time_and_peak_memory_are_measured(tmp_path: Path) -> None:
    busy = (f"{sys.executable} -c 'import time\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass'")
    big = f"{sys.executable} -c 'b = bytearray(100 * 1024 * 1024)'"

    async def test() -> None:
        jobs = Jobs()
        jobs.start(launch(tmp_path, 1, busy))
        jobs.start(launch(tmp_path, 2, big))
        cpu, memory = await jobs.outcome(1), await jobs.outcome(2)
        assert cpu.exit_code == 0 and memory.exit_code == 0, (tmp_path / "1.err").read_text()
        assert cpu.cpu_time_s is not None and cpu.cpu_time_s > 0.2
        # The 100 MiB allocation shows in full. (A small job's peak is not asserted: Linux
        # counts the forking parent's size into it, so it depends on who started it.)
        assert memory.max_rss_kb is not None and memory.max_rss_kb > 100 * 1024
        assert cpu.max_rss_kb is not None and cpu.max_rss_kb > 0
    run(test)


def test_many_quick_jobs_are_all_reaped(tmp_path: Path) -> None:
    count = 200  # SIGCHLDs coalesce: one signal may stand for many ended children

    async def test() -> None:
        jobs = Jobs()
        for job_id in range(count):
            jobs.start(launch(tmp_path, job_id, "true", stdout="/dev/null",
                              stderr="/dev/null"))
        deadline = time.monotonic() + 20
        while len(jobs.ended) < count:
            assert time.monotonic() < deadline, f"only {len(jobs.ended)} of {count} reaped"
            await asyncio.sleep(0.01)
        assert {o.exit_code for o in jobs.ended.values()} == {0}
        assert jobs.runner.jobs == {}
    run(test)


# --- containment: every process of a job, however it left the job's tree ---------------------

ESCAPES = {
    "setsid in a subshell": "(setsid sleep 1000 &); sleep 1000",
    "nohup in the background": "nohup sleep 1000 > /dev/null 2>&1 & sleep 1000",
    "a daemon (fork, setsid, fork)": (
        f"{sys.executable} -c 'import os, time\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "time.sleep(1000)'; sleep 1000"),
}


def marked(job_id: int) -> set[int]:
    value = marker_value(INSTALLATION, "db", job_id, 0)
    return {pid for pid, marker in marked_processes(INSTALLATION).items() if marker == value}


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("command", list(ESCAPES.values()), ids=list(ESCAPES))
def test_cancel_leaves_nothing_of_a_job_that_escaped_its_group(tmp_path: Path, command: str):
    async def test() -> None:
        jobs = Jobs(cancel_grace_s=0.5)
        jobs.start(launch(tmp_path, 1, command, stdout="/dev/null", stderr="/dev/null"))
        await until(lambda: len(marked(1)) >= 3, 5, "the job did not start its processes")
        escaped = marked(1)
        jobs.runner.cancel([("db", 1, 0)])
        assert (await jobs.outcome(1)).reason == "cancelled"
        await until(lambda: not marked(1), 5, f"still running after cancel: {marked(1)}")
        assert not any(alive(pid) for pid in escaped)
    run(test)


def test_what_a_job_leaves_behind_when_it_ends_is_ended(tmp_path: Path):
    async def test() -> None:
        jobs = Jobs()
        jobs.start(launch(tmp_path, 2, "(setsid sleep 1000 &); echo $$ > leader.pid",
                          stdout="/dev/null", stderr="/dev/null"))
        outcome = await jobs.outcome(2)
        assert outcome.exit_code == 0
        await until(lambda: not marked(2), 5, f"left running after the job ended: {marked(2)}")
    run(test)


def test_a_job_of_a_predecessor_is_adopted_and_its_end_seen(tmp_path: Path):
    import subprocess

    async def test() -> None:
        # started by "an exec-server that was killed": not our child
        env = {"PATH": PATH, MARKER: marker_value(INSTALLATION, "db", 3, 0)}
        shell = subprocess.Popen(["/bin/sh", "-c", "sleep 0.5"], env=env,
                                 start_new_session=True)
        jobs = Jobs()
        adopted = jobs.runner.adopt(("db", 3, 0), shell.pid, time.time(),
                                    env[MARKER])
        assert adopted is not None
        shell.wait()   # its real parent (here, the test) reaps it; the pidfd sees it end
        outcome = await jobs.outcome(3)
        assert outcome.reason == REASON_UNKNOWN_END and outcome.exit_code is None
        assert jobs.runner.jobs == {}
    run(test)


# --- memory limits -----------------------------------------------------------------------------

GROW = (f"{sys.executable} -c 'import time\n"
        "block = bytearray(400 * 1024 * 1024)\n"
        "time.sleep(30)'")
SHARED = (f"{sys.executable} -c 'import os, time\n"
          "block = bytearray(300 * 1024 * 1024)\n"   # touched once, then shared by the forks
          "kids = [pid for pid in (os.fork() for _ in range(8))\n"
          "        if pid or time.sleep(3) or os._exit(0)]\n"
          "[os.waitpid(k, 0) for k in kids]'")


def test_a_job_past_its_memory_limit_is_stopped_with_the_reason(tmp_path: Path):
    async def test() -> None:
        jobs = Jobs()
        started = time.monotonic()
        jobs.start(launch(tmp_path, 1, GROW, memory_limit_mb=100))
        outcome = await jobs.outcome(1, timeout=15)
        assert outcome.reason is not None and outcome.reason.startswith(
            "memory limit 100 MiB exceeded: "), outcome
        assert time.monotonic() - started < 10
    run(test)


def test_forked_workers_sharing_their_pages_are_counted_once(tmp_path: Path):
    async def test() -> None:
        jobs = Jobs()
        jobs.start(launch(tmp_path, 2, SHARED, memory_limit_mb=700))
        outcome = await jobs.outcome(2, timeout=30)
        # nine processes of ~300 MiB resident each, but PSS counts the shared pages once
        assert outcome.exit_code == 0 and outcome.reason is None, outcome
    run(test)


def test_warn_leaves_a_job_over_its_limit_running(tmp_path: Path, caplog):
    async def test() -> None:
        jobs = Jobs(memory_enforce="warn")
        jobs.start(launch(tmp_path, 3, GROW.replace("sleep(30)", "sleep(1.5)"),
                          memory_limit_mb=100))
        assert (await jobs.outcome(3, timeout=30)).reason is None
    with caplog.at_level("WARNING", logger="hq.execd.runner"):
        run(test)
    # the exec-server's log says so, once however long the job stays over
    warned = [r.getMessage() for r in caplog.records if "memory_enforce = warn" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("job 3: memory limit 100 MiB exceeded"), \
        warned

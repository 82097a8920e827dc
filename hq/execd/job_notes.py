"""The lines the exec-server adds to a job's own log file (``hq-submit -l FILE``).

Two lines per job: when and where it started (with its pid), and how it ended (exit code or
signal, the reason, CPU time and peak memory). The file is the user's: it is appended to as
the job's owner would, with the job's umask, never through a symlink; one that cannot be
written is logged in the exec-server's log, never a reason to fail the job.
"""

from __future__ import annotations

import logging
import os
import time

from hq.execd.runner import JobKey, Outcome

log = logging.getLogger(__name__)


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


class JobNotes:
    """The log files of the jobs that asked for one, from their start to their end."""

    def __init__(self) -> None:
        self._files: dict[JobKey, tuple[str, int]] = {}   # job -> (its -l file, its umask)

    def expect(self, key: JobKey, where: tuple[str, int] | None) -> None:
        """Job ``key`` is about to start: its file and umask, if it asked for one."""
        if where is not None:
            self._files[key] = where

    def started(self, key: JobKey, host: str, started_at: float, pid: int) -> None:
        if key in self._files:
            self._write(key, f"job {key[1]}: started on {host} at {when(started_at)}, "
                             f"pid {pid}")

    def ended(self, key: JobKey, outcome: Outcome) -> None:
        """The end line (also of a job that could not start); the file is forgotten."""
        if key not in self._files:
            return
        how = (f"killed by signal {outcome.signal}" if outcome.signal is not None
               else f"exit code {outcome.exit_code}" if outcome.exit_code is not None
               else "did not run")
        usage = "" if outcome.cpu_time_s is None else (
            f"; cpu {outcome.cpu_time_s:.2f} s, peak memory {(outcome.max_rss_kb or 0) // 1024}"
            " MiB")
        reason = f" ({outcome.reason})" if outcome.reason else ""
        self._write(key, f"job {key[1]}: ended at {when(outcome.ended_at)}, {how}{reason}{usage}")
        del self._files[key]

    def _write(self, key: JobKey, line: str) -> None:
        path, umask = self._files[key]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o666 & ~umask)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError as err:
            log.warning("job %s: cannot write its log file %s: %s", key[1], path, err)

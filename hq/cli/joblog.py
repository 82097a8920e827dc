"""``hq-client log``: print (or follow) a job's output files.

The user-server only says where the files are (``show``); hq-client reads them itself, as the
user, so the kernel decides who may read them. With ``--both`` the job's stdout goes to our
stdout and its stderr to our stderr, as if the job had run in the foreground.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, TYPE_CHECKING

from hq.cli.common import say
from hq.cli.jobview import FINISHED_STATES
from hq.errors import HqError, NotFound, PermissionDenied
from hq.protocol.messages import JobInfo, Show

if TYPE_CHECKING:
    from hq.protocol import BlockingClient

FILE_POLL_S = 0.2
STATE_POLL_S = 1.0
NOT_STARTED = frozenset({"pending", "held", "dispatched"})
_CHUNK = 1 << 16


class OutputFile:
    """One output file being copied to ``out``, from where the last copy stopped."""

    def __init__(self, path: str, out: IO[bytes]) -> None:
        self.path, self.out = path, out
        self.file: IO[bytes] | None = None

    def open(self) -> bool:
        """Open the file if it is there now; False when it does not exist (yet)."""
        if self.file is not None:
            return True
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115 - kept open while following
        except FileNotFoundError:
            return False
        except PermissionError:
            raise PermissionDenied(f"cannot read {self.path}: permission denied") from None
        except OSError as err:
            raise HqError(f"cannot read {self.path}: {err.strerror}") from None
        return True

    def copy_new(self) -> None:
        """Copy what was written since the last call; start over when the file was
        truncated or replaced (a requeued job writes it again)."""
        if not self.open():
            return
        assert self.file is not None
        self._drain()
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return
        opened = os.fstat(self.file.fileno())
        if (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev):
            self.close()
            self.copy_new()
        elif opened.st_size < self.file.tell():
            self.file.seek(0)
            self._drain()

    def _drain(self) -> None:
        assert self.file is not None
        while chunk := self.file.read(_CHUNK):
            self.out.write(chunk)
        self.out.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def output_files(job: JobInfo, which: str) -> list[OutputFile]:
    """The files to show for ``which`` (stdout, stderr or both); one file once."""
    if which == "stdout":
        return [OutputFile(job.stdout, sys.stdout.buffer)]
    if which == "stderr":
        return [OutputFile(job.stderr, sys.stdout.buffer)]
    files = [OutputFile(job.stdout, sys.stdout.buffer)]
    if job.stderr != job.stdout:
        files.append(OutputFile(job.stderr, sys.stderr.buffer))
    return files


def show_log(client: BlockingClient, job_id: int, which: str, follow: bool) -> int:
    """Print job ``job_id``'s output; with ``follow`` until the job has finished."""
    job = client.request(Show(id=job_id)).job
    files = output_files(job, which)
    try:
        if follow:
            _follow(client, job_id, job, files)
        else:
            _print_once(job, files)
    finally:
        for file in files:
            file.close()
    return 0


def _missing(job: JobInfo, file: OutputFile) -> HqError:
    return NotFound(f"job {job.id} ({job.state}): its output file {file.path} does not "
                    "exist (deleted, or written to a disk of its host that this host does "
                    "not see?)")


def _print_once(job: JobInfo, files: list[OutputFile]) -> None:
    for file in files:
        if file.open():
            file.copy_new()
        elif job.state in NOT_STARTED:
            say(f"job {job.id} has not started yet ({job.state})")
            return
        elif job.started_at is None and job.state in FINISHED_STATES:
            say(f"job {job.id} ended without starting ({job.state})")
            return
        else:
            raise _missing(job, file)


def _follow(client: BlockingClient, job_id: int, job: JobInfo,
            files: list[OutputFile]) -> None:
    told_waiting = False
    next_state_check = time.monotonic() + STATE_POLL_S
    while True:
        for file in files:
            file.copy_new()
        if job.state in FINISHED_STATES:
            break
        if not told_waiting and job.state in NOT_STARTED and not any(f.file for f in files):
            say(f"job {job_id} has not started yet ({job.state}); waiting for it")
            told_waiting = True
        time.sleep(FILE_POLL_S)
        if time.monotonic() >= next_state_check:
            job = client.request(Show(id=job_id)).job
            next_state_check = time.monotonic() + STATE_POLL_S
    # The job has finished: the loop above copied its last output. A file that never
    # appeared is worth a word unless the job never ran.
    for file in files:
        if file.file is None and job.started_at is not None:
            raise _missing(job, file)
    if job.started_at is None:
        say(f"job {job_id} ended without starting ({job.state})")

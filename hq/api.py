"""hq's Python API, for a lab's own scripts: submit jobs and arrays, look at them, wait for
them, cancel them, as the user running the script. It goes through that user's
hq-user-server exactly as hq-submit and hq-client do: the same checks, the same signatures,
the same answers (a job of another user is "not found").

    from hq.api import Client

    with Client() as hq:
        ids = hq.submit("./simulate --case $HQ_ARRAY_INDEX", array=range(1, 101), cap=10)
        merge = hq.submit("./merge", after=[ids[0]])        # after the whole array
        results = hq.wait(ids + merge)
        failed = [r.id for r in results if r.state != "done"]
        again = hq.resubmit(ids[0], states=("failed",))

Errors are ``hq.errors.HqError`` subclasses with one-line messages (``UsageError`` for a bad
option, ``NotFound`` for a job that is not yours, ``Unavailable`` when hq is not running).
Jobs come back as the ``JobInfo`` records of doc/protocol.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from hq.errors import UsageError
from hq.protocol.messages import (
    MAX_IDS,
    ArrayCounts,
    Cancel,
    DependencyRef,
    JobInfo,
    Jobs,
    JobWaitState,
    Resubmit,
    Show,
    UpdateArray,
    Wait,
)

if TYPE_CHECKING:
    from hq.jobspec import JobSpec
    from hq.protocol import BlockingClient

PROGRAM = "hq.api"


class Client:
    """A connection to your hq-user-server (started when it is not running)."""

    def __init__(self, hqpath: str | Path | None = None) -> None:
        from hq.cli.userd_link import connect_user_server
        from hq.config import Installation

        inst = Installation(Path(hqpath)) if hqpath is not None else Installation.locate()
        self._link: BlockingClient = connect_user_server(inst, PROGRAM)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._link.close()

    # --- submitting ------------------------------------------------------------------------

    def submit(self, command: str, *, array: Iterable[int] | None = None,
               cap: int | None = None, after: Sequence[int] = (),
               dependency: Sequence[tuple[str, int]] = (), kill_on_invalid_dep: bool = True,
               cores: int = 1, memory_mb: int | None = None, gpus: int = 0,
               constraint: str | None = None, time_limit_s: int | None = None,
               retries: int = 0, name: str | None = None, group: str | None = None,
               priority: int = 0, cwd: str | Path | None = None, stdout: str | None = None,
               stderr: str | None = None, hold: bool = False,
               environment: Mapping[str, str] | None = None) -> list[int]:
        """Submit ``command`` (run by /bin/sh) once, or once per index of ``array`` (with
        HQ_ARRAY_INDEX set); returns the job ids (an array's id is the first). ``after``:
        afterok on these jobs (an array's id: all of it); ``dependency``: (kind, id) pairs,
        kind afterok, afterany, afternotok or aftercorr. The job gets ``environment`` (by
        default this process's) and this process's umask."""
        from hq.cli.submit import job_directory, send_submission, submit_request
        from hq.jobspec import DEFAULT_STDERR, DEFAULT_STDOUT, JobSpec

        spec = JobSpec(command=command, cwd=job_directory(None if cwd is None else str(cwd)),
                       cores=cores, memory_mb=memory_mb, gpus=gpus, constraint=constraint,
                       time_limit_s=time_limit_s, retries=retries, name=name, group=group,
                       priority=priority, stdout=stdout or DEFAULT_STDOUT,
                       stderr=stderr or DEFAULT_STDERR)
        indexes = None if array is None else list(dict.fromkeys(array))
        if indexes is not None and not indexes:
            raise UsageError("array: no indexes")
        specs = [spec] if indexes is None else _array_specs(spec, indexes)
        for each in specs:
            each.validate()
        request = submit_request(specs, hold=hold)
        if environment is not None:
            request = msgspec.structs.replace(request, environment=dict(environment))
        refs = [DependencyRef("afterok", i) for i in after]
        refs += [DependencyRef(kind, i) for kind, i in dependency]  # type: ignore[arg-type]
        request = msgspec.structs.replace(request, array_cap=cap, dependencies=refs,
                                          kill_on_invalid_dep=kill_on_invalid_dep)
        return list(send_submission(self._link, request).ids)

    def resubmit(self, array: int, states: Sequence[str] = ("failed", "cancelled"),
                 *, hold: bool = False) -> list[int]:
        """Submit again the jobs of ``array`` (or one job) that ended in ``states``."""
        again = [j.id for j in self.jobs(array=array) if j.state in states] or \
            [j.id for j in [self.show(array)] if j.state in states]
        if not again:
            return []
        return list(self._link.request(Resubmit(ids=again, hold=hold), timeout=60.0).ids)

    def update_cap(self, array: int, cap: int | None) -> None:
        """How many of an unfinished array's jobs may run at once (None: no cap)."""
        self._link.request(UpdateArray(array=array, cap=cap or 0))

    # --- looking ---------------------------------------------------------------------------

    def array_counts(self, array: int) -> dict[str, int]:
        """How many jobs of ``array`` are in each state, without listing them."""
        reply = self._link.request(ArrayCounts(array=array))
        return {str(state): n for state, n in reply.counts.items() if n}

    def show(self, job_id: int) -> JobInfo:
        return self._link.request(Show(id=job_id)).job

    def jobs(self, ids: Sequence[int] | None = None, *, array: int | None = None,
             states: Sequence[str] | None = None) -> list[JobInfo]:
        """Your jobs (finished ones too), in id order: these ``ids``, the jobs of ``array``,
        or all, in ``states`` if given."""
        found: list[JobInfo] = []
        pieces = [None] if ids is None else [list(ids[i:i + MAX_IDS])
                                             for i in range(0, len(ids), MAX_IDS)]
        for piece in pieces:
            before = None
            while True:
                page = self._link.request(Jobs(ids=piece, array=array, before=before,
                                               states=None if states is None
                                               else list(states)))  # type: ignore[arg-type]
                found = page.jobs + found
                if not page.more or not page.jobs:
                    break
                before = page.jobs[0].id
        return sorted(found, key=lambda j: j.id)

    def wait(self, ids: Sequence[int], timeout: float | None = None) -> list[JobWaitState]:
        """Wait until all of ``ids`` have ended (or ``timeout`` seconds); their states."""
        deadline = None if timeout is None else time.monotonic() + timeout
        latest: dict[int, JobWaitState] = {}
        open_ids = list(dict.fromkeys(ids))
        while open_ids:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            step = 10.0 if left is None else max(0.1, min(10.0, left))
            for start in range(0, len(open_ids), MAX_IDS):
                reply = self._link.request(Wait(ids=open_ids[start:start + MAX_IDS],
                                                timeout_s=step), timeout=step + 30.0)
                latest.update({j.id: j for j in reply.jobs})
            open_ids = [i for i in open_ids if not latest[i].state.finished]
        return [latest[i] for i in dict.fromkeys(ids) if i in latest]

    def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        """Cancel jobs; each id's result (cancelled, cancelling, not found, already done)."""
        results: dict[int, str] = {}
        for start in range(0, len(ids), MAX_IDS):
            reply = self._link.request(Cancel(ids=list(ids[start:start + MAX_IDS])))
            results.update({r.id: r.result for r in reply.results})
        return results

    def cancel_array(self, array: int) -> dict[str, int]:
        """Cancel every job of ``array`` (those still being stored too); how many got each
        result (``{"cancelled": 498, "already done": 2}``)."""
        reply = self._link.request(Cancel(arrays=[array]), timeout=120.0)
        return dict(reply.arrays[0].results)


def _array_specs(spec: JobSpec, indexes: list[int]) -> list[JobSpec]:
    """As ``hq-submit --array``: the indexes as text (``1-500,507``) when it reads back in
    the same order; else one spec per index, in the order given."""
    from hq.array_indexes import compact
    from hq.jobspec import array_of

    if indexes == sorted(indexes):
        return array_of(spec, compact(indexes))
    return [msgspec.structs.replace(spec, array_index=i) for i in indexes]


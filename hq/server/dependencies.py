"""Dependencies between jobs, in hq-server's memory: which are unmet, and what a job's end
means for the jobs that wait on it.

Slurm's words: ``afterok`` needs the job done (exit 0), ``afternotok`` failed or cancelled,
``afterany`` just ended. ``aftercorr`` (element i of one array after element i of another)
is stored as ``afterok`` between those two elements, and an array named as a whole is one
dependency on each of its elements: each row of ``job_dependencies`` is one pair of jobs.

A job with an unmet dependency is kept out of the pending queues (``waiting``): the scheduler
never looks at it, so the cost of a round does not depend on how many jobs wait on others.
Its last dependency met, it joins its queue; one that can never be met any more dooms the job
(the caller cancels it, or keeps it pending with the reason when its submission said
``--kill-on-invalid-dep=no``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hq.job import Job
from hq.states import DependencyKind, JobState


def verdict(kind: DependencyKind, state: JobState) -> bool | None:
    """True: met; False: can never be met; None: not yet (the job has not ended)."""
    if not state.finished:
        return None
    if kind is DependencyKind.AFTERANY:
        return True
    if kind is DependencyKind.AFTEROK:
        return state is JobState.DONE
    return state is not JobState.DONE


def never_text(job_id: int, state: JobState) -> str:
    """The reason a dependant is given when a dependency can never be met."""
    how = "succeeded" if state is JobState.DONE else str(state)
    return f"dependency never satisfied: job {job_id} {how}"


@dataclass(slots=True)
class Dependencies:
    """The unmet dependencies of unfinished jobs, indexed both ways."""

    # job -> the jobs it still waits for, with the kind of each
    unmet: dict[int, dict[int, DependencyKind]] = field(default_factory=dict)
    # job -> the jobs that wait for it
    dependants: dict[int, set[int]] = field(default_factory=dict)
    # pending jobs kept out of the queues until their dependencies are met
    waiting: dict[int, Job] = field(default_factory=dict)

    def add(self, job_id: int, on: int, kind: DependencyKind) -> None:
        """``job_id`` waits for ``on`` (which has not ended)."""
        self.unmet.setdefault(job_id, {})[on] = kind
        self.dependants.setdefault(on, set()).add(job_id)

    def blocks(self, job_id: int) -> bool:
        return job_id in self.unmet

    def waits_for(self, job_id: int) -> dict[int, DependencyKind]:
        return self.unmet.get(job_id, {})

    def ended(self, job: Job) -> tuple[list[int], list[int]]:
        """``job`` ended: (the jobs whose last dependency that was, the jobs it dooms).
        A doomed job keeps its unmet entry, so it never joins a queue by itself."""
        freed, doomed = [], []
        for dependant in self.dependants.pop(job.id, ()):
            waits = self.unmet.get(dependant)
            if waits is None or job.id not in waits:
                continue
            met = verdict(waits[job.id], job.state)
            if met:
                del waits[job.id]
                if not waits:
                    del self.unmet[dependant]
                    freed.append(dependant)
            else:
                doomed.append(dependant)
        if doomed:   # still waiting for it: a resubmission of it may yet rewire them
            self.dependants[job.id] = set(doomed)
        return freed, doomed

    def forget(self, job_id: int) -> None:
        """``job_id`` ended itself: it waits for nothing any more."""
        for on in self.unmet.pop(job_id, {}):
            waiting = self.dependants.get(on)
            if waiting is not None:
                waiting.discard(job_id)
                if not waiting:
                    del self.dependants[on]
        self.waiting.pop(job_id, None)

    def rewire(self, old: int, new: int) -> list[int]:
        """The jobs that waited for ``old`` wait for ``new`` instead (a resubmission of
        ``old``); returns them."""
        moved = []
        for job_id in self.dependants.pop(old, ()):
            waits = self.unmet.get(job_id)
            if waits is not None and old in waits:
                waits[new] = waits.pop(old)
                self.dependants.setdefault(new, set()).add(job_id)
                moved.append(job_id)
        return moved

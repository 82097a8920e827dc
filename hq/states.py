"""Job and host states and the transitions allowed between them.

This module is the one place that says which state change is legal; every component that
changes a state asks ``check_job_transition`` or ``check_host_transition`` first. It imports
nothing from hq.
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """Where a job is in its life. Values are the words stored in the database."""

    PENDING = "pending"        # waiting for a host, a dependency or cluster activation
    HELD = "held"              # kept out of scheduling until released
    DISPATCHED = "dispatched"  # sent to the owner's user-server, start not yet confirmed
    RUNNING = "running"
    DONE = "done"              # exited with status 0
    FAILED = "failed"          # non-zero exit, killed by a signal, time limit, or could not start
    CANCELLED = "cancelled"    # cancelled by its owner or an admin, or a dependency can never hold

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATES

    @property
    def active(self) -> bool:
        """Holds resources on a host."""
        return self in (JobState.DISPATCHED, JobState.RUNNING)


FINISHED_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

_JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.HELD, JobState.DISPATCHED, JobState.CANCELLED,
                                 JobState.FAILED}),
    JobState.HELD: frozenset({JobState.PENDING, JobState.CANCELLED}),
    # dispatched -> pending: the user-server could not start it (host unreachable) or lost it
    JobState.DISPATCHED: frozenset({JobState.RUNNING, JobState.PENDING, JobState.DONE,
                                    JobState.FAILED, JobState.CANCELLED}),
    # running -> pending: requeued after its host was lost and the lease expired
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED,
                                 JobState.PENDING}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(ValueError):
    """A state change the state machine forbids; a bug or a stale message, never user input."""


def check_job_transition(old: JobState, new: JobState) -> None:
    """Raise InvalidTransition unless a job may go from ``old`` to ``new``."""
    if new not in _JOB_TRANSITIONS[old]:
        raise InvalidTransition(f"job state {old} -> {new} is not allowed")


class HostState(enum.StrEnum):
    """Whether hq can reach a host; independent of the admin's active/drained switches."""

    UNKNOWN = "unknown"                # no exec-server contacted yet since hq-server started
    UP = "up"                          # an exec-server answers heartbeats
    UNREACHABLE = "unreachable"        # ssh connect or exec-server spawn failed (reason kept)
    HEARTBEAT_LOST = "heartbeat_lost"  # was up, heartbeats stopped; jobs wait for the lease


_HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    HostState.UNKNOWN: frozenset({HostState.UP, HostState.UNREACHABLE, HostState.HEARTBEAT_LOST}),
    HostState.UP: frozenset({HostState.UNREACHABLE, HostState.HEARTBEAT_LOST}),
    # the next contact that works brings it back; a failed retry keeps it unreachable
    HostState.UNREACHABLE: frozenset({HostState.UP}),
    HostState.HEARTBEAT_LOST: frozenset({HostState.UP, HostState.UNREACHABLE}),
}


def check_host_transition(old: HostState, new: HostState) -> None:
    """Raise InvalidTransition unless a host may go from ``old`` to ``new`` (a host stays in
    its state with a new reason without a transition; it never becomes ``unknown`` again)."""
    if new is not old and new not in _HOST_TRANSITIONS[old]:
        raise InvalidTransition(f"host state {old} -> {new} is not allowed")


class DependencyKind(enum.StrEnum):
    """Slurm's words: afterok needs exit 0, afternotok a failure, afterany just an end."""

    AFTEROK = "afterok"
    AFTERANY = "afterany"
    AFTERNOTOK = "afternotok"


class Role(enum.StrEnum):
    """Roles granted in etc/users."""

    ADMIN = "admin"
    USER = "user"


class EventKind(enum.StrEnum):
    """What an event-log row is about."""

    JOB = "job"
    HOST = "host"
    CLUSTER = "cluster"
    USER = "user"
    SERVER = "server"

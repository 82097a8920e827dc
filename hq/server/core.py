"""hq-server's core: its parts, each built once with exactly what it needs.

``Server`` holds the live state (``Cluster``), the one recording path (``Journal`` over the
database ``Store``), the user-server ``Links``, the ``Dispatcher`` (rounds and reports),
``Health`` (silence and leases) and the ``Layouts`` of big arrays, all on one ``Clock``. The
socket (``hq.server.listener``) and the request handlers (``hq.server.requests``,
``hq.server.admin``) use these; none of them reaches back into ``Server``. Tests build a
``Server`` on a scratch database with a clock they step, and drive it through the same
handlers the socket does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field

from hq.config import Installation, ServerConfig
from hq.db.jobs import find_job, submission_counts
from hq.db.users import UserRecord
from hq.errors import NotFound
from hq.job import Job
from hq.limits_config import Limit, Limits, load_limits
from hq.protocol import Channel
from hq.protocol.messages import MonitorHosts
from hq.server.clock import Clock
from hq.server.dispatch import Dispatcher
from hq.server.health import Health
from hq.server.journal import Journal
from hq.server.layout import Layouts
from hq.server.links import Links
from hq.server.notifications import Notifier
from hq.server.scheduler import GroupLimits, Policy, UserLimits
from hq.server.state import Cluster
from hq.server.store import Store
from hq.states import JobState


def policy_of(config: ServerConfig) -> Policy:
    return Policy(load_factor=config.load_factor,
                  max_running_per_user=config.max_running_per_user,
                  fair_share=config.fair_share)


@dataclass(eq=False)
class Server:
    inst: Installation
    config: ServerConfig
    database: str                 # how the database is described to the admin (no password)
    cluster: Cluster
    store: Store
    users: dict[str, UserRecord]
    clock: Clock
    policy: Policy = field(init=False)
    journal: Journal = field(init=False)
    links: Links = field(init=False)
    dispatcher: Dispatcher = field(init=False)
    layouts: Layouts = field(init=False)
    health: Health = field(init=False)
    notifier: Notifier = field(init=False)
    started_at: dt.datetime = field(init=False)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    monitor: Channel | None = None   # the host monitor's link, while it is connected

    def __post_init__(self) -> None:
        self.policy = policy_of(self.config)
        self.started_at = self.clock.now()
        self.cluster.retry_after_s = self.config.retry_unreachable_s
        self.cluster.facts_timeout_s = self.config.monitor_timeout_s
        self.journal = Journal(self.cluster, self.store, self.clock)
        self.users_changed()
        self.cluster.usage.half_life_s = self.config.fairshare_half_life_s
        self.links = Links()
        self.dispatcher = Dispatcher(self.cluster, self.journal, self.links, self.policy,
                                     self.clock)
        self.layouts = Layouts(self.cluster, self.journal, self.dispatcher.wake)
        self.health = Health(self.cluster, self.journal, self.links, self.dispatcher,
                             self.config, self.clock)
        self.notifier = Notifier(self.journal, self.store, self.links, self.clock,
                                 self.cluster.database_id)

    async def own_job(self, owner: str, job_id: int) -> Job | None:
        """``owner``'s job ``job_id``, from memory or else the database; None when there is
        none, or it is another user's (which the caller must not tell apart)."""
        job = self.cluster.own_job(owner, job_id)
        if job is None:
            job = await self.store.read(lambda conn: find_job(conn, job_id),
                                        what=f"job {job_id}")
        return job if job is not None and job.owner == owner else None

    async def own_array(self, owner: str, array_id: int) -> Job:
        """The first job of ``owner``'s array ``array_id``; NotFound otherwise."""
        head = await self.own_job(owner, array_id)
        if head is None or head.array_id != head.id:
            raise NotFound(f"no such array: {array_id}")
        return head

    async def ended_counts(self, submission_id: int) -> dict[JobState, int]:
        """How many jobs of a submission whose jobs have all ended (so none of them is in
        ``cluster.submissions``) ended in each state, once everything recorded so far has
        committed."""
        await self.journal.committed()
        stored = await self.store.read(lambda conn: submission_counts(conn, submission_id),
                                       what=f"counts of submission {submission_id}")
        return {JobState(state): n for state, n in stored.items()}

    def users_changed(self, users: dict[str, UserRecord] | None = None) -> None:
        """etc/users as loaded (at start and at each reload, then ``users`` replaces
        ``self.users``): ids, shares, and limits with [limits] and group lines read again.
        A ConfigError in those changes nothing."""
        users = self.users if users is None else users
        limits = load_limits(self.inst, (name for name, u in users.items() if not u.retired))
        self.users = users
        self.journal.users_by_name = {name: u.id for name, u in users.items()}
        self.cluster.user_limits = _limits_of(users, limits)
        self.cluster.group_limits = {name: GroupLimits(g.limit.max_running, g.limit.max_cores)
                                     for name, g in limits.groups.items()}
        self.cluster.shares = {name: u.share for name, u in users.items()
                               if u.share != 1.0}


def _limits_of(users: dict[str, UserRecord], limits: Limits) -> dict[str, UserLimits]:
    """Each user's limits by the precedence rule of ``hq.limits_config``; users without
    any are left out."""
    result = {}
    for name, u in users.items():
        own = limits.of_user(name, Limit(u.max_running, u.max_cores))
        groups = limits.groups_of(name)
        if own.max_running is not None or own.max_cores is not None or groups:
            result[name] = UserLimits(own.max_running, own.max_cores, groups)
    return result


def monitor_hosts(server: Server) -> MonitorHosts:
    """What the host monitor is to watch: every host in etc/cluster.tab."""
    return MonitorHosts(hosts=[h.address_info() for h in server.cluster.hosts.values()
                               if not h.retired],
                        interval_s=server.config.heartbeat_interval_s)


async def keep_monitor(server: Server) -> None:
    """Keep the host monitor (``hq-monitor --hub``, hq-server's own account) running for as
    long as hq-server runs: started again, after a pause, whenever it ends."""
    import os
    import sys

    log = logging.getLogger("hq.server.monitor")
    env = {**os.environ, "HQPATH": str(server.inst.root)}
    pause = 1.0
    while True:
        started = server.clock.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "hq.monitor.main", "--hub", env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            code = await process.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
            raise
        log.warning("monitor: pid %d ended (status %s); starting it again", process.pid, code)
        pause = 1.0 if server.clock.monotonic() - started > 60 else min(pause * 2, 30.0)
        await asyncio.sleep(pause)


@dataclass(eq=False)
class Session:
    """One connected client: who it is (from the kernel) and in which role."""

    user: UserRecord
    role: str
    pid: int

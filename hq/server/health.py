"""Silence: hosts whose exec-servers stop answering, and the lease after which their jobs are
requeued (DESIGN §6). ``Health.check`` is one step at the clock's time; ``watch`` repeats it.
"""

from __future__ import annotations

import asyncio
import logging

from hq.config import ServerConfig
from hq.server.clock import Clock
from hq.server.dispatch import Dispatcher
from hq.server.journal import Journal
from hq.server.links import Links
from hq.server.state import Cluster
from hq.states import HostState

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 0.5
HOST_RECORD_S = 10.0   # how often hosts' load and heartbeat times reach the database


class Health:
    def __init__(self, cluster: Cluster, journal: Journal, links: Links, dispatcher: Dispatcher,
                 config: ServerConfig, clock: Clock) -> None:
        self.cluster, self.journal, self.links = cluster, journal, links
        self.dispatcher, self.config, self.clock = dispatcher, config, clock
        self._hosts_recorded_at = 0.0

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            try:
                self.check()
            except Exception:
                log.exception("health check failed")

    def check(self) -> None:
        """Keep a user's jobs off a host where that user's exec-server went silent; requeue
        them once the lease and its grace have run out (the exec-server has killed them by
        then). A user's silence says nothing about the host for others: the host monitor
        does that. A host the monitor has not heard from for ``monitor_timeout`` is
        "heartbeat lost"."""
        cluster, config = self.cluster, self.config
        now_m, requeued = self.clock.monotonic(), False
        for (owner, host_name), jobs in cluster.active_pairs().items():
            heard = cluster.last_heard.setdefault((owner, host_name), now_m)
            silence = now_m - heard
            if silence > config.heartbeat_timeout_s and owner in self.links:
                cluster.user_blocks.setdefault((owner, host_name), (
                    f"no heartbeat for {silence:.0f} s", now_m))
            if silence > config.lease_s + config.lease_grace_s:
                why = f"host {host_name}: no contact for {silence:.0f} s (lease expired)"
                for job in jobs:
                    self.dispatcher.lost(job, why)
                del cluster.last_heard[(owner, host_name)]
                requeued = True
        for host in cluster.hosts.values():
            if (host.facts_at is not None and host.state is HostState.UP
                    and now_m - host.facts_at > config.monitor_timeout_s):
                self.journal.host_state(host, HostState.HEARTBEAT_LOST,
                                        f"no report of the host monitor for "
                                        f"{now_m - host.facts_at:.0f} s")
        if requeued:
            self.dispatcher.wake()
        if now_m - self._hosts_recorded_at >= HOST_RECORD_S and self.journal.host_load():
            self._hosts_recorded_at = now_m

"""The host monitor: facts about every host, measured as hq-server's own account.

hq-server keeps one hub alive (a child process of its own, ``hq-monitor --hub``); the hub
connects back to hq-server's socket in the role ``monitor`` (hq-server accepts it only from
its own uid), learns the hosts to watch (``MonitorHosts``), and for each one runs a probe: in
itself for hq-server's host, over ssh as hq-server's account elsewhere (``hq-monitor
--probe`` there, whose reports come back on the channel's stdout). It forwards every report
(``HostFacts``) and whether each host can be reached (``HostReach``). A probe that breaks is
started again after ``retry_s``; a host it cannot reach is reported unreachable with the
reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import msgspec

from hq.config import Installation, ServerConfig
from hq.errors import HqError
from hq.monitor.probe import Probe
from hq.protocol import Channel, open_unix_channel
from hq.protocol.frames import HEADER, decode_as
from hq.protocol.messages import (
    PROBE_SENDS,
    SERVER_SENDS_MONITOR,
    HostAddress,
    HostReach,
    MonitorHosts,
)

log = logging.getLogger(__name__)

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
RETRY_S = 5.0


def is_local(address: str) -> bool:
    import socket

    return address in LOCAL_NAMES or address in (socket.gethostname(), socket.getfqdn())


class Hub:
    def __init__(self, inst: Installation, config: ServerConfig) -> None:
        self.inst, self.config = inst, config
        self.server: Channel | None = None
        self.watchers: dict[str, asyncio.Task[None]] = {}
        self.hosts: dict[str, HostAddress] = {}
        self.interval_s = config.heartbeat_interval_s
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        channel, _welcome = await open_unix_channel(
            str(self.config.socket_path), "hq-server", "monitor", "hq-monitor",
            accepts=SERVER_SENDS_MONITOR, expect_uid=os.geteuid())
        self.server = channel
        await channel.serve(self._on_server_message)
        log.info("monitor: hq-server went away, stopping")
        for task in self.watchers.values():
            task.cancel()

    def _on_server_message(self, message: Any) -> None:
        if isinstance(message, MonitorHosts):
            self.interval_s = message.interval_s
            wanted = {h.name: h for h in message.hosts}
            for name in list(self.watchers):
                if name not in wanted or wanted[name] != self.hosts.get(name):
                    self.watchers.pop(name).cancel()
            self.hosts = wanted
            for name, host in wanted.items():
                if name not in self.watchers:
                    self.watchers[name] = asyncio.create_task(self._watch(host))

    def _send(self, message: Any) -> None:
        if self.server is not None:
            self.server.send(message)

    async def _watch(self, host: HostAddress) -> None:
        """Report ``host`` for as long as it is wanted; start its probe again if it breaks."""
        while True:
            try:
                if is_local(host.address):
                    await self._probe_here(host)
                else:
                    await self._probe_over_ssh(host)
                reason = "its monitor probe ended"
            except asyncio.CancelledError:
                raise
            except HqError as err:
                reason = str(err)
            except Exception as err:  # paramiko and OS errors: the host's problem
                reason = f"{type(err).__name__}: {err}"
            log.warning("host %s: %s", host.name, reason)
            self._send(HostReach(host=host.name, state="unreachable", reason=reason[:1000]))
            await asyncio.sleep(RETRY_S)

    async def _probe_here(self, host: HostAddress) -> None:
        probe = Probe()
        probe.sample()
        self._send(HostReach(host=host.name, state="up"))
        while True:
            await asyncio.sleep(self.interval_s)
            facts = probe.sample()
            if facts is not None:
                self._send(msgspec.structs.replace(facts, host=host.name))

    async def _probe_over_ssh(self, host: HostAddress) -> None:
        from hq.auth import user_name
        from hq.ssh import SshTarget, open_remote_streams, open_ssh

        target = SshTarget(host=host.name, address=host.address, port=host.ssh_port,
                           user=user_name(os.geteuid()))
        client = await asyncio.to_thread(open_ssh, target, policy=self.config.host_key_policy,
                                         connect_timeout=self.config.connect_timeout_s)
        argv = ["env", f"HQPATH={self.inst.root}", sys.executable, "-P", "-m",
                "hq.monitor.main", "--probe", "--interval", f"{self.interval_s:g}"]
        reader, _writer, close = await open_remote_streams(client, argv)
        reached = False
        try:
            while True:
                # silent this long: "no heartbeat", as hq-server's heartbeat_timeout says
                header = await asyncio.wait_for(
                    reader.readexactly(HEADER.size),
                    max(self.config.heartbeat_timeout_s, 2 * self.interval_s))
                (length,) = HEADER.unpack(header)
                if length > 65536:
                    raise HqError(f"the probe sent a frame of {length} bytes")
                facts = decode_as(PROBE_SENDS, await reader.readexactly(length))
                if not reached:
                    self._send(HostReach(host=host.name, state="up"))
                    reached = True
                self._send(msgspec.structs.replace(facts, host=host.name))
        except asyncio.IncompleteReadError:
            raise HqError("the ssh connection ended") from None
        except TimeoutError:
            raise HqError("the probe went silent") from None
        finally:
            close()
            await asyncio.to_thread(client.close)


def probe_forever(interval_s: float) -> None:
    """``hq-monitor --probe``: a report on stdout every ``interval_s`` until stdin closes."""
    import select

    from hq.protocol import encode

    probe = Probe()
    probe.sample()
    out = sys.stdout.buffer
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], interval_s)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return   # the hub went away
        facts = probe.sample()
        if facts is not None:
            out.write(encode(facts))
            out.flush()


def hub_main(inst: Installation, config: ServerConfig) -> None:
    asyncio.run(Hub(inst, config).run())


"""The exec-server daemon: one per user and host, runs that user's jobs and reports on them.

It listens on ``<runtime dir>/execd-<hostname>.sock`` (0600, in the user's 0700 runtime
directory) and serves one controlling user-server at a time, reached through
``hq-exec-server --bridge``; the newest connection wins, which is how a new user-server
re-adopts running jobs. Messages are those of doc/protocol.md ("user-server <-> exec-server").

What it keeps in memory is its whole view: running jobs (in the ``JobRunner``), ended jobs
not yet acknowledged, and the ids acknowledged in the last hour, so that no job starts twice.
A job is known by (database identity, job id): the controller's hello names its database,
and the link speaks for that database's jobs only, so a daemon that outlived a database never
confuses its jobs with a new one's. Events are batched to the controller; without one they
wait: ``ended`` until acked, ``started`` folded into the answer to ``sync``.

The lease is kept per database: jobs of a database whose user-servers have not been in contact
for ``lease_s`` are killed. Ends not yet acknowledged and the last contacts are in a journal
(``hq.execd.journal``); a new daemon replays it and finds its predecessor's running jobs by
their markers (``hq.execd.processes``), re-adopting them or, when their lease ran out,
killing them before it starts anything. It exits by itself after ``idle_timeout_s`` with
nothing running, nothing unacknowledged and no controller. Running jobs survive the loss of the
controller and the exit of the daemon itself: they belong to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from hq import auth, jobspec
from hq.errors import HqError, ProtocolError
from hq.execd import processes
from hq.execd.event_batch import EventBatch
from hq.execd.job_notes import JobNotes
from hq.execd.journal import ExecJournal
from hq.execd.launching import job_environment, launch_of
from hq.execd.pinning import CpuPinner
from hq.execd.queue import JobQueue, Waiting
from hq.execd.relay import serve_command
from hq.execd.runner import (
    REASON_CANCELLED,
    REASON_LEASE,
    REASON_UNKNOWN_END,
    REASON_WITHDRAWN,
    JobKey,
    JobRunner,
    Outcome,
    RunningJob,
)
from hq.execd.settings import Settings
from hq.execd.takeover import survey
from hq.protocol import (
    MAX_FRAME,
    Channel,
    check_hello,
    error_message,
    peer_credentials,
    welcome,
)
from hq.protocol.messages import (
    USERD_SENDS_EXECD,
    Ack,
    CancelJobs,
    Heartbeat,
    Hello,
    JobEnded,
    JobStarted,
    Lease,
    QueuedJob,
    Request,
    Run,
    RunJob,
    SubmissionEnv,
    SyncReply,
    SyncRequest,
    Withdraw,
)
from hq.protocol.messages import (
    RunningJob as RunningJobInfo,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
ACKED_MEMORY_S = 3600.0  # an acknowledged id is remembered this long ...
ACKED_MEMORY_MAX = 100_000  # ... and at most this many, so memory stays bounded
LEASE_KILL_GRACE_S = 1.0  # the server waits lease + grace (5 s): be well within it
RUN_CHUNK = 64          # jobs started between two turns of the loop (reaping, heartbeats)


class ExecServer:
    """The daemon, serving ``sock`` (listening, bound to ``socket_path``): ``await serve()``.

    The caller makes sure no other daemon serves that name (``hq.execd.main.listen``).
    """

    def __init__(self, sock: socket.socket, socket_path: Path, *, hostname: str, user: str,
                 installation: str, settings: Settings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.sock, self.socket_path = sock, socket_path
        self.hostname, self.user, self.installation = hostname, user, installation
        self.settings = settings or Settings()
        self.clock = clock
        self.runner = JobRunner(self._job_ended, clock=clock)
        self.waiting = JobQueue()   # jobs handed over ahead of a free core
        self._starting = False
        self._start_again: set[str] = set()
        self.ended: dict[JobKey, JobEnded] = {}  # ended events not yet acknowledged
        self.acked: OrderedDict[JobKey, float] = OrderedDict()  # key -> when acknowledged
        self.controller: Channel | None = None
        # database -> when one of its user-servers was last in contact (the lease, per
        # database: a job's lease counts from its start when none has been yet)
        self.last_contact: dict[str, float] = {}
        self.journal = ExecJournal(socket_path.with_suffix(".journal"))
        self._key: bytes | None = None
        self.notes = JobNotes()   # the -l files of the jobs that asked for one
        self.events = EventBatch(lambda: self.controller, self.journal.flush)
        self._stop: asyncio.Event | None = None

    # --- start and stop -------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT or the idle timeout; running jobs are left alone."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.runner.install(loop)
        self.take_over()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._terminate, signum)
        server = await asyncio.start_unix_server(self._connected, sock=self.sock,
                                                 limit=MAX_FRAME)
        log.info("exec-server %s: pid %s serving %s for user %s (idle timeout %s s)",
                 self.hostname, os.getpid(), self.socket_path, self.user,
                 self.settings.idle_timeout_s)
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._stop.wait()
        finally:
            watchdog.cancel()
            # The name goes first, so that a bridge from now on starts a new daemon instead of
            # connecting to one that is going away.
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            server.close()
            if self.controller is not None:
                self.controller.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self.runner.uninstall()
            self.journal.close()
        if self.runner.jobs or self.ended:
            log.warning("exec-server %s: exiting with %d job(s) running and %d end(s) "
                        "unacknowledged", self.hostname, len(self.runner.jobs), len(self.ended))
        log.info("exec-server %s: pid %s stopped", self.hostname, os.getpid())

    def _terminate(self, signum: int) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            os._exit(1)  # the second TERM: stop now
        log.info("exec-server %s: %s received, stopping (running jobs are left alone)",
                 self.hostname, signal.Signals(signum).name)
        self._stop.set()

    async def _watchdog(self) -> None:
        """Exit after the idle timeout; the place where the lease check will go."""
        assert self._stop is not None
        idle_since: float | None = None
        while True:
            await asyncio.sleep(min(1.0, self.settings.idle_timeout_s / 5))
            now = self.clock()
            self._check_lease(now)
            if self.runner.jobs or self.ended or self.controller is not None:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self.settings.idle_timeout_s:
                log.info("exec-server %s: idle for %.0f s, exiting", self.hostname,
                         now - idle_since)
                self._stop.set()
                return

    def _check_lease(self, now: float) -> None:
        """The lease (DESIGN §6): jobs of a database none of whose user-servers has been in
        contact for ``lease_s`` are killed. hq-server requeues a silent host's jobs only
        after the lease and a grace period, so a job never runs twice at once, even across a
        partition."""
        for database in self.waiting.databases():
            lease = self._lease_of(database)
            if lease is not None and database in self.last_contact \
                    and now - self.last_contact[database] > lease:
                # never started, and now never will here: a copy may go elsewhere
                for waiting in self.waiting.withdraw([w.key for w in
                                                      self.waiting.all_of(database)]):
                    self._record_end(Outcome(waiting.key, now, reason=REASON_WITHDRAWN))
        if not self.runner.jobs:
            return
        expired = [key for key, job in self.runner.jobs.items()
                   if (lease := self._lease_of(key[0])) is not None
                   and now - self.last_contact.get(key[0], job.started_at) > lease]
        stopping = self.runner.stop(expired, REASON_LEASE, LEASE_KILL_GRACE_S)
        if stopping:
            log.warning("exec-server %s: no user-server contact for longer than the lease: "
                        "killing jobs %s", self.hostname, [k[1] for k in stopping])
        self.journal.compact_if_grown(self.ended, self.last_contact, self._started())

    def take_over(self) -> None:
        """Start from what a predecessor left: the ends it could not hand over (journal),
        and its running jobs (``hq.execd.takeover``), re-adopted, or killed when their lease
        ran out. Runs before any connection is served."""
        self.ended, self.last_contact, journaled = self.journal.load()
        self.journal.open(self.ended, self.last_contact, journaled)
        now = self.clock()

        def lease_expired(key: JobKey) -> bool:
            lease = self._lease_of(key[0])
            return lease is not None and now - self.last_contact.get(key[0], 0.0) > lease

        verdict = survey(self.installation, journaled, {*self.ended, *self.runner.jobs},
                         lease_expired)
        for kill in verdict.kill:
            # its lease ran out (a copy of it may be about to start elsewhere), or only what
            # it left behind is there: killed, and waited for, before anything runs
            self.runner.kill_now(kill.pids)
            self._record_end(Outcome(kill.key, now, pid=kill.leader, started_at=kill.started_at,
                                     reason=REASON_LEASE if kill.lease_expired
                                     else REASON_UNKNOWN_END))
            log.warning("job %s: %s (left by the previous exec-server): killed", kill.key[1],
                        "its lease had run out" if kill.lease_expired
                        else "its end was not seen")
        for adopt in verdict.adopt:
            job = self.runner.adopt(adopt.key, adopt.pid, adopt.started_at,
                                    processes.marker_value(self.installation, *adopt.key))
            if job is not None:
                self.waiting.running(adopt.key, adopt.cores)
                log.info("job %s: found running (pid %s), left by the previous exec-server",
                         adopt.key[1], job.pid)
        for lost in verdict.lost:
            self._record_end(Outcome(lost.key, now, pid=lost.pid, started_at=lost.started_at,
                                     reason=REASON_UNKNOWN_END))
            log.warning("job %s: %s (started by the previous exec-server, pid %s)",
                        lost.key[1], REASON_UNKNOWN_END, lost.pid)

    # --- connections ----------------------------------------------------------------------

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer, "user-server")
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
            if peer.uid != os.geteuid():  # the 0700 directory should make this impossible
                raise ProtocolError(f"uid {peer.uid} may not use this exec-server")
            hello = await asyncio.wait_for(channel.receive_as(Hello), HELLO_TIMEOUT_S)
            if hello is None:
                channel.close()
                return
            channel.version = check_hello(hello, {"userd", "cli"})
            if hello.role == "cli":
                await serve_command(channel, lambda: self.controller, self.hostname,
                                    self._welcome(channel.version))
                return
            self.settings = self.settings.updated(hello.settings)
            self.runner.memory_enforce = self.settings.memory_enforce
            if self.settings.pin_cpus and self.runner.pinner is None:
                self.runner.pinner = CpuPinner()
            elif not self.settings.pin_cpus:
                self.runner.pinner = None
        except (HqError, TimeoutError, OSError) as err:
            log.warning("exec-server %s: handshake refused: %s", self.hostname, err)
            if isinstance(err, HqError):
                channel.send(error_message(err))
            channel.close()
            return
        channel.accept(USERD_SENDS_EXECD)
        channel.send(self._welcome(channel.version))
        old, self.controller = self.controller, channel
        self._contact()
        self.events.drop()  # the new controller asks for the whole view with sync
        log.info("exec-server %s: user-server (pid %s, protocol %d) connected%s; settings: "
                 "idle timeout %s s, heartbeat %s s, lease %s s", self.hostname, peer.pid,
                 channel.version, ", replacing the previous one" if old is not None else "",
                 self.settings.idle_timeout_s, self.settings.heartbeat_interval_s,
                 self.settings.lease_s)
        if old is not None:
            old.close()
        heartbeats = asyncio.create_task(self._heartbeats(channel))
        try:
            await channel.serve(lambda message: self._dispatch(channel, message))
        finally:
            heartbeats.cancel()
            if self.controller is channel:
                self.controller = None
                self.events.drop()
                log.info("exec-server %s: user-server disconnected", self.hostname)

    def _contact(self) -> None:
        now = self.clock()
        self.last_contact[self.settings.database] = now
        self.journal.contact(self.settings.database, now, self.settings.lease_s)

    def _key_of(self, job_id: int, attempt: int) -> JobKey:
        """The key of the controller's job ``job_id``, run ``attempt``."""
        return (self.settings.database, job_id, attempt)

    def _keys_of(self, job_ids: list[int], attempts: list[int] | None) -> list[JobKey]:
        """Keys of the controller's jobs: the given attempts, else every one known here."""
        if attempts is not None:
            return [self._key_of(i, a) for i, a in zip(job_ids, attempts, strict=False)]
        wanted, database = set(job_ids), self.settings.database
        return [k for k in (*self.runner.jobs, *self.ended,
                            *(w.key for w in self.waiting.all_of(database)))
                if k[0] == database and k[1] in wanted]

    def _welcome(self, version: int) -> Any:
        return welcome(version, host=self.hostname, pid=os.getpid(), user=self.user)

    async def _heartbeats(self, channel: Channel) -> None:
        while not channel.closed.is_set():
            channel.send(Heartbeat(load1=os.getloadavg()[0],
                                   free_memory_mb=psutil.virtual_memory().available // 2**20,
                                   running=len(self.runner.jobs)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.closed.wait(), self.settings.heartbeat_interval_s)

    async def _dispatch(self, channel: Channel, message: Any) -> None:
        """Handle one message; errors end at this boundary (logged, answered if a request)."""
        if channel is not self.controller:
            return  # superseded: its link is closing
        self._contact()
        handler = HANDLERS[type(message)]
        try:
            answer = handler(self, message)
            if asyncio.iscoroutine(answer):
                answer = await answer
        except HqError as err:
            log.warning("exec-server %s: %s refused: %s", self.hostname,
                        type(message).__name__, err)
            if isinstance(message, Request):
                channel.reply_error(message, err)
            return
        except Exception as err:
            log.exception("exec-server %s: %s failed", self.hostname, type(message).__name__)
            if isinstance(message, Request):
                channel.reply_error(message, HqError(f"{type(message).__name__} failed: {err}"))
            return
        if isinstance(message, Request):
            channel.reply(message, answer)

    # --- requests -------------------------------------------------------------------------

    def _signing_key(self) -> bytes | None:
        """The user's key, read once: every run message needs it (None: refuse every job)."""
        if self._key is None:
            try:
                self._key = auth.load_signing_key(create=False)
            except HqError as err:
                log.warning("exec-server %s: cannot check job signatures: %s", self.hostname,
                            err)
        return self._key

    async def _run(self, message: Run) -> None:
        signing_key = self._signing_key()
        digests: dict[str, str | None] = {}
        database = self.settings.database
        for n, item in enumerate(message.jobs):
            if n and n % RUN_CHUNK == 0:
                await asyncio.sleep(0)  # let reaping, events and heartbeats through
            waiting = self._prepare(item, message.submissions, signing_key, digests)
            if waiting is not None:
                self.waiting.add(waiting)
        # Protocol 1, or a user-server that does not say: every job starts at once.
        self.waiting.set_allotment(database, message.cores)
        self._start_waiting(database)

    def _prepare(self, item: RunJob, submissions: dict[str, SubmissionEnv],
                 signing_key: bytes | None, digests: dict[str, str | None]) -> Waiting | None:
        """A job handed over, checked and made ready to start; None when it is known here
        already or refused (its end is recorded)."""
        job_id, spec = item.id, item.spec
        key = self._key_of(job_id, item.attempt)
        if self.knows(key):
            log.info("job %s: already known here, run ignored", job_id)
            return None
        submission_id = str(item.submission_id)
        submission = submissions.get(submission_id)
        if submission_id not in digests:
            digests[submission_id] = None if submission is None else jobspec.submission_digest(
                submission.environment, submission.umask)
        digest = digests[submission_id]
        if (signing_key is None or digest is None or submission is None
                or not auth.job_signature_ok(signing_key, spec, self.user, digest,
                                             database=self.settings.database,
                                             submission_id=item.submission_id)):
            self._not_started(key, "refused: bad signature")
            return None
        env = job_environment(item, key, submission, hostname=self.hostname,
                              socket_path=self.socket_path, installation=self.installation)
        launch, log_path = launch_of(item, key, submission, env)
        return Waiting(key, spec.cores, launch, log_path)

    def _start_waiting(self, database: str) -> None:
        """Start the waiting jobs of ``database`` that fit in its allotment now; none once its
        lease has run out (a copy of them may be about to start elsewhere). A job that cannot
        start frees its cores at once: the loop goes on here instead of recursing."""
        self._start_again.add(database)
        if self._starting:
            return
        self._starting = True
        try:
            while self._start_again:
                database = self._start_again.pop()
                lease = self._lease_of(database)
                if lease is not None and database in self.last_contact \
                        and self.clock() - self.last_contact[database] > lease:
                    continue
                for waiting in self.waiting.startable(database):
                    self._start(waiting)
        finally:
            self._starting = False

    def _start(self, waiting: Waiting) -> None:
        key = waiting.key
        self.notes.expect(key, waiting.log_path)
        result = self.runner.start(waiting.launch)
        if isinstance(result, Outcome):
            log.warning("job %s: %s", key[1], result.reason)
            self._record_end(result)
            return
        self.notes.started(key, self.hostname, result.started_at, result.pid)
        log.debug("job %s: started pid %s", key[1], result.pid)
        self.journal.started(key, result.pid, result.started_at, waiting.cores)
        event = JobStarted(id=key[1], attempt=key[2], pid=result.pid, at=result.started_at)
        if key[0] == self.settings.database:
            self.events.emit(event)

    def _cancel(self, message: CancelJobs) -> None:
        keys = self._keys_of(message.ids, message.attempts)
        reason = message.reason or REASON_CANCELLED
        for waiting in self.waiting.withdraw(keys):   # never started: ended here and now
            self._not_started(waiting.key, reason)
        for key in self.runner.cancel(keys):
            log.info("job %s: cancelling (%s)", key[1], message.reason or "no reason given")

    def _withdraw(self, message: Withdraw) -> None:
        """Jobs hq-server wants back: each one still waiting is taken out and reported ended
        as ``withdrawn`` (it will never start here); one that has started is left running
        (its start is reported, or was)."""
        keys = self._keys_of(message.ids, message.attempts)
        for waiting in self.waiting.withdraw(keys):
            log.debug("job %s: withdrawn before it started", waiting.key[1])
            self._record_end(Outcome(waiting.key, self.clock(), reason=REASON_WITHDRAWN))

    def _ack(self, message: Ack) -> None:
        now = self.clock()
        done = []
        for key in self._keys_of(message.ids, message.attempts):
            if self.ended.pop(key, None) is not None:
                self.acked[key] = now
                self.acked.move_to_end(key)
                done.append((key[1], key[2]))
        if done:
            self.journal.acked(self.settings.database, done)
        while self.acked and (len(self.acked) > ACKED_MEMORY_MAX
                              or next(iter(self.acked.values())) < now - ACKED_MEMORY_S):
            self.acked.popitem(last=False)

    def _sync(self, _message: SyncRequest) -> SyncReply:
        # The answer is the whole view, so anything still queued would only repeat it.
        self.events.drop()
        database = self.settings.database
        return SyncReply(running=[_running(job) for key, job in self.runner.jobs.items()
                                  if key[0] == database],
                         ended=[event for key, event in self.ended.items()
                                if key[0] == database],
                         queued=[QueuedJob(id=w.key[1], attempt=w.key[2])
                                 for w in self.waiting.all_of(database)])

    def _lease(self, _message: Lease) -> None:
        """Only renews the lease (``last_contact``, set for every message)."""

    def knows(self, key: JobKey) -> bool:
        """Waiting, running, ended and unacknowledged, or acknowledged lately: never start
        it again."""
        return (key in self.runner.jobs or key in self.ended or key in self.acked
                or key in self.waiting)

    # --- events ---------------------------------------------------------------------------

    def _not_started(self, key: JobKey, reason: str) -> None:
        log.warning("job %s: %s", key[1], reason)
        self._record_end(Outcome(key, self.clock(), reason=reason))

    def _job_ended(self, outcome: Outcome) -> None:
        how = (f"killed by signal {outcome.signal}" if outcome.signal is not None
               else f"exit code {outcome.exit_code}")
        # routine ends at debug level: the database has every one, and at thousands of jobs a
        # second a line each is what would cost
        log.log(logging.INFO if outcome.reason or outcome.exit_code else logging.DEBUG,
                "job %s: ended, %s%s (cpu %.2f s, max rss %s KiB)", outcome.key[1], how,
                f", {outcome.reason}" if outcome.reason else "", outcome.cpu_time_s or 0.0,
                outcome.max_rss_kb)
        self._record_end(outcome)

    def _record_end(self, outcome: Outcome) -> None:
        key = outcome.key
        self.notes.ended(key, outcome)
        event = outcome.event()
        self.ended[key] = event
        self.journal.ended(key, event)
        if key[0] == self.settings.database:
            self.events.emit(event)
        self.waiting.ended(key)
        self._start_waiting(key[0])   # its cores go to the next waiting job, at once

    def _lease_of(self, database: str) -> float | None:
        """The lease of ``database``'s jobs: as its user-server set it, here or (from the
        journal) with the predecessor; a job is never spared for want of a hello."""
        if database == self.settings.database and self.settings.lease_s is not None:
            return self.settings.lease_s
        return self.journal.leases.get(database, self.settings.lease_s)

    def _started(self) -> dict[JobKey, tuple[int, float, int]]:
        return {key: (job.pid, job.started_at, self.waiting.cores_of(key))
                for key, job in self.runner.jobs.items()}

def _running(job: RunningJob) -> RunningJobInfo:
    return RunningJobInfo(id=job.key[1], attempt=job.key[2], pid=job.pid,
                          started_at=job.started_at)


HANDLERS: dict[type, Callable[[ExecServer, Any], Any]] = {
    Run: ExecServer._run, CancelJobs: ExecServer._cancel, Withdraw: ExecServer._withdraw,
    Ack: ExecServer._ack, SyncRequest: ExecServer._sync, Lease: ExecServer._lease,
}
"""What a user-server may send its exec-server -> the handler."""

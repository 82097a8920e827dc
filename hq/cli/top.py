"""``hq-client top`` and ``hq-admin top``: a live dashboard of hosts, the queue and jobs.

The data comes from one long poll (``Watch``): hq-server answers when something changed since
the last answer (or after ``--refresh`` seconds), so an idle dashboard costs one request per
refresh period and a busy one one per burst of changes. hq-client's goes through the user's
own user-server and shows that user's jobs (others' only as counts); hq-admin's goes to
hq-server directly and shows every user's.

The terminal dashboard itself is ``hq.cli.top_app`` (Textual), imported only when it is shown;
``--once`` and ``--json`` print one snapshot and exit, for scripts and terminals without a
screen.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import msgspec

from hq.cli.common import format_table, print_json
from hq.errors import HqError, Unavailable, UsageError
from hq.protocol.messages import Watch, WatchJob, WatchReply
from hq.protocol.watch_messages import DEFAULT_WATCH_ROWS, MAX_WATCH_ROWS

if TYPE_CHECKING:
    from hq.protocol import BlockingClient

DEFAULT_REFRESH_S = 10.0
OUTPUT_TAIL = 256 * 1024      # the end of a job's output the dashboard shows
ANSWER_MARGIN_S = 30.0        # beyond the long poll's own timeout, before we give up on it
BAR_WIDTH = 16


class WatchSource:
    """The dashboard's data: snapshots from hq-server through one link, each after the last
    (``next``). Used from one thread; ``close`` may come from another, to end a wait."""

    def __init__(self, connect: Callable[[], BlockingClient], *, limit: int,
                 refresh_s: float) -> None:
        self.connect, self.limit, self.refresh_s = connect, limit, refresh_s
        self.client: BlockingClient | None = None
        self.since = 0
        self.closed = False

    def next(self) -> WatchReply:
        """The next snapshot: at once the first time, then once something changed (or after
        ``refresh_s``). A lost link is made again at the next call."""
        if self.closed:
            raise Unavailable("the dashboard is closing")
        if self.client is None:
            self.client = self.connect()
            self.since = 0   # a new link may reach a restarted hq-server: start afresh
        try:
            reply = self.client.request(Watch(since=self.since, timeout_s=self.refresh_s,
                                              limit=self.limit),
                                        timeout=self.refresh_s + ANSWER_MARGIN_S)
        except Unavailable:
            self._drop()
            raise
        self.since = reply.counter
        return reply

    def _drop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(OSError):
                self.client.close()
            self.client = None

    def close(self) -> None:
        """End any wait now (from any thread) and let go of the link."""
        self.closed = True
        client = self.client
        if client is not None:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)


def client_source(limit: int, refresh_s: float) -> WatchSource:
    """hq-client's: through this user's own user-server."""
    from hq.cli.userd_link import connect_user_server
    from hq.config import Installation

    inst = Installation.locate()
    return WatchSource(lambda: connect_user_server(inst, "hq-client"), limit=limit,
                       refresh_s=refresh_s)


def admin_source(limit: int, refresh_s: float) -> WatchSource:
    """hq-admin's: straight to hq-server, in the admin role."""
    from hq.cli.admin_link import connect_server
    from hq.config import Installation

    inst = Installation.locate()

    def connect() -> BlockingClient:
        client = connect_server(inst, "hq-admin")
        if client.version < 2:
            client.close()
            raise UsageError("hq-server is too old for hq-admin top: restart it after the "
                             "upgrade (hq-admin shutdown, then hq-server --daemon)")
        return client

    return WatchSource(connect, limit=limit, refresh_s=refresh_s)


# --- what a row shows -----------------------------------------------------------------------

def progress_text(row: WatchJob, width: int = BAR_WIDTH) -> str:
    """A row's progress: a bar of ended (#) and running (>) jobs out of all, and the
    numbers; a single job shows its state."""
    if row.jobs <= 1:
        return row.state
    ended = round(width * row.ended / row.jobs)
    active = min(width - ended, round(width * row.active / row.jobs))
    bar = "#" * ended + ">" * active + "." * (width - ended - active)
    return f"[{bar}] {row.ended}/{row.jobs}"


def where_text(row: WatchJob) -> str:
    """Where a row's job runs, or why it waits or how it ended."""
    if row.jobs > 1:
        return f"{row.active} running" if row.active else (row.reason or "")
    return row.host if row.state in ("dispatched", "running") and row.host \
        else (row.reason or row.host or "")


def row_text(row: WatchJob) -> str:
    """All of a row a filter looks in, lower case."""
    return " ".join(str(part) for part in (
        row.id, row.owner, row.name or "", row.state, row.command or "", where_text(row))
    ).lower()


def read_output(path: str | None, limit: int = OUTPUT_TAIL) -> str:
    """The end of a job's output file, read as the caller (the kernel decides who may), with
    the file reader ``hq-client log`` uses."""
    from hq.cli.joblog import OutputFile

    if not path:
        raise HqError("this job has no output file hq knows of")
    sink = _Tail(limit)
    file = OutputFile(path, sink)  # type: ignore[arg-type]
    try:
        if not file.open():
            raise HqError(f"{path} does not exist (yet)")
        file.copy_new()
    finally:
        file.close()
    return sink.text()


class _Tail:
    """A sink that keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.cut = limit, bytearray(), False

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]
            self.cut = True
        return len(chunk)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        text = self.data.decode(errors="replace")
        return f"[... only the last {self.limit // 1024} KiB ...]\n{text}" if self.cut else text


# --- one snapshot as text (--once) ------------------------------------------------------------

def snapshot_text(reply: WatchReply) -> str:
    hosts = format_table(
        ["HOST", "STATE", "BUSY", "FREE", "JOBS", "LOAD", "REASON"],
        [[h.name, h.state, h.cores_busy, h.cores - h.cores_busy, h.running_jobs,
          None if h.load1 is None else f"{h.load1:.2f}", h.reason] for h in reply.hosts],
        right={2, 3, 4, 5})
    queue = format_table(
        ["USER", "PENDING", "HELD", "RUNNING", "REASONS"],
        [[q.user, q.counts.get("pending", 0), q.counts.get("held", 0),
          q.counts.get("running", 0) + q.counts.get("dispatched", 0), reasons_text(q.reasons)]
         for q in reply.queue], right={1, 2, 3})
    jobs = format_table(
        ["ID", "OWNER", "NAME", "PROGRESS", "WHERE/WHY", "COMMAND"],
        [[j.id, j.owner, j.name, progress_text(j), where_text(j), j.command]
         for j in reply.jobs], right={0})
    cluster = "active" if reply.cluster_active else "DEACTIVATED"
    more = "\n(older rows left out: --limit)" if reply.more else ""
    return f"cluster {cluster}\n\n{hosts}\n\n{queue}\n\n{jobs}{more}"


def plain(value: Any) -> Any:
    """A snapshot as plain values with every field, defaults too (the wire leaves those
    out): a script finds ``more`` or ``ended`` whatever their value."""
    if isinstance(value, msgspec.Struct):
        return {name: plain(getattr(value, name)) for name in value.__struct_fields__
                if name != "rid"}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def reasons_text(reasons: dict[str, int]) -> str:
    return "; ".join(f"{why} ({n})" for why, n in
                     sorted(reasons.items(), key=lambda item: -item[1]))


# --- the commands --------------------------------------------------------------------------

def _top_options(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print one snapshot as JSON and exit (implies --once).")(func)
    func = click.option("--once", is_flag=True,
                        help="Print one snapshot as text and exit (no screen needed).")(func)
    func = click.option("--refresh", "refresh_s", type=click.FloatRange(1, 60),
                        default=DEFAULT_REFRESH_S, show_default=True, metavar="SECONDS",
                        help="Show the hosts' load again after this long without a change "
                             "(changes show at once).")(func)
    return click.option("--limit", type=click.IntRange(1, MAX_WATCH_ROWS),
                        default=DEFAULT_WATCH_ROWS, show_default=True, metavar="N",
                        help="Show the newest N job rows (an array is one row).")(func)


def _run(source: WatchSource, once: bool, as_json: bool, title: str) -> None:
    if once or as_json:
        try:
            reply = source.next()
        finally:
            source.close()
            source._drop()
        if as_json:
            print_json(plain(reply))
        else:
            click.echo(snapshot_text(reply))
        return
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("top needs a terminal; use --once or --json in scripts")
    from hq.cli.top_app import TopApp

    TopApp(source, title=title).run()


@click.command("top")
@_top_options
def client_top(limit: int, refresh_s: float, once: bool, as_json: bool) -> None:
    """A live dashboard: the hosts, the queue by user and your jobs.

    Hosts show their cores busy and free, load, state and reason; the queue shows every
    user's job counts, and why your pending jobs wait; the jobs pane shows your newest jobs,
    each array as one row with a progress bar. Keys: / filter, s sort, enter or o the
    selected job's output, q quit.

    \b
    Examples:
      hq-client top
      hq-client top --once           # one snapshot as text
      hq-client top --json | jq '.jobs[] | select(.state == "pending")'
    """
    _run(client_source(limit, refresh_s), once, as_json, "hq-client top")


@click.command("top")
@_top_options
def admin_top(limit: int, refresh_s: float, once: bool, as_json: bool) -> None:
    """A live dashboard of the whole cluster: hosts, the queue by user, every user's jobs.

    As hq-client top, with every user's pending reasons and jobs. Opening a job's output
    reads its file as you: only what your account may read.

    \b
    Examples:
      hq-admin top
      hq-admin top --once --limit 50
    """
    _run(admin_source(limit, refresh_s), once, as_json, "hq-admin top")

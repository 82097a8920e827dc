"""The terminal dashboard of ``hq-client top`` / ``hq-admin top`` (Textual).

Imported only by the top commands: Textual costs a client call nothing otherwise. A worker
thread follows hq-server's snapshots (``hq.cli.top.WatchSource``, a long poll) and hands each
to the screen; the keys work on what is shown (filter and sort are the dashboard's own, no
request). Tests drive it with ``App.run_test()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static, TextArea
from textual.worker import get_current_worker

from hq.cli.top import (
    WatchSource,
    progress_text,
    read_output,
    reasons_text,
    row_text,
    where_text,
)
from hq.errors import HqError
from hq.protocol.messages import WatchJob, WatchReply

RETRY_S = 2.0

# sort name -> key over rows (the snapshot comes newest first)
SORTS: dict[str, Callable[[WatchJob], object]] = {
    "newest": lambda row: -row.id,
    "oldest": lambda row: row.id,
    "state": lambda row: (row.state, -row.id),
    "owner": lambda row: (row.owner, -row.id),
    "progress": lambda row: (row.ended / row.jobs if row.jobs else 1.0, -row.id),
}


class OutputScreen(ModalScreen[None]):
    """A job's output, read from its file; escape or q goes back."""

    BINDINGS = [Binding("escape,q", "dismiss", "Back")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(id="output-box"):
            yield Static(self.title_text, id="output-title")
            yield TextArea(self.text, read_only=True, id="output-text")
            yield Footer()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class TopApp(App[None]):
    """Hosts, the queue by user and jobs, kept up to date from hq-server's snapshots."""

    CSS = """
    #status { height: 1; background: $boost; }
    #hosts { height: auto; max-height: 30%; }
    #queue { height: auto; max-height: 25%; }
    #jobs { height: 1fr; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #output-box { background: $surface; }
    #output-title { height: 1; background: $boost; }
    """
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("o", "open_output", "Output (or enter)"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: WatchSource, *, title: str = "hq top") -> None:
        super().__init__()
        self.source, self.title_text = source, title
        self.reply: WatchReply | None = None
        self.rows: dict[str, WatchJob] = {}
        self.filter_text = ""
        self.sort_name = "newest"
        self.error: str | None = None
        self.updated_at: float | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.title_text, id="status")
        yield DataTable(id="hosts", cursor_type="none", zebra_stripes=True)
        yield DataTable(id="queue", cursor_type="none", zebra_stripes=True)
        yield DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter the jobs (enter: keep, escape: clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#hosts", DataTable).add_columns(
            "host", "state", "busy", "free", "jobs", "load", "reason")
        self.query_one("#queue", DataTable).add_columns(
            "user", "pending", "held", "running", "why pending")
        self.query_one("#jobs", DataTable).add_columns(
            "id", "owner", "name", "progress", "where / why", "command")
        self.query_one("#jobs", DataTable).focus()
        self.follow()

    # --- the data ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False)
    def follow(self) -> None:
        """Each snapshot, as hq-server sends it (a long poll), to the screen."""
        worker = get_current_worker()
        while not worker.is_cancelled and not self.source.closed:
            try:
                reply = self.source.next()
            except HqError as err:
                if self.source.closed:
                    return
                self.call_from_thread(self.show_error, str(err))
                time.sleep(RETRY_S)
                continue
            self.call_from_thread(self.show_snapshot, reply)

    def show_error(self, message: str) -> None:
        self.error = message
        self._status()

    def show_snapshot(self, reply: WatchReply) -> None:
        self.reply, self.error, self.updated_at = reply, None, time.time()
        hosts = self.query_one("#hosts", DataTable)
        hosts.clear()
        for h in reply.hosts:
            hosts.add_row(h.name, h.state, h.cores_busy, h.cores - h.cores_busy,
                          h.running_jobs, "-" if h.load1 is None else f"{h.load1:.2f}",
                          h.reason or "", key=h.name)
        queue = self.query_one("#queue", DataTable)
        queue.clear()
        for q in reply.queue:
            queue.add_row(q.user, q.counts.get("pending", 0), q.counts.get("held", 0),
                          q.counts.get("running", 0) + q.counts.get("dispatched", 0),
                          reasons_text(q.reasons), key=q.user)
        self.show_jobs()

    def show_jobs(self) -> None:
        """The jobs pane from the last snapshot, filtered and sorted; the selection stays on
        the same row when it is still there."""
        table = self.query_one("#jobs", DataTable)
        selected = self.selected_key()
        table.clear()
        self.rows = {}
        wanted = self.filter_text.lower()
        rows = [] if self.reply is None else [
            row for row in self.reply.jobs if not wanted or wanted in row_text(row)]
        for row in sorted(rows, key=SORTS[self.sort_name]):
            key = str(row.id)
            self.rows[key] = row
            table.add_row(row.id, row.owner, row.name or "", progress_text(row),
                          where_text(row), (row.command or "").replace("\n", " "), key=key)
        if selected in self.rows:
            table.move_cursor(row=table.get_row_index(selected))
        self._status()

    def selected_key(self) -> str | None:
        table = self.query_one("#jobs", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def _status(self) -> None:
        parts = [self.title_text]
        if self.reply is not None:
            parts.append(f"user {self.reply.user}" + (" (admin: every user)"
                                                      if self.reply.admin else ""))
            if not self.reply.cluster_active:
                parts.append("CLUSTER DEACTIVATED")
            parts.append(f"{len(self.rows)} of {len(self.reply.jobs)} rows"
                         + (" (older left out)" if self.reply.more else ""))
        parts.append(f"sort: {self.sort_name}")
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}")
        if self.updated_at is not None:
            parts.append(time.strftime("%H:%M:%S", time.localtime(self.updated_at)))
        if self.error:
            parts.append(f"error: {self.error}")
        self.query_one("#status", Static).update(" | ".join(parts))

    # --- the keys -------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.filter_text
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.show_jobs()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._close_filter()

    def on_key(self, event: object) -> None:
        key = getattr(event, "key", None)
        box = self.query_one("#filter", Input)
        if key == "escape" and box.has_focus:
            box.value = ""
            self.filter_text = ""
            self.show_jobs()
            self._close_filter()

    def _close_filter(self) -> None:
        self.query_one("#filter", Input).remove_class("shown")
        self.query_one("#jobs", DataTable).focus()

    def action_sort(self) -> None:
        names = list(SORTS)
        self.sort_name = names[(names.index(self.sort_name) + 1) % len(names)]
        self.show_jobs()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "jobs":
            self.action_open_output()

    def action_open_output(self) -> None:
        key = self.selected_key()
        row = self.rows.get(key or "")
        if row is None:
            self.notify("no job selected", severity="warning")
            return
        what = f"job {row.id}" if row.jobs == 1 else f"job {row.id} (first of {row.jobs})"
        try:
            text = read_output(row.stdout)
        except HqError as err:
            self.notify(f"{what}: {err}", severity="error")
            return
        self.push_screen(OutputScreen(f"{what}: {row.stdout}  (escape: back)", text))

    async def action_quit(self) -> None:
        self.source.close()
        self.exit()

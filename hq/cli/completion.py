"""Shell completion (click's, for bash, zsh and fish): what a TAB offers beyond option names.

Click answers a TAB when the program runs with ``_HQ_CLIENT_COMPLETE=bash_complete`` (zsh_,
fish_) and the words typed so far in ``COMP_WORDS``/``COMP_CWORD``; ``make`` writes the
scripts that do this into doc/completion/ (doc/user-guide.md). The completers here are
attached to arguments with ``shell_complete=``:

- ``job_ids``: the caller's own newest jobs, asked of their hq-user-server on this host when it
  is already running; never starts one, and gives up silently after COMPLETION_TIMEOUT_S, so a
  TAB never hangs on a stopped or busy server.
- ``host_names``: the hosts in etc/cluster.tab; in a comma list (``-E node1,no``) the last item.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem

COMPLETION_TIMEOUT_S = 1.0
JOBS_OFFERED = 200   # the newest jobs: enough for a TAB, cheap for the server


def job_ids(_ctx: click.Context, _param: click.Parameter,
            incomplete: str) -> list[CompletionItem]:
    """The caller's newest job ids that start with ``incomplete``, with name and state."""
    from click.shell_completion import CompletionItem

    found: list[Any] = []
    worker = threading.Thread(target=_fetch_jobs, args=(found,), daemon=True)
    worker.start()
    worker.join(COMPLETION_TIMEOUT_S)
    if worker.is_alive():   # the daemon thread ends with the process
        return []
    items = []
    for job in sorted(found, key=lambda j: j.id, reverse=True):
        if str(job.id).startswith(incomplete):
            label = f"{job.state}" + (f" {job.name}" if job.name else "")
            items.append(CompletionItem(str(job.id), help=label))
    return items


def _fetch_jobs(found: list[Any]) -> None:
    """Append this user's newest jobs to ``found``; anything going wrong means no jobs."""
    try:
        from hq.auth import runtime_dir
        from hq.cli.userd_link import SOCKET_NAME
        from hq.config import Installation
        from hq.protocol import BlockingClient
        from hq.protocol.messages import Jobs

        path = runtime_dir(Installation.locate().root) / SOCKET_NAME
        if not path.exists():
            return
        client, _welcome = BlockingClient.connect(
            str(path), "hq-user-server", role="cli", program="completion",
            expect_uid=os.geteuid(), timeout=COMPLETION_TIMEOUT_S)
        try:
            reply = client.request(Jobs(limit=JOBS_OFFERED), timeout=COMPLETION_TIMEOUT_S)
        finally:
            client.close()
        found.extend(reply.jobs)
    except Exception:   # noqa: S110 - a TAB prints nothing rather than an error
        pass


def host_names(_ctx: click.Context, _param: click.Parameter,
               incomplete: str) -> list[CompletionItem]:
    """Host names from etc/cluster.tab starting with the last comma item of ``incomplete``."""
    from click.shell_completion import CompletionItem

    try:
        from hq.config import Installation, load_cluster

        hosts = load_cluster(Installation.locate().cluster_tab)
    except Exception:
        return []
    done, comma, last = incomplete.rpartition(",")
    taken = set(done.split(",")) if comma else set()
    return [CompletionItem(f"{done}{comma}{host.name}", help=host.info or None)
            for host in hosts if host.name.startswith(last) and host.name not in taken]

"""``hq-client top`` and ``hq-admin top`` against real daemons (SQLite and MariaDB): the
snapshot commands as subprocesses, and the Textual dashboard driven in-process with its pilot,
its data coming from the real user-server and hq-server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable

import pytest
from fixtures.running_hq import Hq

from hq.cli.top import admin_source, client_source
from hq.cli.top_app import OutputScreen, TopApp

pytestmark = pytest.mark.timeout(180)


def top_json(hq: Hq, program: str = "hq.cli.client", *args: str) -> dict:
    result = hq.run(program, "top", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_top_json_and_once_show_hosts_the_queue_and_own_jobs(running_hq):
    hq = running_hq
    done = hq.submit_id("--name", "quick", "echo quick-output")
    hq.wait_for(done, {"done"})
    napping = hq.submit_id("--name", "nap", "sleep 60")
    array = hq.submit_id("--name", "sweep", "--array", "1-4%1", "sleep 60")
    hq.wait_for(napping, {"running"})
    data = top_json(hq)
    assert [(h["name"], h["cores"]) for h in data["hosts"]] == [("localhost", 2)]
    rows = {row["id"]: row for row in data["jobs"]}
    assert rows[napping]["command"] == "sleep 60" and rows[napping]["state"] == "running"
    assert rows[done]["state"] == "done" and rows[done]["ended"] == 1
    sweep = rows[array]
    assert (sweep["array"], sweep["jobs"], sweep["name"]) == (True, 4, "sweep")
    assert [row["id"] for row in data["jobs"]] == sorted(rows, reverse=True)
    [mine] = data["queue"]
    assert mine["counts"]["pending"] >= 2     # the array's cap holds 3 back
    assert any("cap of 1" in why for why in mine["reasons"]), mine["reasons"]
    assert data["admin"] is False
    text = hq.run("hq.cli.client", "top", "--once")
    assert text.returncode == 0, text.stderr
    assert "localhost" in text.stdout and "sweep" in text.stdout
    assert re.search(r"\[[#>.]{16}\] 0/4", text.stdout), text.stdout   # the array's bar
    admin = top_json(hq, "hq.cli.admin", "--limit", "2")
    assert admin["admin"] is True and len(admin["jobs"]) == 2 and admin["more"] is True
    hq.client("cancel", str(napping), "--array", str(array))


def test_top_needs_a_terminal_without_once(running_hq):
    result = running_hq.run("hq.cli.client", "top")
    assert result.returncode == 2
    assert "top needs a terminal; use --once or --json" in result.stderr


# --- the dashboard, driven ---------------------------------------------------------------------

def jobs_column(app: TopApp, column: int = 2) -> list[str]:
    table = app.query_one("#jobs")
    return [str(table.get_row_at(i)[column]) for i in range(table.row_count)]


async def until(pilot, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def test_the_dashboard_follows_new_jobs_and_its_keys_filter_sort_and_open(running_hq,
                                                                            monkeypatch):
    hq = running_hq
    for name, value in hq.env().items():
        monkeypatch.setenv(name, value)
    first = hq.submit_id("--name", "alpha", "echo alpha-says-hello")
    hq.wait_for(first, {"done"})
    second = hq.submit_id("--name", "beta", "sleep 60")

    async def drive() -> None:
        app = TopApp(client_source(limit=200, refresh_s=30), title="test top")
        async with app.run_test(size=(160, 50)) as pilot:
            await until(pilot, lambda: jobs_column(app) == ["beta", "alpha"], "two rows")
            hosts = app.query_one("#hosts")
            assert hosts.get_row_at(0)[0] == "localhost"
            # a job submitted now shows up without a key pressed (the long poll answers)
            started = time.monotonic()
            third = await asyncio.to_thread(hq.submit_id, "--name", "gamma", "sleep 60")
            await until(pilot, lambda: "gamma" in jobs_column(app), "the new job")
            assert time.monotonic() - started < 8    # long before the 30 s refresh
            # / filters: only the rows that match
            await pilot.press("slash", *"bet", "enter")
            assert jobs_column(app) == ["beta"]
            await pilot.press("slash", "escape")
            assert jobs_column(app) == ["gamma", "beta", "alpha"]
            # s cycles the sort: newest -> oldest
            await pilot.press("s")
            assert jobs_column(app) == ["alpha", "beta", "gamma"]
            assert "sort: oldest" in str(app.query_one("#status").render())
            # enter (or o) on the selected row opens its output, read from its file
            await pilot.press("slash", *"alpha", "enter")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, OutputScreen), "output")
            assert "alpha-says-hello" in app.screen.query_one("#output-text").text
            await pilot.press("escape")
            assert not isinstance(app.screen, OutputScreen)
            await pilot.press("o")
            await until(pilot, lambda: isinstance(app.screen, OutputScreen), "output again")
            await pilot.press("escape", "q")
        assert app.return_code == 0
        hq.client("cancel", str(second), str(third))

    asyncio.run(drive())


def test_the_admin_dashboard_shows_every_user_and_quits_at_once(running_hq, monkeypatch):
    hq = running_hq
    for name, value in hq.env().items():
        monkeypatch.setenv(name, value)
    napping = hq.submit_id("--name", "admin-sees-me", "sleep 60")

    async def drive() -> float:
        app = TopApp(admin_source(limit=50, refresh_s=30), title="hq-admin top")
        async with app.run_test(size=(160, 50)) as pilot:
            await until(pilot, lambda: "admin-sees-me" in jobs_column(app), "the job")
            assert "admin: every user" in str(app.query_one("#status").render())
            started = time.monotonic()
            await pilot.press("q")     # while the long poll waits (30 s): quits at once
        return time.monotonic() - started

    assert asyncio.run(drive()) < 5
    hq.client("cancel", str(napping))


def test_one_watch_waits_per_command_connection_at_the_user_server(running_hq, monkeypatch):
    """A second long poll on the same connection is refused at once (busy), so one command
    cannot hold the few watches hq-server keeps for a user-server."""
    from hq.cli.userd_link import connect_user_server
    from hq.protocol.frames import decode_as
    from hq.protocol.messages import Error, ReplyHeader, Watch

    hq = running_hq
    for name, value in hq.env().items():
        monkeypatch.setenv(name, value)
    with connect_user_server(hq.inst, "test") as client:
        counter = client.request(Watch()).counter
        for _ in range(20):    # until a second passes without a change (a new user-server's)
            latest = client.request(Watch(since=counter, timeout_s=1)).counter
            if latest == counter:
                break
            counter = latest
        client.send(Watch(rid=101, since=counter, timeout_s=3))
        client.send(Watch(rid=102, since=counter, timeout_s=3))
        started = time.monotonic()
        first = decode_as(ReplyHeader | Error, client._receive())
        assert isinstance(first, Error) and first.rid == 102 and first.code == "busy", first
        assert "waiting on this connection already" in first.message
        assert time.monotonic() - started < 1
        second = decode_as(ReplyHeader | Error, client._receive())
        assert second.rid == 101 and not isinstance(second, Error)
        assert time.monotonic() - started > 2      # it waited for its timeout: no change

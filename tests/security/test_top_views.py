"""What ``hq-client top`` shows one real user of another's jobs: counts, never a command,
a name or a pending reason (two Unix users on the ssh test ground, hq-server run by its own
unprivileged admin account). The dashboard itself is driven with Textual's pilot, run as
each user; ``--json`` is checked as well."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SECRET_NAME = "alice-private-name"
SECRET_COMMAND = "echo alice-private-command; sleep 120"

DASHBOARD = """
import asyncio, json, time
from hq.cli.top import client_source
from hq.cli.top_app import TopApp

async def main():
    app = TopApp(client_source(limit=200, refresh_s=5))
    async with app.run_test(size=(220, 60)) as pilot:
        deadline = time.monotonic() + 40
        while not app.rows and time.monotonic() < deadline:
            await pilot.pause(0.1)
        def cells(name):
            table = app.query_one(name)
            return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        print(json.dumps({"jobs": cells("#jobs"), "queue": cells("#queue"),
                          "hosts": cells("#hosts")}))
        await pilot.press("q")

asyncio.run(main())
"""


def dashboard(hq, user) -> dict:  # type: ignore[no-untyped-def]
    result = hq.run_python(user, DASHBOARD)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_user_sees_another_users_jobs_only_as_counts(cluster_hq):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    work = hq.workdir(alice)
    secret = [job for _ in range(2)
              for job in hq.submit_ids(alice, "--name", SECRET_NAME, SECRET_COMMAND, cwd=work)]
    waiting = hq.submit_ids(alice, "--name", SECRET_NAME, "--after", str(secret[0]),
                            "sleep 1", cwd=work)
    mine = hq.submit_ids(bob, "--name", "bob-own-job", "sleep 120", cwd=hq.workdir(bob))
    hq.wait_jobs(secret + mine, {"running"})

    # the control: alice's own dashboard shows her jobs, names and commands
    hers = dashboard(hq, alice)
    assert any(SECRET_NAME in row for row in hers["jobs"]), hers
    assert "alice-private-command" in json.dumps(hers["jobs"])

    seen = dashboard(hq, bob)
    assert [row[2] for row in seen["jobs"]] == ["bob-own-job"]
    text = json.dumps(seen)
    assert SECRET_NAME not in text and "alice-private-command" not in text
    queue = {row[0]: row for row in seen["queue"]}
    assert queue[alice.name][1:4] == ["1", "0", "2"]        # pending, held, running: counts
    assert queue[alice.name][4] == ""                         # her reasons are hers
    assert len(seen["hosts"]) == len(hq.hosts.hosts)          # hosts are everyone's facts

    result = hq.client(bob, "top", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {row["owner"] for row in data["jobs"]} == {bob.name}
    assert SECRET_NAME not in result.stdout and "alice-private-command" not in result.stdout
    # her pending job's reason names her job: alice sees it, bob does not
    [bobs_alice] = [q for q in data["queue"] if q["user"] == alice.name]
    assert bobs_alice["reasons"] == {} and bobs_alice["counts"] == {"pending": 1, "running": 2}
    result = hq.client(alice, "top", "--json")
    [own] = [q for q in json.loads(result.stdout)["queue"] if q["user"] == alice.name]
    assert own["reasons"] == {f"waiting for job {secret[0]} (afterok)": 1}, own
    hq.client(alice, "cancel", *map(str, secret + waiting))
    hq.client(bob, "cancel", *map(str, mine))

"""The exec-server's journal: what a successor learns from it after ``kill -9``."""

from __future__ import annotations

from pathlib import Path

from hq.execd.journal import ExecJournal
from hq.protocol.messages import JobEnded


def test_a_successor_learns_starts_without_ends_ends_without_acks_and_the_lease(tmp_path: Path):
    path = tmp_path / "execd-n1.journal"
    first = ExecJournal(path)
    first.open({}, {}, {})
    first.contact("db1", 100.0, 30.0)
    first.started(("db1", 1, 0), 501, 100.5)     # ran, ended, acknowledged
    first.started(("db1", 2, 0), 502, 100.6)     # ended, not acknowledged
    first.started(("db1", 3, 1), 503, 100.7)     # its end never written
    first.ended(("db1", 1, 0), JobEnded(id=1, attempt=0, at=101.0, exit_code=0))
    first.ended(("db1", 2, 0), JobEnded(id=2, attempt=0, at=101.0, exit_code=3))
    first.acked("db1", [(1, 0)])
    first.flush()
    # no close: the process is killed; and a line torn by the crash is at the end
    with open(path, "ab") as file:
        file.write(b'{"type":"start","db":"db1","id":9')

    successor = ExecJournal(path)
    ended, contacts, started = successor.load()
    assert set(ended) == {("db1", 2, 0)} and ended[("db1", 2, 0)].exit_code == 3
    assert started == {("db1", 3, 1): (503, 100.7, 1)}
    assert contacts == {"db1": 100.0}
    assert successor.leases == {"db1": 30.0}
    # what it rewrites keeps all of that for the next one
    successor.open(ended, contacts, started)
    successor.close()
    again = ExecJournal(path)
    assert again.load() == (ended, contacts, started)
    assert again.leases == {"db1": 30.0}

"""hq.append_log: the file form of the exec-server's journal and the user-server's ledger."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import msgspec

from hq.append_log import AppendLog


class Note(msgspec.Struct, tag="note", array_like=True):
    n: int


DECODER = msgspec.json.Decoder(Note)


def test_lines_survive_a_reopen_and_a_torn_last_line_is_skipped(tmp_path: Path):
    path = tmp_path / "x.log"
    log = AppendLog(path, DECODER, "test log")
    log.rewrite([Note(1)])
    log.add(Note(2))
    log.close()                       # no loop: the caller's flush writes
    with path.open("ab") as file:
        file.write(b'["note",3')      # a crash mid-write
    again = AppendLog(path, DECODER, "test log")
    assert list(again.read()) == [Note(1), Note(2)]
    assert again.lines == 3           # the torn line counts toward compaction
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_turn_of_the_loop_is_one_write_and_rewrite_keeps_only_what_is_given(tmp_path: Path):
    path = tmp_path / "x.log"
    log = AppendLog(path, DECODER, "test log")
    log.rewrite([])

    async def burst() -> None:
        for n in range(100):
            log.add(Note(n))
        assert path.read_bytes() == b""     # nothing written within the turn ...
        await asyncio.sleep(0)
        assert path.read_bytes().count(b"\n") == 100   # ... all of it after

    asyncio.run(burst())
    assert log.lines == 100
    log.rewrite([Note(7)])
    log.add(Note(8))
    log.close()
    assert list(AppendLog(path, DECODER, "test log").read()) == [Note(7), Note(8)]
    assert not (tmp_path / "x.tmp").exists()

"""The user-server's ledger (no signed job handed over twice without proof) and the rules of
opening a job's output files (no link or file of another account is used)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hq.execd.outputs import OutputRefused, open_output
from hq.userd.ledger import MAX_RELEASES, Ledger

LEASE = 30.0


def ledger_in(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger", "db1", now=0.0)


def test_a_job_that_ran_is_never_handed_over_again(tmp_path: Path):
    ledger = ledger_in(tmp_path)
    assert ledger.may_release((5, 1), host_silent_for=0.0, lease_s=LEASE) is None
    ledger.released((5, 1), "n1", job_id=42, now=1.0)
    # handed over, end unknown: not again while its host may still run it
    assert "handed to host n1" in ledger.may_release((5, 1), 0.0, LEASE)
    # ... but once that host has been silent for longer than the lease, it may go again
    assert ledger.may_release((5, 1), LEASE + 1, LEASE) is None
    ledger.ended(42, ran=True)
    assert "has run already" in ledger.may_release((5, 1), LEASE + 1, LEASE)
    # another index of the same submission is another job
    assert ledger.may_release((5, 2), 0.0, LEASE) is None


def test_a_failed_run_goes_again_only_as_often_as_its_signed_retries_allow(tmp_path: Path):
    ledger = ledger_in(tmp_path)
    ledger.released((6, 2), "n1", job_id=50, now=1.0, attempt=0)
    ledger.ended(50, ran=True, failed=True)
    assert "failed 1 time(s)" in ledger.may_release((6, 2), 0.0, LEASE, retries=0)
    assert ledger.may_release((6, 2), 0.0, LEASE, retries=2) is None
    ledger.released((6, 2), "n1", job_id=50, now=2.0, attempt=1)
    ledger.ended(50, ran=True, failed=True)
    ledger.close()
    again = ledger_in(tmp_path)   # the count survives a restart of the user-server
    assert again.may_release((6, 2), 0.0, LEASE, retries=2) is None
    again.released((6, 2), "n1", job_id=50, now=3.0, attempt=2)
    again.ended(50, ran=True, failed=True)
    assert "failed 3 time(s)" in again.may_release((6, 2), 0.0, LEASE, retries=2)
    again.close()
    compacted = ledger_in(tmp_path)   # rewritten at open: the failures are still counted
    assert "failed 3 time(s)" in compacted.may_release((6, 2), 0.0, LEASE, retries=2)
    assert compacted.may_release((6, 2), 0.0, LEASE, retries=3) is None
    again = compacted
    again.released((6, 3), "n1", job_id=51, now=3.0)
    again.ended(51, ran=True)   # a success is final whatever the retries
    assert "has run already" in again.may_release((6, 3), 0.0, LEASE, retries=5)
    again.close()


def test_the_same_attempt_to_the_same_host_is_a_harmless_repeat_not_a_release(tmp_path: Path):
    ledger = ledger_in(tmp_path)
    ledger.released((5, -1), "n1", job_id=42, now=1.0, attempt=0)
    assert ledger.repeats((5, -1), "n1", 0)          # the exec-server runs an attempt once
    assert not ledger.repeats((5, -1), "n1", 1)      # a new attempt is a new release
    assert not ledger.repeats((5, -1), "n2", 0)      # and so is another host
    ledger.close()
    again = ledger_in(tmp_path)                       # the attempt is kept across restarts
    assert again.repeats((5, -1), "n1", 0)
    again.ended(42, ran=True)
    assert not again.repeats((5, -1), "n1", 0)


def test_a_job_that_came_to_nothing_may_go_again_a_bounded_number_of_times(tmp_path: Path):
    ledger = ledger_in(tmp_path)
    for attempt in range(MAX_RELEASES):
        assert ledger.may_release((7, -1), 0.0, LEASE) is None, attempt
        ledger.released((7, -1), "n1", job_id=100 + attempt, now=float(attempt))
        ledger.ended(100 + attempt, ran=False)   # refused, cannot start, killed by its lease
    assert "handed over 20 times" in ledger.may_release((7, -1), 0.0, LEASE)


def test_the_ledger_survives_a_restart_of_the_user_server(tmp_path: Path):
    ledger = ledger_in(tmp_path)
    ledger.released((5, 1), "n1", job_id=42, now=1.0)
    ledger.released((5, 2), "n2", job_id=43, now=1.0)
    ledger.ended(43, ran=True)
    ledger.first_submission(5)
    ledger.close()
    path = tmp_path / "ledger" / "db1.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with path.open("ab") as file:
        file.write(b'["release", 9')   # torn by a crash
    again = ledger_in(tmp_path)
    assert "handed to host n1" in again.may_release((5, 1), 0.0, LEASE)
    assert "has run already" in again.may_release((5, 2), 0.0, LEASE)
    assert again.v1_cutoff == 5
    assert again.out_on("n1") == [42]
    again.came_to_nothing(42)                 # the exec-server's sync does not know it
    assert again.may_release((5, 1), 0.0, LEASE) is None


# --- output files -------------------------------------------------------------------------------

def opened(path: Path) -> str:
    fd = open_output(str(path), 0o022, "stdout")
    try:
        os.write(fd, b"job output\n")
    finally:
        os.close(fd)
    return path.read_text()


def test_a_new_output_file_gets_the_jobs_umask(tmp_path: Path):
    path = tmp_path / "out" / "hq-1.out"
    path.parent.mkdir()
    fd = open_output(str(path), 0o027, "stdout")
    os.close(fd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_an_existing_file_of_ours_is_truncated_and_devices_work(tmp_path: Path):
    path = tmp_path / "hq-1.out"
    path.write_text("old and longer content\n")
    assert opened(path) == "job output\n"
    os.close(open_output("/dev/null", 0o022, "stdout"))


def test_the_file_itself_is_never_a_link(tmp_path: Path):
    (tmp_path / "target").write_text("keep\n")
    (tmp_path / "hq-1.out").symlink_to(tmp_path / "target")
    with pytest.raises(OutputRefused, match="is a symbolic link"):
        open_output(str(tmp_path / "hq-1.out"), 0o022, "stdout")
    assert (tmp_path / "target").read_text() == "keep\n"


def test_our_own_links_on_the_path_are_followed(tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "relative").symlink_to("real")
    assert opened(tmp_path / "link" / "a.out") == "job output\n"
    assert opened(tmp_path / "relative" / "b.out") == "job output\n"
    assert (tmp_path / "real" / "a.out").exists() and (tmp_path / "real" / "b.out").exists()


def test_a_missing_directory_is_named(tmp_path: Path):
    with pytest.raises(OutputRefused, match="directory 'nowhere' on its path does not exist"):
        open_output(str(tmp_path / "nowhere" / "x.out"), 0o022, "stdout")


@pytest.mark.root  # needs root to make files and links that another uid owns
def test_links_and_files_of_another_account_are_refused(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / "outdir"
    planted.symlink_to(elsewhere)
    os.lchown(planted, 65534, 65534)
    with pytest.raises(OutputRefused, match="belongs to uid 65534, not to the job's user"):
        open_output(str(planted / "x.out"), 0o022, "stdout")
    assert list(elsewhere.iterdir()) == []
    trap = tmp_path / "victim.out"
    trap.write_text("")
    os.chown(trap, 65534, 65534)
    trap.chmod(0o666)
    with pytest.raises(OutputRefused, match="exists and belongs to uid 65534"):
        open_output(str(trap), 0o022, "stdout")
    assert trap.read_text() == ""

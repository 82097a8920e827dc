"""Completing job ids: the caller's own jobs, from their running hq-user-server, and nothing,
quickly and without starting anything, when it is not running or does not answer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from hq.auth import runtime_dir
from hq.cli.userd_link import SOCKET_NAME


def complete(hq, words: str, protocol: str = "bash") -> tuple[list[str], float]:
    """hq-client's answer to a TAB after ``words`` (click's protocol), and how long it took."""
    env = hq.env(_HQ_CLIENT_COMPLETE=f"{protocol}_complete", COMP_WORDS=words,
                 COMP_CWORD=str(len(words.split(" ")) - 1))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-P", "-m", "hq.cli.client"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    took = time.monotonic() - started
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line], took


def test_job_ids_of_the_callers_jobs_are_completed(running_hq):
    hq = running_hq
    first = hq.submit_id("--name", "alpha", "--hold", "true")
    second = hq.submit_id("--name", "beta", "--hold", "true")
    offered, _took = complete(hq, "hq-client show ")
    assert offered[:2] == [f"plain,{second}", f"plain,{first}"]   # newest first
    # what was typed so far is the prefix (ids are consecutive: no other starts like this)
    offered, _took = complete(hq, f"hq-client cancel {first} {second}")
    assert offered == [f"plain,{second}"]
    # zsh shows each id's state and name beside it
    zsh, _took = complete(hq, "hq-client hold ", protocol="zsh")
    assert zsh[:3] == ["plain", str(second), "held beta"]


def test_no_user_server_means_no_ids_and_none_is_started(installed_hq):
    hq = installed_hq
    offered, took = complete(hq, "hq-client show ")
    assert offered == []
    assert took < 5   # a program start; nothing waited on
    assert not [p for p in hq.processes() if "hq.userd.main" in " ".join(p.cmdline())]


def test_a_user_server_that_does_not_answer_costs_at_most_a_second(installed_hq):
    hq = installed_hq
    # something listens on the user-server's socket but never says hello (a hung daemon)
    path = runtime_dir(hq.inst.root) / SOCKET_NAME
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hung.bind(str(path))
        hung.listen(8)
        started = time.monotonic()
        offered, took = complete(hq, "hq-client show ")
        assert offered == []
        _, quick = complete(hq, "hq-client sh")   # the same program start, no job ids asked
        assert 0.5 < took - quick < 1.6, (took, quick)   # the 1 s limit, then nothing
        assert time.monotonic() - started < 10
    finally:
        hung.close()
        path.unlink(missing_ok=True)

"""The smaller holes (issue 9, item 10): a squatted runtime directory, a command that looks
like an option, a user-server left without hq-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest
from fixtures.running_hq import eventually, wait_gone


@pytest.mark.root
def test_a_runtime_directory_squatted_by_another_user_does_not_lock_the_user_out(cluster_hq):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    squat = Path(f"/tmp/hq-{alice.uid}")
    aside = squat.with_name(f"{squat.name}.aside-{os.getpid()}")
    if squat.exists():
        squat.rename(aside)
    try:
        squat.mkdir(mode=0o777)
        os.chown(squat, bob.uid, bob.gid)   # made first by bob, who could read every socket
        result = hq.submit(alice, "--json", "-E", "hqnode2,hqnode3", "echo fine",
                           cwd=hq.workdir(alice))
        assert result.returncode == 0, result.stderr
        assert f"using {alice.home}/.hq/run/" in result.stderr   # one clear line says where
        hq.wait_jobs(__import__("json").loads(result.stdout)["ids"], {"done"})
        assert list(squat.iterdir()) == []    # nothing of alice's went into bob's directory
        fallback = alice.home / ".hq" / "run"
        assert (fallback.stat().st_mode & 0o077) == 0
    finally:
        for proc in hq.processes():
            if proc.uids().real == alice.uid:
                with contextlib.suppress(Exception):
                    proc.kill()
        shutil.rmtree(squat, ignore_errors=True)
        if aside.exists():
            aside.rename(squat)


def test_a_command_that_looks_like_an_option_is_run_as_a_command(running_hq):
    hq = running_hq
    job_id = hq.submit_id("--", "-x")
    info = hq.wait_for(job_id, {"done", "failed"})
    # sh -c -- -x: the shell looks for a command named -x (it does not turn on tracing and
    # succeed with nothing run)
    assert info["state"] == "failed" and info["exit_code"] == 127, info


def test_a_user_server_without_hq_server_exits_after_its_idle_timeout(running_hq):
    hq = running_hq
    (hq.inst.etc / "hq-server.cfg").write_text(
        "[server]\nuser_server_idle_timeout = 1\n[scheduler]\nload_factor = 100\n")
    hq.stop_server()
    started = time.monotonic()
    result = hq.client("status")           # starts a user-server; hq-server is not there
    assert result.returncode != 0
    userd = hq.daemon("hq.userd.main")
    wait_gone(userd.pid, timeout=30)
    assert time.monotonic() - started < 30
    eventually(lambda: not any("hq.userd.main" in " ".join(p.cmdline())
                               for p in hq.processes()), what="no user-server left")

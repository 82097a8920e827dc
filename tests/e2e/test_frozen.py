"""Frozen programs (scripts/makeFreezedVersion.py): built once per test session with PyInstaller
(onedir), then run for real: ``hq-submit --help`` from the build, and a job submitted by the
frozen hq-submit that runs under a frozen exec-server found in the installation's var/frozen/.

The last test does the same over ssh on a test host (network namespaces, as root), where the
user-server's bridge command lets the host pick its frozen exec-server.

The build takes ~30-40 s (two programs, PyInstaller's cache warm or cold); the tests after it a
few seconds each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def frozen_builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hq-exec-server and hq-submit built onedir into a session directory (PROGRAM/PROGRAM)."""
    dest = tmp_path_factory.mktemp("frozen")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "makeFreezedVersion.py"),
                           "--programs", "hq-exec-server,hq-submit", "--form", "onedir",
                           "--dest", str(dest)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"built {dest / 'hq-exec-server' / 'hq-exec-server'}" in done.stdout
    return dest


def test_frozen_hq_submit_prints_its_help_without_the_virtualenv(frozen_builds, tmp_path):
    # no virtualenv Python anywhere on PATH: the build must carry everything it needs
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HQPATH": str(tmp_path)}
    done = subprocess.run([str(frozen_builds / "hq-submit" / "hq-submit"), "--help"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: hq-submit [OPTIONS] [COMMAND]...")
    assert "--cores" in done.stdout or "-c," in done.stdout


def test_a_job_runs_under_the_frozen_exec_server(frozen_builds, running_hq):
    hq = running_hq
    exec_server = frozen_builds / "hq-exec-server" / "hq-exec-server"
    (hq.inst.var / "frozen").mkdir()
    (hq.inst.var / "frozen" / "hq-exec-server").symlink_to(frozen_builds / "hq-exec-server")
    # submitted by the frozen hq-submit, which starts the user-server from its own build
    job = ('readlink /proc/$PPID/exe; tr "\\0" " " < /proc/$PPID/cmdline; echo;'
           ' env | grep -c -E "^(_PYI|_MEIPASS|LD_LIBRARY_PATH_ORIG)" || true')
    done = subprocess.run([str(frozen_builds / "hq-submit" / "hq-submit"), "--parsable", job],
                          env=hq.env(), cwd=hq.workdir, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.split()[0])
    info = hq.wait_for(job_id, {"done", "failed"}, timeout=60)
    assert info["state"] == "done", info
    exe, cmdline, leaked = (hq.workdir / f"hq-{job_id}.out").read_text().splitlines()
    # the job's parent is the exec-server daemon, and that is the frozen executable
    assert Path(exe) == exec_server.resolve()
    assert "hq.execd.main --daemon" in cmdline
    # no variable of PyInstaller's bootloader reached the job's environment
    assert leaked == "0"
    user_server = hq.daemon("hq.userd.main")
    assert Path(user_server.exe()) == (frozen_builds / "hq-submit" / "hq-submit").resolve()


def test_hq_frozen_no_keeps_the_exec_server_on_the_virtualenv(frozen_builds, running_hq):
    hq = running_hq
    (hq.inst.var / "frozen").mkdir()
    (hq.inst.var / "frozen" / "hq-exec-server").symlink_to(frozen_builds / "hq-exec-server")
    job_id = hq.submit_id("readlink /proc/$PPID/exe", HQ_FROZEN="no")
    assert hq.wait_for(job_id, {"done", "failed"})["state"] == "done"
    exe = (hq.workdir / f"hq-{job_id}.out").read_text().strip()
    assert Path(exe) == Path(psutil.Process(os.getpid()).exe()).resolve()


@pytest.mark.root
def test_a_job_on_a_host_over_ssh_runs_under_its_frozen_exec_server(frozen_builds, cluster_hq):
    hq = cluster_hq
    alice = hq.users.alice
    # a copy every user can run, in the installation (the test hosts share this filesystem)
    installed = hq.root / "var" / "frozen" / "hq-exec-server"
    shutil.copytree(frozen_builds / "hq-exec-server", installed, symlinks=True)
    work = hq.workdir(alice)
    (job_id,) = hq.submit_ids(alice, "readlink /proc/$PPID/exe; hostname", cwd=work)
    hq.wait_jobs([job_id], {"done", "failed"})
    info = hq.show(alice, job_id)
    assert info["state"] == "done", info
    exe, hostname = (work / f"hq-{job_id}.out").read_text().splitlines()
    assert Path(exe) == installed / "hq-exec-server"
    assert hostname == info["host"] and hostname in dict(hq.hosts.hosts)

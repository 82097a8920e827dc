"""bin/ programs run a frozen build (scripts/makeFreezedVersion.py) from var/frozen/ instead of
the virtualenv when there is one newer than the installed code, unless HQ_FROZEN=no."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = ("hq-submit", "hq-client", "hq-admin", "hq-dbadmin", "hq-server", "hq-user-server",
            "hq-exec-server", "hq-monitor")


def stand_in(path: Path, says: str) -> None:
    """An executable that prints ``says`` and its arguments, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" {says} "$@"\n')
    path.chmod(0o755)


def run(program: str, root: Path, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HQPATH", "HQ_VE_PATH",
                                                               "HQ_FROZEN")}
    done = subprocess.run([str(REPO / "bin" / program), "a b"], env={**base, "HQPATH": str(root),
                          **env}, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()


@pytest.fixture
def installation(tmp_path: Path) -> Path:
    stand_in(tmp_path / "hqVE" / "bin" / "python", "virtualenv")
    (tmp_path / "hqVE" / ".hq-compiled").touch()
    old = time.time() - 60
    os.utime(tmp_path / "hqVE" / ".hq-compiled", (old, old))
    return tmp_path


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_onedir_build_runs_instead_of_the_virtualenv(program: str, installation: Path) -> None:
    assert run(program, installation)[0] == "virtualenv"
    stand_in(installation / "var" / "frozen" / program / program, "frozen")
    assert run(program, installation) == ["frozen", "a b"]
    assert run(program, installation, HQ_FROZEN="no")[0] == "virtualenv"


def test_a_onefile_build_runs_and_a_stale_one_does_not(installation: Path) -> None:
    frozen = installation / "var" / "frozen" / "hq-submit"
    stand_in(frozen, "frozen")
    assert run("hq-submit", installation) == ["frozen", "a b"]
    # `make` installed the code again after the build: the build is stale
    (installation / "hqVE" / ".hq-compiled").touch()
    old = time.time() - 30
    os.utime(frozen, (old, old))
    assert run("hq-submit", installation)[0] == "virtualenv"


def test_a_build_that_is_not_executable_is_ignored(installation: Path) -> None:
    frozen = installation / "var" / "frozen" / "hq-client" / "hq-client"
    stand_in(frozen, "frozen")
    frozen.chmod(0o644)
    assert run("hq-client", installation)[0] == "virtualenv"


# ---------------------------------------------------------------- the user-server's bridge

def bridge(argv: list[str]) -> list[str]:
    """Run a bridge command line as the host would (ssh runs it with the user's shell)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()


@pytest.mark.parametrize("where", ["local", "remote"])
def test_the_user_server_starts_a_hosts_frozen_exec_server_when_it_has_one(
        where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hq.userd import execlink

    # the fallback is this Python: a stand-in for it shows which one ran
    python = tmp_path / "python"
    stand_in(python, "virtualenv")
    monkeypatch.setattr(execlink.sys, "executable", str(python))
    make = execlink.local_bridge_argv if where == "local" else execlink.remote_bridge_argv
    root = tmp_path / "hq"
    root.mkdir()
    environ = {"HQPATH": str(root)}
    assert bridge(make(environ)) == ["virtualenv", "-P", "-m", "hq.execd.main", "--bridge"]
    stand_in(root / "var" / "frozen" / "hq-exec-server" / "hq-exec-server", "frozen")
    assert bridge(make(environ)) == ["frozen", "--bridge"]
    assert bridge(make({**environ, "HQ_FROZEN": "no"}))[0] == "virtualenv"
    (root / "var" / "frozen" / "hq-exec-server" / "hq-exec-server").chmod(0o644)
    assert bridge(make(environ))[0] == "virtualenv"


def test_the_remote_bridge_command_line_carries_no_setting_but_the_path() -> None:
    from hq.userd.execlink import remote_bridge_argv

    argv = remote_bridge_argv({"HQPATH": "/shared/hq", "HQ_FROZEN": "no"})
    # a fixed script; the path and the choice are its arguments, never spliced into it
    assert argv[:4] == ["env", "HQPATH=/shared/hq", "sh", "-c"]
    assert "/shared/hq" not in argv[4]
    assert argv[5:8] == ["sh", "/shared/hq", "no"]

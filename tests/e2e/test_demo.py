"""The README's first command: `make run` sets hq up on this machine and runs a job array."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def test_make_run_demo_in_a_fresh_installation(tmp_path):
    root = tmp_path / "hq"
    root.mkdir()
    for name in ("bin", "scripts", "etc"):
        shutil.copytree(REPO / name, root / name)
    (root / "hqVE").symlink_to(REPO / "hqVE")
    env = {k: v for k, v in os.environ.items() if k not in ("HQPATH", "HQ_VE_PATH")}
    env["HOME"] = str(tmp_path / "home")
    try:
        result = subprocess.run(["sh", str(root / "scripts" / "demo.sh")], env=env,
                                capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "20 jobs finished: 20 done" in result.stderr + result.stdout
        assert "task 1 ran on" in result.stdout
        assert len(list((root / "var" / "demo").glob("hq-*.out"))) == 20
    finally:
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("HQPATH") == str(root):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

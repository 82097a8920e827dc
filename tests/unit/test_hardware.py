"""What a host has, read from a /proc tree and nvidia-smi (both faked here as files)."""

from __future__ import annotations

import stat
from pathlib import Path

from hq.hardware import detect, gpus


def _proc(tmp_path: Path, sockets: int, per_socket: int, gpu_dirs: int = 0) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("".join(f"processor\t: {n}\nphysical id\t: {n // per_socket}\n\n"
                                          for n in range(sockets * per_socket)))
    (proc / "meminfo").write_text("MemTotal:       16384000 kB\nMemFree:  1000 kB\n")
    for n in range(gpu_dirs):
        (proc / "driver" / "nvidia" / "gpus" / f"0000:0{n}:00.0").mkdir(parents=True)
    return proc


def _fake_smi(tmp_path: Path, output: str, code: int = 0) -> str:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_uuids_from_nvidia_smi_in_its_order(tmp_path: Path):
    smi = _fake_smi(tmp_path, "GPU 1: NVIDIA A100 (UUID: GPU-bbbb)\n"
                              "GPU 0: NVIDIA A100 (UUID: GPU-aaaa)\n")
    assert gpus(_proc(tmp_path, 1, 2), smi) == ["GPU-aaaa", "GPU-bbbb"]


def test_proc_driver_when_nvidia_smi_is_missing_and_none_without_either(tmp_path: Path):
    proc = _proc(tmp_path, 2, 12, gpu_dirs=2)
    assert gpus(proc, str(tmp_path / "no-such-smi")) == ["0", "1"]
    broken = _fake_smi(tmp_path, "NVIDIA-SMI has failed\n", code=9)
    assert gpus(proc, broken) == ["0", "1"]
    (tmp_path / "bare").mkdir()
    assert gpus(tmp_path / "bare", str(tmp_path / "no-such-smi")) == []


def test_sockets_and_memory(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 24)
    found = detect(_proc(tmp_path, 2, 12), str(tmp_path / "no-such-smi"))
    assert (found.cores, found.sockets, found.cores_per_socket) == (24, 2, 12)
    assert found.cores_text() == "2x12" and found.memory_mb == 16000 and found.gpus == []

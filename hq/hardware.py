"""What a host has: cores (and how they sit in sockets), memory and GPUs, read from /proc and
``nvidia-smi -L`` (or /proc/driver/nvidia when nvidia-smi is missing). Never from
``CUDA_VISIBLE_DEVICES``, which masks a process and says nothing about the host.

``hq-exec-server --hwdetect`` prints it; the host monitor reports it with its facts, and
``hq-admin lscluster --detect`` compares it with etc/cluster.tab.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NVIDIA_SMI_TIMEOUT_S = 10.0
_GPU_LINE = re.compile(r"GPU (\d+): .*?\(UUID: ([^)]+)\)")


@dataclass(frozen=True)
class Hardware:
    cores: int
    sockets: int | None
    cores_per_socket: int | None
    memory_mb: int
    gpus: list[str] = field(default_factory=list)   # UUIDs where known, else indexes

    def cores_text(self) -> str:
        """``2x12`` when the sockets are known and even, else the count."""
        if self.sockets and self.cores_per_socket and \
                self.sockets * self.cores_per_socket == self.cores and self.sockets > 1:
            return f"{self.sockets}x{self.cores_per_socket}"
        return str(self.cores)


def detect(proc: Path = Path("/proc"), nvidia_smi: str = "nvidia-smi") -> Hardware:
    cores = os.cpu_count() or 1
    sockets, per_socket = _sockets(proc / "cpuinfo", cores)
    return Hardware(cores=cores, sockets=sockets, cores_per_socket=per_socket,
                    memory_mb=_memory_mb(proc / "meminfo"), gpus=gpus(proc, nvidia_smi))


def _sockets(cpuinfo: Path, cores: int) -> tuple[int | None, int | None]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None, None
    ids = {line.split(":", 1)[1].strip() for line in text.splitlines()
           if line.startswith("physical id")}
    if not ids:
        return None, None
    return len(ids), cores // len(ids) if cores % len(ids) == 0 else None


def _memory_mb(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def gpus(proc: Path = Path("/proc"), nvidia_smi: str = "nvidia-smi") -> list[str]:
    """The host's NVIDIA GPUs: UUIDs from ``nvidia-smi -L``, else one index per device
    under /proc/driver/nvidia/gpus; none when neither is there."""
    try:
        listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True,
                                timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is not None and listed.returncode == 0:
        found = [(int(n), uuid) for n, uuid in _GPU_LINE.findall(listed.stdout)]
        if found:
            return [uuid for _n, uuid in sorted(found)]
    devices = proc / "driver" / "nvidia" / "gpus"
    try:
        return [str(n) for n in range(len(list(devices.iterdir())))]
    except OSError:
        return []

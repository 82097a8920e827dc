"""Spawn rate of hq-exec-server against ``xargs -P 2`` in the same run (DESIGN §7).

Starts a private exec-server through its bridge (temporary HOME and HQPATH), sends N signed
``true`` jobs in one ``run`` message and times until every ``ended`` event is back; then times
``seq N | xargs -P 2 -n 1 true``. Repeats and prints medians.

    hqVE/bin/python benchmarks/execd_spawn.py -n 2000 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hq import auth, jobspec, protocol  # noqa: E402


def _frames(proc: subprocess.Popen[bytes], buffer: bytearray, timeout: float):
    """Yield decoded messages from the bridge's stdout until ``timeout`` passes."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buffer) >= 4:
            (length,) = struct.unpack(">I", buffer[:4])
            if len(buffer) < 4 + length:
                break
            message = protocol.decode(bytes(buffer[4:4 + length]))
            del buffer[:4 + length]
            yield message
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1 << 20)
            if not chunk:
                return
            buffer += chunk


def time_exec_server(count: int, work: Path, to_devnull: bool) -> float:
    key = auth.load_signing_key(create=True)
    owner = auth.user_name(os.geteuid())
    env = {"PATH": "/usr/bin:/bin"}
    digest = jobspec.submission_digest(env, 0o022)
    out = {"stdout": "/dev/null", "stderr": "/dev/null"} if to_devnull else {}
    jobs = []
    for job_id in range(1, count + 1):
        spec = jobspec.JobSpec(command="true", cwd=str(work), **out)
        wire = {**spec.to_wire(), "signature": auth.sign_job(key, spec, owner, digest)}
        jobs.append({"id": job_id, "submission_id": 1, "spec": wire})
    message = {"type": "run", "owner": owner, "jobs": jobs,
               "submissions": {"1": {"environment": env, "umask": 0o022}}}
    bridge = subprocess.Popen([sys.executable, "-m", "hq.execd.main", "--bridge"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert bridge.stdin is not None
    buffer = bytearray()
    bridge.stdin.write(protocol.encode(protocol.hello("userd", "benchmark")))
    bridge.stdin.flush()
    welcome = next(_frames(bridge, buffer, 10))
    try:
        started = time.monotonic()
        bridge.stdin.write(protocol.encode(message))
        bridge.stdin.flush()
        ended = 0
        for frame in _frames(bridge, buffer, 120):
            if frame["type"] == "job_events":
                ended += sum(1 for e in frame["events"] if e["event"] == "ended")
                if ended >= count:
                    break
        elapsed = time.monotonic() - started
        assert ended == count, f"only {ended} of {count} jobs ended"
        return elapsed
    finally:
        bridge.kill()
        bridge.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(welcome["pid"], signal.SIGTERM)


def time_xargs(count: int, work: Path | None = None) -> float:
    """``xargs -P 2 -n 1 true``; with ``work``, each job also creates its two output files
    there (through sh, as hq does), so that the file system's cost is in the baseline too."""
    if work is None:
        command = f"seq {count} | xargs -P 2 -n 1 true"
    else:
        command = (f"cd {work} && seq {count} | "
                   "xargs -P 2 -I@ sh -c 'true > x-@.out 2> x-@.err'")
    started = time.monotonic()
    subprocess.run(command, shell=True, check=True)  # noqa: S602
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--devnull", action="store_true",
                        help="send output to /dev/null instead of hq-%%j.out/.err files")
    parser.add_argument("--dir", default=None,
                        help="where the jobs run and write their output (default: $TMPDIR); "
                        "file creation there is part of what is measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hq-bench-", dir=args.dir) as scratch:
        root = Path(scratch)
        for sub in ("home", "hq", "work"):
            (root / sub).mkdir()
        os.environ.update(HOME=str(root / "home"), HQPATH=str(root / "hq"),
                          PYTHONPATH=str(REPO))
        hq_times, xargs_times, xargs_files_times = [], [], []
        for _ in range(args.runs):
            for old in (root / "work").iterdir():
                old.unlink()
            hq_times.append(time_exec_server(args.n, root / "work", args.devnull))
            xargs_times.append(time_xargs(args.n))
            if not args.devnull:
                xargs_files_times.append(time_xargs(args.n, root / "work"))
        shutil.rmtree(auth.runtime_dir(root / "hq"), ignore_errors=True)
    hq_s, xargs_s = statistics.median(hq_times), statistics.median(xargs_times)
    output = "/dev/null" if args.devnull else f"hq-%j.out/.err files in {args.dir or '$TMPDIR'}"
    print(f"{args.n} x true, median of {args.runs} (output: {output})")
    print(f"  hq-exec-server   {hq_s:6.2f} s  {args.n / hq_s:7.0f} jobs/s   "
          f"runs: {', '.join(f'{t:.2f}' for t in hq_times)}")
    print(f"  xargs -P 2       {xargs_s:6.2f} s  {args.n / xargs_s:7.0f} jobs/s   "
          f"runs: {', '.join(f'{t:.2f}' for t in xargs_times)}")
    if xargs_files_times:
        files_s = statistics.median(xargs_files_times)
        print(f"  xargs + files    {files_s:6.2f} s  {args.n / files_s:7.0f} jobs/s   "
              f"runs: {', '.join(f'{t:.2f}' for t in xargs_files_times)}")
    print(f"  ratio hq/xargs   {hq_s / xargs_s:6.2f}")


if __name__ == "__main__":
    main()

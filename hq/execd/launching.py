"""What a job handed over becomes before it starts: its environment and its ``Launch`` (the
resolved command, directory, output paths and limits), from its signed spec, its
submission's environment and what hq-server gave it (array id, GPUs). Pure: the service
checks the signature first and starts what this returns.

The environment is the submission's, plus:
- ``HQ_JOB_ID``, ``HQ_SUBMISSION_ID``, ``HQ_HOST`` and ``HQ_EXECD_SOCKET`` (through which
  hq-submit inside the job reaches the user-server), and the marker that finds every
  process of the job whatever it does with sessions and groups;
- for an array element ``HQ_ARRAY_INDEX``, ``HQ_ARRAY_ID`` and Slurm's
  ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_JOB_ID`` (never ``SLURM_JOB_ID`` or
  ``SLURM_NTASKS``, which switch MPI launchers and frameworks into Slurm mode); none of these
  is inherited from a submitting job;
- ``HQ_CPUS`` and as many threads as cores for OpenMP, MKL and OpenBLAS unless the job set
  them itself, so a 1-core numpy job does not spread over every core of the host;
- on a host with GPUs, ``CUDA_VISIBLE_DEVICES`` and ``HQ_GPUS``: the devices hq gave it
  (none when it asked for none; assignment, not enforcement).
"""

from __future__ import annotations

from pathlib import Path

from hq import jobspec
from hq.execd import processes
from hq.execd.runner import JobKey, Launch
from hq.protocol.messages import RunJob, SubmissionEnv

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ARRAY_VARIABLES = ("HQ_ARRAY_INDEX", "HQ_ARRAY_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_JOB_ID")


def job_environment(item: RunJob, key: JobKey, submission: SubmissionEnv, *, hostname: str,
                    socket_path: Path, installation: str) -> dict[str, str]:
    """The environment job ``item`` runs with (see the module docstring)."""
    spec = item.spec
    env = dict(submission.environment)
    env.update(HQ_JOB_ID=str(item.id), HQ_SUBMISSION_ID=str(item.submission_id),
               HQ_HOST=hostname, HQ_EXECD_SOCKET=str(socket_path))
    env[processes.MARKER] = processes.marker_value(installation, *key)
    for name in ARRAY_VARIABLES:
        env.pop(name, None)
    if spec.array_index is not None:
        array_id = str(item.array_id or item.id)
        env.update(HQ_ARRAY_INDEX=str(spec.array_index), HQ_ARRAY_ID=array_id,
                   SLURM_ARRAY_TASK_ID=str(spec.array_index), SLURM_ARRAY_JOB_ID=array_id)
    if item.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = env["HQ_GPUS"] = ",".join(item.gpus)
    # one submitted from inside a job inherits what hq set there: that is not the user's
    parent = env.get("HQ_CPUS")
    env["HQ_CPUS"] = str(spec.cores)
    for name in THREAD_VARIABLES:
        if env.get(name) in (None, parent):
            env[name] = str(spec.cores)
    return env


def launch_of(item: RunJob, key: JobKey, submission: SubmissionEnv, env: dict[str, str]
              ) -> tuple[Launch, tuple[str, int] | None]:
    """The job's ``Launch``, and its hq log file with the umask to open it with (if any)."""
    spec = item.spec

    def path(template: str) -> str:
        return jobspec.resolve_path(template, item.id, spec.array_index, spec.cwd,
                                    item.array_id)

    launch = Launch(key=key, command=spec.command, shell=spec.shell, cwd=spec.cwd, env=env,
                    umask=submission.umask, time_limit_s=spec.time_limit_s,
                    memory_limit_mb=spec.memory_mb, cores=spec.cores, stdout=path(spec.stdout),
                    stderr=path(spec.stderr))
    log_path = None if not spec.log_path else (path(spec.log_path), submission.umask)
    return launch, log_path

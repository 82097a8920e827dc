"""CPU pinning (``[execd] pin_cpus``): the choice of CPUs, and real jobs bound to them."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from test_execd_runner import Jobs, launch

from hq.execd.pinning import CpuPinner, bound_elsewhere, parse_cpu_list


def pinner(cpus: int, others: Counter[int] | None = None) -> CpuPinner:
    return CpuPinner(usable=set(range(cpus)), scan=lambda usable, uid: others or Counter())


def test_the_kernels_cpu_lists_are_read():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("5") == {5}


def test_jobs_get_distinct_cpus_and_give_them_back():
    pins = pinner(8)
    a, b = pins.choose("a", 4), pins.choose("b", 2)
    assert a == (0, 1, 2, 3) and b == (4, 5)
    pins.release("a")
    assert pins.choose("c", 3) == (0, 1, 2)      # a's CPUs are free again
    assert pins.choose("d", 9) is None            # more than the exec-server may use: unbound
    assert set(pins.held()) == {"b", "c"}


def test_cpus_other_users_jobs_are_bound_to_are_avoided():
    # another account's processes are bound to CPUs 0 and 1 (two on 0)
    pins = pinner(4, Counter({0: 2, 1: 1}))
    assert pins.choose("a", 2) == (2, 3)
    assert pins.choose("b", 1) == (1,)            # then the least loaded one


def test_when_every_cpu_is_taken_jobs_share_the_least_loaded():
    pins = pinner(2)
    assert [pins.choose(k, 1) for k in "abc"] == [(0,), (1,), (0,)]


def test_the_scan_counts_other_accounts_bound_processes_only():
    usable = frozenset(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("needs a machine with 2 CPUs or more to bind a process to part of them")
    cpu = min(usable)
    child = os.fork()
    if child == 0:   # a process of ours bound to one CPU: not counted (our own jobs are held)
        os.sched_setaffinity(0, {cpu})
        os.setsid()
        time.sleep(30)
        os._exit(0)
    try:
        for _ in range(100):
            if os.sched_getaffinity(child) == {cpu}:
                break
            time.sleep(0.01)
        ours = bound_elsewhere(usable, os.geteuid())
        theirs = bound_elsewhere(usable, uid=os.geteuid() + 12345)  # seen from another account
        assert theirs[cpu] >= ours[cpu] + 1
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_pinned_jobs_run_on_their_own_cpus(tmp_path: Path):
    usable = os.sched_getaffinity(0)
    if len(usable) < 2:
        pytest.skip("needs a machine with 2 CPUs or more")

    async def test() -> None:
        jobs = Jobs()
        jobs.runner.pinner = CpuPinner(scan=lambda usable, uid: Counter())
        show = ("grep Cpus_allowed_list /proc/self/status; echo list=$HQ_CPU_LIST; "
                "sh -c 'grep Cpus_allowed_list /proc/self/status'; sleep 0.5")
        for job_id in (1, 2):
            jobs.start(launch(tmp_path, job_id, show))
        for i in (1, 2):
            await jobs.outcome(i)
        texts = [(tmp_path / f"{i}.out").read_text() for i in (1, 2)]
        bound = []
        for text in texts:
            lists = [line.split(":")[1].strip() for line in text.splitlines()
                     if line.startswith("Cpus_allowed_list")]
            listed = next(line for line in text.splitlines() if line.startswith("list="))
            # the job, and what it forks, on the CPU it was told of
            assert len(lists) == 2 and lists[0] == lists[1] == listed[5:], text
            bound.append(parse_cpu_list(lists[0]))
        assert bound[0].isdisjoint(bound[1]) and all(len(b) == 1 for b in bound)
        assert jobs.runner.pinner.held() == {}            # given back at the end
        assert os.sched_getaffinity(0) == usable           # the exec-server is not bound

    asyncio.run(test())

"""The Python API (hq.api) against real daemons, on both backends: an array with a cap, a
job after it, waiting, looking, cancelling, resubmitting what failed."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import json, sys
from hq.api import Client
from hq.errors import NotFound

with Client() as hq:
    ids = hq.submit('test "$HQ_ARRAY_INDEX" != 3 || test -e fixed', array=range(1, 5), cap=2,
                    name="scan")
    merge = hq.submit("echo merged > merged.txt", after=[ids[0]], kill_on_invalid_dep=False)
    ended = hq.wait(ids, timeout=60)
    states = {r.id: str(r.state) for r in ended}
    open("fixed", "w").close()
    again = hq.resubmit(ids[0], states=("failed",))
    done = hq.wait(again + merge, timeout=60)
    jobs = hq.jobs(array=ids[0])
    counts = hq.array_counts(ids[0])
    slow = hq.submit("sleep 60")
    cancelled = hq.cancel(slow + [999999])
    napping = hq.submit("sleep 60", array=range(1, 4), hold=True)
    whole = hq.cancel_array(napping[0])
    try:
        hq.show(999999)
        missing = "found?"
    except NotFound as err:
        missing = str(err)
    print(json.dumps({"ids": ids, "states": states, "again": again,
                      "done": [str(r.state) for r in done],
                      "array": [(j.array_index, j.name) for j in jobs], "counts": counts,
                      "resubmit_of": hq.show(again[0]).resubmit_of,
                      "cancelled": {str(k): v for k, v in cancelled.items()}, "whole": whole,
                      "missing": missing}))
"""


def test_the_python_api_runs_a_small_workflow(running_hq):
    hq = running_hq
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=hq.env(), cwd=hq.workdir,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    import json

    out = json.loads(result.stdout)
    ids = out["ids"]
    assert len(ids) == 4 and ids == list(range(ids[0], ids[0] + 4))
    assert sorted(out["states"].values()) == ["done", "done", "done", "failed"]
    assert out["states"][str(ids[2])] == "failed"
    assert len(out["again"]) == 1 and out["resubmit_of"] == ids[2]
    assert out["done"] == ["done", "done"]
    assert (hq.workdir / "merged.txt").read_text() == "merged\n"
    assert out["array"] == [[i, "scan"] for i in range(1, 5)]
    assert out["counts"] == {"done": 3, "failed": 1}   # the old array keeps its failed one
    assert out["cancelled"]["999999"] == "not found"
    assert out["cancelled"][str(max(int(k) for k in out["cancelled"] if k != "999999"))] in (
        "cancelled", "cancelling")
    assert "no such job: 999999" in out["missing"]
    assert out["whole"] == {"cancelled": 3}
    assert os.path.exists(hq.workdir / "fixed")

"""Another user cannot steal a job's output, nor redirect it, in a directory both may write.

hqalice's jobs write into a shared 1777 directory where hqbob prepared traps: an output file
made first (mode 0666, to read what the victim's job writes there) and a symbolic link to a
directory of his own on the output path. The jobs fail with the reason and write nothing
anywhere bob can read; alice's own links, and /dev/null, keep working.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every account may write, as /tmp or a group scratch is."""
    path = Path(tempfile.mkdtemp(prefix="hq-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_bob(hq, script: str) -> None:  # type: ignore[no-untyped-def]
    result = hq.run_python(hq.users.bob, script)
    assert result.returncode == 0, result.stderr


def test_an_output_file_another_user_made_first_is_not_written(cluster_hq, shared_dir):
    hq = cluster_hq
    trap = shared_dir / "victim.out"
    as_bob(hq, f"import os\nfd = os.open({str(trap)!r}, os.O_CREAT | os.O_WRONLY, 0o666)\n"
               f"os.fchmod(fd, 0o666)\n")
    (job_id,) = hq.submit_ids(hq.users.alice, "-o", "victim.out", "echo secret-output",
                              cwd=shared_dir)
    hq.wait_jobs([job_id], {"done", "failed"})
    info = hq.show(hq.users.alice, job_id)
    assert info["state"] == "failed"
    assert "belongs to uid" in info["state_reason"] and "not written" in info["state_reason"]
    assert trap.read_text() == ""              # nothing of the job reached bob's file
    assert trap.stat().st_uid == hq.users.bob.uid


def test_a_symlinked_directory_planted_by_another_user_is_not_followed(cluster_hq, shared_dir):
    hq = cluster_hq
    elsewhere = Path(tempfile.mkdtemp(prefix="hq-bob-", dir="/tmp"))
    try:
        os.chown(elsewhere, hq.users.bob.uid, hq.users.bob.gid)
        elsewhere.chmod(0o777)
        as_bob(hq, f"import os\nos.symlink({str(elsewhere)!r}, {str(shared_dir / 'outdir')!r})\n")
        (job_id,) = hq.submit_ids(hq.users.alice, "-o", "outdir/x.out", "echo secret-output",
                                  cwd=shared_dir)
        hq.wait_jobs([job_id], {"done", "failed"})
        info = hq.show(hq.users.alice, job_id)
        assert info["state"] == "failed"
        assert "symbolic link 'outdir'" in info["state_reason"]
        assert "not followed" in info["state_reason"]
        assert list(elsewhere.iterdir()) == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_the_users_own_links_and_devices_still_work(cluster_hq, shared_dir):
    hq = cluster_hq
    alice = hq.users.alice
    work = hq.workdir(alice)
    real = work / "results"
    real.mkdir()
    os.chown(real, alice.uid, alice.gid)
    result = hq.run_python(alice, f"import os\nos.symlink({str(real)!r}, "
                                  f"{str(shared_dir / 'mine')!r})\n")
    assert result.returncode == 0, result.stderr
    ids = hq.submit_ids(alice, "-o", "mine/%j.out", "echo through-my-link", cwd=shared_dir)
    ids += hq.submit_ids(alice, "-o", "/dev/null", "-O", "/dev/null", "echo to-nowhere",
                         cwd=shared_dir)
    hq.wait_jobs(ids, {"done"})
    assert (real / f"{ids[0]}.out").read_text() == "through-my-link\n"
    # the job's file follows the job's umask and belongs to the job's user
    assert (real / f"{ids[0]}.out").stat().st_uid == alice.uid

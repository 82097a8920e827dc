"""What another account on the head node can read of someone's job: nothing.

hq's files hold every job's command, directory and whole environment (API tokens included).
A job with a secret in its command, name and environment runs as hqalice; then hqbob reads
every file he can open under the installation and under every runtime directory in /tmp, and
finds the secret in none of them. The job's own output goes where its owner says, with their
umask (as in Slurm), and is not part of this check: here it goes to /dev/null.
"""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

# Runs as the reading user: every regular file it can open, without following links or
# blocking on a FIFO, searched for the secrets.
READ_EVERYTHING = r"""
import json, os, stat, sys
needles = [s.encode() for s in sys.argv[1].split(",")]
found, read = [], 0
for top in sys.argv[2:]:
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                data = b""
                while chunk := os.read(fd, 1 << 20):
                    data += chunk
            except OSError:
                continue
            finally:
                os.close(fd)
            read += 1
            found += [path for needle in needles if needle in data]
print(json.dumps({"read": read, "found": found}))
"""


def test_another_user_finds_no_trace_of_a_jobs_secrets(cluster_hq):
    hq = cluster_hq
    alice, bob = hq.users.alice, hq.users.bob
    in_command, in_environment = f"cmd-{secrets.token_hex(8)}", f"env-{secrets.token_hex(8)}"
    work = hq.workdir(alice)
    result = hq.run_python(alice, (
        "import os, sys\n"
        f"os.environ['API_TOKEN'] = {in_environment!r}\n"
        f"os.chdir({str(work)!r})\n"
        "from hq.cli.submit import main\n"
        f"sys.argv = ['hq-submit', '--wait', '-o', '/dev/null', '-O', '/dev/null',\n"
        f"            '--name', 'job-{in_command}', 'test -n \"$API_TOKEN\" # {in_command}']\n"
        "main()\n"))
    assert result.returncode == 0, result.stderr

    runtime_dirs = sorted(str(p) for p in Path("/tmp").glob("hq-*")
                          if p.is_dir() and p.stat().st_uid != bob.uid)
    assert runtime_dirs, "alice's and the admin's runtime directories exist"
    scan = hq.run_python(bob, READ_EVERYTHING, f"{in_command},{in_environment}",
                         str(hq.root), *runtime_dirs)
    assert scan.returncode == 0, scan.stderr
    report = json.loads(scan.stdout)
    assert report["found"] == []
    assert report["read"] > 0   # etc/cluster.tab and the like: the scan did read files
    # the data the secrets went into, and the places users must still reach
    var = hq.root / "var"
    assert stat.S_IMODE((var / "db").stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (var / "db").iterdir()} == {0o600}
    assert {p.name for p in (var / "db").iterdir()} >= {"hq.db", "hq.db-wal"}
    assert stat.S_IMODE((var / "log").stat().st_mode) == 0o700
    assert stat.S_IMODE((var / "run" / "hq-server.pid").stat().st_mode) == 0o600
    assert stat.S_IMODE((var / "run").stat().st_mode) == 0o755
    status = hq.client(bob, "status", "--json")   # bob still reaches hq-server's socket
    assert status.returncode == 0, status.stderr

    # and the secrets really are in those files, for their owners
    owner_scan = hq.run_python(hq.admin, READ_EVERYTHING, f"{in_command},{in_environment}",
                               str(var / "db"))
    assert json.loads(owner_scan.stdout)["found"], owner_scan.stderr


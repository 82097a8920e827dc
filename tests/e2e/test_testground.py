"""The test ground itself: its hosts answer ssh as the test users, share one filesystem, and
their faults (partition, kill, crash) do what the tests of hq's failure behaviour rely on."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import uuid

import pytest
from fixtures.testground import SshHosts, TwoUsers, UnixUser, run_as

pytestmark = pytest.mark.root

CONNECT_TIMEOUT_S = 2


def ssh(user: UnixUser, hosts: SshHosts, i: int, command: str, *,
        own_known_hosts: bool = False) -> subprocess.CompletedProcess[str]:
    """OpenSSH as ``user`` to hqnode<i>; host keys from the test ground's file, or the user's."""
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
    if not own_known_hosts:
        options += ["-o", f"UserKnownHostsFile={hosts.known_hosts}"]
    return run_as(user, ["ssh", *options, hosts.address(i), command],
                  timeout=CONNECT_TIMEOUT_S + 20)


def wait_for_ssh(user: UnixUser, hosts: SshHosts, i: int, timeout: float = 15) -> str:
    """The hostname hqnode<i> reports, once ssh works again (after heal or boot)."""
    deadline = time.monotonic() + timeout
    while True:
        result = ssh(user, hosts, i, "hostname")
        if result.returncode == 0:
            return result.stdout.strip()
        assert time.monotonic() < deadline, f"ssh to {hosts.name(i)}: {result.stderr}"
        time.sleep(0.2)


def test_three_hosts_on_their_own_network(healthy_test_hosts: SshHosts) -> None:
    assert healthy_test_hosts.hosts == [("hqnode1", "10.200.0.11"), ("hqnode2", "10.200.0.12"),
                                        ("hqnode3", "10.200.0.13")]
    for name, _ in healthy_test_hosts.hosts:
        # no default route inside a host: nothing it sends can leave 10.200.0.0/24
        routes = subprocess.run(["ip", "-n", name, "route", "show", "default"],
                                capture_output=True, text=True, check=True)
        assert routes.stdout.strip() == ""


def test_every_host_answers_ssh_as_each_user(healthy_test_hosts: SshHosts,
                                             test_users: TwoUsers) -> None:
    for user in test_users:
        for i, (name, _) in enumerate(healthy_test_hosts.hosts, start=1):
            result = ssh(user, healthy_test_hosts, i, "hostname; id -un")
            assert result.returncode == 0, result.stderr
            assert result.stdout.split() == [name, user.name]


def test_users_own_known_hosts_vouch_for_every_host(healthy_test_hosts: SshHosts,
                                                    test_users: TwoUsers) -> None:
    for user in test_users:
        for i in range(1, 4):
            result = ssh(user, healthy_test_hosts, i, "true", own_known_hosts=True)
            assert result.returncode == 0, result.stderr


def test_hosts_run_the_installation_python_as_the_user(healthy_test_hosts: SshHosts,
                                                       test_users: TwoUsers) -> None:
    code = "import hq, os, paramiko, socket; print(socket.gethostname(), os.getuid())"
    for i in range(1, 4):
        result = ssh(test_users.bob, healthy_test_hosts, i, shlex.join([sys.executable, "-c",
                                                                        code]))
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [healthy_test_hosts.name(i), str(test_users.bob.uid)]


def test_filesystem_is_shared(healthy_test_hosts: SshHosts, test_users: TwoUsers) -> None:
    alice = test_users.alice
    token = uuid.uuid4().hex
    path = alice.home / f"shared-{token}"
    try:
        wrote = ssh(alice, healthy_test_hosts, 1, f"echo {token} > {shlex.quote(str(path))}")
        assert wrote.returncode == 0, wrote.stderr
        read = ssh(alice, healthy_test_hosts, 2, f"cat {shlex.quote(str(path))}")
        assert read.returncode == 0, read.stderr
        assert read.stdout.strip() == token
        assert path.read_text().strip() == token   # and this machine sees it too
    finally:
        path.unlink(missing_ok=True)


def test_partition_makes_ssh_time_out_and_heal_brings_it_back(
        healthy_test_hosts: SshHosts, test_users: TwoUsers) -> None:
    hosts, alice = healthy_test_hosts, test_users.alice
    hosts.partition(2)
    try:
        start = time.monotonic()
        cut_off = ssh(alice, hosts, 2, "hostname")
        elapsed = time.monotonic() - start
        assert cut_off.returncode == 255
        assert "timed out" in cut_off.stderr or "No route to host" in cut_off.stderr, \
            cut_off.stderr
        assert elapsed < CONNECT_TIMEOUT_S + 5
        assert ssh(alice, hosts, 1, "hostname").stdout.strip() == "hqnode1"   # others fine
    finally:
        hosts.heal(2)
    assert wait_for_ssh(alice, hosts, 2) == "hqnode2"


def test_kill_then_boot_brings_the_host_back(healthy_test_hosts: SshHosts,
                                             test_users: TwoUsers) -> None:
    hosts, bob = healthy_test_hosts, test_users.bob
    hosts.kill(3)
    refused = ssh(bob, hosts, 3, "hostname")
    assert refused.returncode == 255
    assert "Connection refused" in refused.stderr   # the host is there, its sshd is not
    hosts.boot(3)
    assert wait_for_ssh(bob, hosts, 3) == "hqnode3"


def test_crash_then_boot_brings_the_host_back(healthy_test_hosts: SshHosts,
                                              test_users: TwoUsers) -> None:
    hosts, bob = healthy_test_hosts, test_users.bob
    hosts.crash(3)
    start = time.monotonic()
    silent = ssh(bob, hosts, 3, "hostname")
    assert silent.returncode == 255
    assert "Connection refused" not in silent.stderr   # powered off: no answer at all
    assert time.monotonic() - start < CONNECT_TIMEOUT_S + 5
    hosts.boot(3)
    assert wait_for_ssh(bob, hosts, 3) == "hqnode3"
    # the host key survived the "reboot": the users' known_hosts still vouch for it
    assert ssh(bob, hosts, 3, "true", own_known_hosts=True).returncode == 0

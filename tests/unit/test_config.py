"""hq.config: every configuration file an admin writes, good and bad, as the admin sees it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.config_files import error_of, write

import hq
from hq.config import (
    SERVER_KEYS,
    HostConfig,
    Installation,
    ServerConfig,
    UserConfig,
    load_cluster,
    load_database,
    load_server,
    load_users,
)
from hq.config_syntax import parse_bool, parse_memory_mb
from hq.errors import ConfigError
from hq.states import Role

REPO = Path(hq.__file__).resolve().parent.parent
SAMPLES = REPO / "etc"

ORIGINAL_HEADER = ("short_name\tfull_name\ttotal_number_slots\tmax_number_occupied_slots\t"
                   "additional_info\tallow_info_server\tinfo_server_port\tactive\n")


# ---------------------------------------------------------------------------- Installation

def test_locate_uses_hqpath(tmp_path: Path) -> None:
    inst = Installation.locate({"HQPATH": str(tmp_path)})
    assert inst.root == tmp_path
    assert inst.cluster_tab == tmp_path / "etc" / "cluster.tab"
    assert inst.users_file == tmp_path / "etc" / "users"
    assert inst.db_cfg == tmp_path / "etc" / "hq-db.cfg"
    assert inst.server_cfg == tmp_path / "etc" / "hq-server.cfg"
    assert inst.var == tmp_path / "var"
    assert inst.hqconf == tmp_path / "hqConf"


def test_locate_makes_a_relative_hqpath_absolute(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hq-install").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Installation.locate({"HQPATH": "hq-install"}).root == tmp_path / "hq-install"


def test_locate_without_hqpath_is_the_directory_above_the_package() -> None:
    inst = Installation.locate({})
    assert inst.root == REPO
    assert (inst.root / "hq" / "config.py").is_file()


def test_locate_refuses_an_hqpath_that_is_not_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert error_of(Installation.locate, {"HQPATH": str(missing)}) == \
        f'HQPATH: not a directory: "{missing}"'
    assert error_of(Installation.locate, {"HQPATH": ""}).startswith("HQPATH: is set but empty")


# ---------------------------------------------------------------------------- cluster.tab

def test_original_hq_cluster_tab_as_hq_users_wrote_it(in_installation: Installation) -> None:
    path = write(in_installation.cluster_tab, ORIGINAL_HEADER
                 + "node01\tnode01.example.org\t16\t12\tXeon E5, 64GB\tFalse\t9999\tTrue\n"
                 + "\n"
                 + "# node02 is being repaired\n"
                 + "node03\tnode03.example.org\t8\t8\t\tFalse\t9999\tFalse\n")
    node01, node03 = load_cluster(path)
    assert node01 == HostConfig(name="node01", full_name="node01.example.org",
                                address="node01.example.org", cores=16, max_jobs=12,
                                info="Xeon E5, 64GB", active=True, line=2)
    assert (node03.name, node03.cores, node03.info, node03.active, node03.line) == \
        ("node03", 8, "", False, 5)


def test_original_header_may_be_commented_and_empty_active_means_inactive(
        in_installation: Installation) -> None:
    # hQ skipped the header line whatever it held, and read an empty cell as False
    path = write(in_installation.cluster_tab, "# " + ORIGINAL_HEADER
                 + "node01\tnode01\t4\t4\tinfo\t0\t\t\n")
    (node01,) = load_cluster(path)
    assert node01.active is False
    assert node01.max_jobs == 4


def test_extended_cluster_tab_columns_in_any_order(in_installation: Installation) -> None:
    path = write(in_installation.cluster_tab,
                 "# our cluster\n"
                 "\n"
                 "cores\thost\tmemory\tfeatures\tx_rack\taddress\tssh_port\tos\tactive\tinfo\n"
                 "32\tgpu1\t256G\tgpu, a100,,avx512 \tR7\t10.0.0.5\t2222\tdebian12\tno\tbig\n"
                 "4\tlaptop\t-\t\t\t\t-\t\tYES\t\n")
    gpu1, laptop = load_cluster(path)
    assert gpu1 == HostConfig(name="gpu1", full_name="gpu1", address="10.0.0.5", ssh_port=2222,
                              cores=32, memory_mb=256 * 1024, os="debian12",
                              features=frozenset({"gpu", "a100", "avx512"}), info="big",
                              active=False, line=4)
    assert laptop == HostConfig(name="laptop", full_name="laptop", address="laptop", cores=4,
                                line=5)


def test_cores_as_sockets_times_cores_and_gpus(in_installation: Installation) -> None:
    path = write(in_installation.cluster_tab,
                 "host\tcores\tgpus\nbig\t2x12\t2\nuuid\t8\tGPU-1a2b, GPU-3c4d\nnone\t4\t\n")
    big, uuid, none = load_cluster(path)
    assert (big.cores, big.gpus) == (24, ("0", "1"))
    assert (uuid.cores, uuid.gpus) == (8, ("GPU-1a2b", "GPU-3c4d"))
    assert none.gpus == ()
    for bad, message in (("2x", "not a positive integer"), ("0x4", "not a core count")):
        path = write(in_installation.cluster_tab, f"host\tcores\nh\t{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_cluster(path)
    path = write(in_installation.cluster_tab, "host\tcores\tgpus\nh\t4\tGPU-a,GPU-a\n")
    with pytest.raises(ConfigError, match="distinct device ids"):
        load_cluster(path)


def test_extended_address_defaults_to_full_name(in_installation: Installation) -> None:
    path = write(in_installation.cluster_tab,
                 "host\tfull_name\tcores\tmax_jobs\nn1\tn1.example.org\t8\t2\n")
    (n1,) = load_cluster(path)
    assert (n1.full_name, n1.address, n1.cores, n1.max_jobs) == \
        ("n1.example.org", "n1.example.org", 8, 2)


@pytest.mark.parametrize(("text", "mib"), [
    ("64G", 64 * 1024), ("512M", 512), ("1T", 1024 * 1024), ("2048", 2048), ("64gb", 65536),
    ("64GiB", 65536), ("512 MB", 512), ("1.5G", 1536), ("1K", 1), ("1025k", 2), ("1tib", 1 << 20),
])
def test_memory_sizes(text: str, mib: int) -> None:
    assert parse_memory_mb(text) == mib


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "0.0M", "12X", "1 2G", "64B", "1e3M"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        parse_memory_mb(text)


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("Yes", True), ("ON", True), ("1", True), ("y", True),
    ("False", False), ("no", False), ("off", False), ("0", False), ("N", False),
])
def test_booleans_are_words(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "enabled", "-"])
def test_other_words_are_not_booleans(text: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(text)


EXT = "host\tcores\tssh_port\tmemory\tactive\n"
ORIG_ROW = "node01\tnode01\t4\t4\tinfo\tFalse\t9999\tTrue\n"


@pytest.mark.parametrize(("text", "message"), [
    (EXT + "a\tx\t22\t1G\tyes\n", ':2: cores: not a positive integer: "x"'),
    (EXT + "a\t0\t22\t1G\tyes\n", ':2: cores: not a positive integer: "0"'),
    (EXT + "a\t-3\t22\t1G\tyes\n", ':2: cores: not a positive integer: "-3"'),
    (EXT + "a\t2.5\t22\t1G\tyes\n", ':2: cores: not a positive integer: "2.5"'),
    (EXT + "a\t2\t0\t1G\tyes\n", ':2: ssh_port: not a port number (1..65535): "0"'),
    (EXT + "a\t2\t70000\t1G\tyes\n", ':2: ssh_port: not a port number (1..65535): "70000"'),
    (EXT + "a\t2\t22\tlots\tyes\n",
     ':2: memory: not a memory size: "lots" (e.g. 512M, 64G, 1T; a number is MiB)'),
    (EXT + "a\t2\t22\t1G\tmaybe\n", ':2: active: not a boolean: "maybe" (use yes or no)'),
    (EXT + "a\t2\t22\t1G\n", ":2: expected 5 tab-separated columns, found 4"),
    (EXT + "a 2 22 1G yes\n", ":2: expected 5 tab-separated columns, found 1 "
                              "(the line seems to be separated by spaces; use tabs)"),
    (EXT + "a\t2\t22\t1G\tyes\t\n", ":2: expected 5 tab-separated columns, found 6"),
    (EXT + "# c\na\t2\t22\t1G\tyes\n\nb\t2\t22\t1G\tyes\na\t4\t22\t1G\tyes\n",
     ':6: host: duplicate host name "a" (first defined on line 3)'),
    (EXT + "node 1\t2\t22\t1G\tyes\n",
     ":2: host: invalid host name \"node 1\": use letters, digits, '-', '_' and '.'"),
    (EXT + "-oProxyCommand=x\t2\t22\t1G\tyes\n",
     ":2: host: invalid host name \"-oProxyCommand=x\": use letters, digits, '-', '_' and '.'"),
    (EXT + "-\t2\t22\t1G\tyes\n", ":2: host: missing value"),
    ("localhost\tlocalhost\t4\n",
     ':1: missing header line: expected column names (at least host and cores), '
     'found "localhost"'),
    ("host cores\nlocalhost 4\n",
     ":1: the header line is not tab-separated: separate column names by tabs"),
    ("host\tmemory\nlocalhost\t4G\n", ':1: missing required column "cores"'),
    ("# hosts\nhost\tcores\tslots\nlocalhost\t4\t4\n",
     ":2: slots: unknown column (known: host, full_name, address, ssh_port, cores, max_jobs, "
     "memory, os, features, gpus, info, active, idle_timeout; start local columns with x_)"),
    ("host\tcores\tHost\nlocalhost\t4\tx\n", ":1: Host: duplicate column"),
    ("short_name\tfull_name\ttotal_number_slots\tactive\nn\tn\t4\tyes\n",
     ":1: an original hQ header must be exactly these tab-separated columns: short_name "
     "full_name total_number_slots max_number_occupied_slots additional_info "
     "allow_info_server info_server_port active"),
    (ORIGINAL_HEADER + "node01\tnode01\t4\t4\tinfo\tmaybe\t9999\tTrue\n",
     ':2: allow_info_server: not a boolean: "maybe" (use yes or no)'),
    (ORIGINAL_HEADER + "node01\tnode01\t4\t4\tinfo\tFalse\tport\tTrue\n",
     ':2: info_server_port: not a port number (1..65535): "port"'),
    (ORIGINAL_HEADER + "node01\tnode01\t4\tmany\tinfo\tFalse\t9999\tTrue\n",
     ':2: max_number_occupied_slots: not a positive integer: "many"'),
    (ORIGINAL_HEADER + "node01 node01 4 4 info False 9999 True\n",
     ":2: expected 8 tab-separated columns, found 1 "
     "(the line seems to be separated by spaces; use tabs)"),
    ("", ": no hosts defined: add one tab-separated line per host below the header"),
    ("# nothing yet\n\n", ": no hosts defined: add one tab-separated line per host below "
                          "the header"),
    (ORIGINAL_HEADER, ": no hosts defined: add one tab-separated line per host below the header"),
])
def test_bad_cluster_tab(in_installation: Installation, text: str, message: str) -> None:
    write(in_installation.cluster_tab, text)
    # the message names the file as the caller named it, then line and column
    assert error_of(load_cluster, Path("etc/cluster.tab")) == "etc/cluster.tab" + message


def test_missing_cluster_tab(in_installation: Installation) -> None:
    assert error_of(load_cluster, Path("etc/cluster.tab")) == "etc/cluster.tab: no such file"


# ---------------------------------------------------------------------------- users

def test_users_with_tabs_spaces_comments_and_capital_roles(inst: Installation) -> None:
    path = write(inst.users_file,
                 "# who may use hq\n"
                 "hqadmin\tADMIN\n"
                 "\n"
                 "alice   USER   # the chemist\n"
                 "bob\t user,admin\n"
                 "carol admin, user\n"
                 "Dave.Smith-2 user\n")
    users = load_users(path)
    assert [(u.name, u.is_admin, u.line) for u in users] == [
        ("hqadmin", True, 2), ("alice", False, 4), ("bob", True, 5), ("carol", True, 6),
        ("Dave.Smith-2", False, 7)]
    assert users[0] == UserConfig("hqadmin", frozenset({Role.ADMIN, Role.USER}), line=2)
    assert users[1].roles == frozenset({Role.USER})


def test_users_may_have_a_share_and_limits_after_their_roles(inst: Installation) -> None:
    path = write(inst.users_file, "alice user share=2 max_cores=64 max_running=100\n"
                                  "bob\tuser\n")
    alice, bob = load_users(path)
    assert (alice.share, alice.max_cores, alice.max_running, alice.roles) == (
        2.0, 64, 100, frozenset({Role.USER}))
    assert (bob.share, bob.max_cores, bob.max_running) == (1.0, None, None)


def test_an_empty_users_file_has_no_users(inst: Installation) -> None:
    assert load_users(write(inst.users_file, "# nobody yet\n\n")) == ()


@pytest.mark.parametrize(("text", "message"), [
    ("alice\n", ':1: roles: missing role for user "alice" (known: admin, user)'),
    ("alice # user\n", ':1: roles: missing role for user "alice" (known: admin, user)'),
    ("alice\tuser,root\n", ':1: roles: unknown role "root" (known: admin, user)'),
    ("alice\tusers\n", ':1: roles: unknown role "users" (known: admin, user)'),
    ("# x\n1alice\tuser\n", ":2: user: invalid user name \"1alice\": use letters, digits, '_', "
                            "'.', '-' (not first), at most 32 characters"),
    ("al:ice\tuser\n", ":1: user: invalid user name \"al:ice\": use letters, digits, '_', "
                       "'.', '-' (not first), at most 32 characters"),
    ("a" * 33 + "\tuser\n", f":1: user: invalid user name \"{'a' * 33}\": use letters, digits, "
                            "'_', '.', '-' (not first), at most 32 characters"),
    ("alice user shares=2\n", ':1: shares: unknown key "shares" for user "alice" (known: '
                              "share, max_running, max_cores)"),
    ("alice user max_cores=0\n", ':1: max_cores: not a positive integer: "0"'),
    ("alice max_running=3\n", ':1: roles: missing role for user "alice" (known: admin, user)'),
    ("alice\tuser\nbob\tuser\nalice\tadmin\n",
     ':3: user: duplicate user "alice" (first defined on line 1)'),
])
def test_bad_users_file(in_installation: Installation, text: str, message: str) -> None:
    write(in_installation.users_file, text)
    assert error_of(load_users, Path("etc/users")) == "etc/users" + message


def test_missing_users_file(in_installation: Installation) -> None:
    assert error_of(load_users, Path("etc/users")) == "etc/users: no such file"


# ---------------------------------------------------------------------------- hq-server.cfg

def test_no_server_cfg_means_the_defaults(inst: Installation) -> None:
    config = load_server(inst)
    assert config == ServerConfig.defaults(inst)
    assert (config.socket_path, config.pid_file, config.log_file) == (
        inst.root / "var/run/hq-server.sock", inst.root / "var/run/hq-server.pid",
        inst.root / "var/log/hq-server.log")
    assert (config.server_user, config.heartbeat_interval_s, config.heartbeat_timeout_s,
            config.lease_s, config.lease_grace_s, config.db_batch_max, config.load_factor,
            config.max_running_per_user, config.fair_share, config.host_key_policy) == (
        None, 2.0, 10.0, 30.0, 5.0, 5000, 1.1, 0, True, "reject")
    # tests build one without an installation
    assert ServerConfig(socket_path=Path("s"), pid_file=Path("p"), log_file=Path("l")).lease_s \
        == 30.0


def test_server_cfg_overrides(inst: Installation) -> None:
    write(inst.server_cfg, "[server]\n"
          "socket = /run/hq/hq.sock\n"
          "log_file = logs/server.log\n"
          "server_user = hqadmin\n"
          "heartbeat_interval = 0.5\n"
          "lease = 60\n"
          "db_batch_max = 100\n"
          "pid_file =\n"
          "[scheduler]\n"
          "fair_share = off\n"
          "max_running_per_user = 10\n"
          "load_factor = 2\n"
          "[SSH]\n"
          "host_key_policy = accept-new\n"
          "connect_timeout = 1.5\n")
    defaults = ServerConfig.defaults(inst)
    assert load_server(inst) == dataclasses.replace(
        defaults, socket_path=Path("/run/hq/hq.sock"), log_file=inst.root / "logs/server.log",
        server_user="hqadmin", heartbeat_interval_s=0.5, lease_s=60.0, db_batch_max=100,
        fair_share=False, max_running_per_user=10, load_factor=2.0,
        host_key_policy="accept-new", connect_timeout_s=1.5)


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nlease = 30\n# comment\nleese = 30\n",
     ":4: leese: unknown key in [server] (known: db_batch_max, db_flush_interval, "
     "exec_server_idle_timeout, heartbeat_interval, heartbeat_timeout, lease, lease_grace, "
     "log_file, max_connections_per_user, monitor_timeout, pid_file, request_burst, "
     "requests_per_second, "
     "retry_unreachable, server_user, socket, ssh_address, "
     "user_server_idle_timeout)"),
    ("[server]\nlease = 30\n[schedular]\nfair_share = yes\n",
     ":3: unknown section [schedular] (known: [server], [scheduler], [ssh], [execd], "
     "[limits])"),
    ("[DEFAULT]\nlease = 30\n", ":1: unknown section [DEFAULT] (known: [server], [scheduler], "
                                "[ssh], [execd], [limits])"),
    ("[server]\nlease = -1\n", ':2: lease: not a positive number: "-1"'),
    ("[server]\nlease = 30 # seconds\n", ':2: lease: not a positive number: "30 # seconds"'),
    ("[server]\nheartbeat_timeout = nan\n", ':2: heartbeat_timeout: not a positive number: "nan"'),
    ("[server]\ndb_batch_max = 1e3\n", ':2: db_batch_max: not a positive integer: "1e3"'),
    ("[server]\nserver_user = root user\n", ":2: server_user: invalid user name \"root user\": "
     "use letters, digits, '_', '.', '-' (not first), at most 32 characters"),
    ("[scheduler]\nmax_running_per_user = -1\n",
     ':2: max_running_per_user: not an integer >= 0: "-1"'),
    ("[scheduler]\nfair_share = sometimes\n",
     ':2: fair_share: not a boolean: "sometimes" (use yes or no)'),
    ("[ssh]\nhost_key_policy = accept\n",
     ':2: host_key_policy: unknown policy "accept" (use reject or accept-new)'),
    ("[server]\nheartbeat_interval = 5\nheartbeat_timeout = 5\n",
     ":3: heartbeat_timeout: must be longer than heartbeat_interval (5 s), or every host is lost"),
    ("[server]\nheartbeat_interval = 20\n",
     ": heartbeat_timeout: must be longer than heartbeat_interval (20 s), or every host is lost"),
])
def test_bad_server_cfg(in_installation: Installation, text: str, message: str) -> None:
    write(in_installation.server_cfg, text)
    assert error_of(load_server, Installation(Path("."))) == "etc/hq-server.cfg" + message


# ---------------------------------------------------------------------------- samples

def test_cluster_sample_loads_and_has_localhost_only() -> None:
    (host,) = load_cluster(SAMPLES / "cluster.tab.sample")
    assert (host.name, host.address, host.active) == ("localhost", "localhost", True)


def test_cluster_sample_original_format_example_loads(tmp_path: Path) -> None:
    example = [line[2:] for line in (SAMPLES / "cluster.tab.sample").read_text().splitlines()
               if line.startswith("# ") and "\t" in line]
    path = write(tmp_path / "cluster.tab", "\n".join(example) + "\n")
    hosts = load_cluster(path)
    assert [(h.name, h.cores, h.max_jobs, h.active) for h in hosts] == [
        ("node01", 16, 16, True), ("node02", 8, 4, False)]


def test_users_sample_loads() -> None:
    (admin,) = load_users(SAMPLES / "users.sample")
    assert admin.is_admin


def test_db_sample_loads_and_mentions_every_key(inst: Installation) -> None:
    text = (SAMPLES / "hq-db.cfg.sample").read_text()
    write(inst.db_cfg, text, mode=0o600)
    db = load_database(inst)
    assert (db.dialect, db.host, db.port, db.name, db.username, db.password) == \
        ("mysql", "localhost", 3306, "hq", "hq", None)
    assert "make sql" in text
    for key in ("database_dialect", "database_host", "database_port", "database_socket",
                "database_name", "database_username", "database_password", "database_path",
                "url"):
        assert re.search(rf"^(# )?{key} =", text, re.MULTILINE), key


def test_server_sample_sets_every_key_to_its_default(inst: Installation) -> None:
    text = (SAMPLES / "hq-server.cfg.sample").read_text()
    write(inst.server_cfg, text)
    assert load_server(inst) == ServerConfig.defaults(inst)
    assert set(SERVER_KEYS) == {f.name for f in dataclasses.fields(ServerConfig)}
    section = None
    present = set()
    for line in text.splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match[1]
        elif match := re.match(r"(\w+) =", line):
            present.add((section, match[1]))
    assert present == set(SERVER_KEYS.values())


def test_importing_config_does_not_import_sqlalchemy() -> None:
    code = "import sys, hq.config; print('sqlalchemy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "False"


def test_cluster_tab_idle_timeout_column_is_a_duration_and_optional(tmp_path):
    path = tmp_path / "cluster.tab"
    path.write_text("host\tcores\tidle_timeout\nquick\t2\t5\nslow\t2\t-\nhour\t1\t1h\n")
    assert [(h.name, h.idle_timeout_s) for h in load_cluster(path)] == [
        ("quick", 5.0), ("slow", None), ("hour", 3600.0)]
    path.write_text("host\tcores\tidle_timeout\nquick\t2\tsoon\n")
    assert error_of(load_cluster, path) == f'{path}:2: idle_timeout: not a positive number: "soon"'


def test_exec_server_idle_timeout_of_a_host_falls_back_to_the_server_default(tmp_path):
    from hq.config import Installation, exec_server_idle_s

    inst = Installation(tmp_path)
    inst.etc.mkdir()
    inst.cluster_tab.write_text("host\tcores\tidle_timeout\nquick\t2\t3s\nslow\t2\t\n")
    assert exec_server_idle_s(inst, "quick", 300.0) == 3.0
    assert exec_server_idle_s(inst, "slow", 300.0) == 300.0
    assert exec_server_idle_s(inst, "elsewhere", 300.0) == 300.0

"""hq-submit, hq-client and hq-admin without daemons: input errors caught before any
connection (real subprocesses, as a user runs them), --help of every command, and the pure
parts (ids, durations, tables, exit status, the submit message) as functions."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from hq.cli import admin, client, submit
from hq.cli.admin import format_hosts, split_colon_form
from hq.cli.common import format_table
from hq.cli.jobids import format_ids, parse_ids
from hq.cli.joblog import OutputFile
from hq.cli.jobview import format_job_details, format_job_table, format_status
from hq.cli.units import parse_duration
from hq.cli.userd_link import start_failure_reason
from hq.cli.waiting import exit_status, progress_text, summary
from hq.errors import UsageError
from hq.jobspec import JobSpec
from hq.protocol import decode_as, encode
from hq.protocol.messages import (
    ClusterSummary,
    HostInfo,
    JobInfo,
    JobWaitState,
    StatusReply,
    Submit,
)

PROGRAMS = {"hq-submit": "hq.cli.submit", "hq-client": "hq.cli.client",
            "hq-admin": "hq.cli.admin", "hq-dbadmin": "hq.cli.dbadmin"}


def run(program: str, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run an hq program as a user would: its own process, its exit code and streams."""
    return subprocess.run([sys.executable, "-m", PROGRAMS[program], *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def no_installation(tmp_path: Path) -> dict[str, str]:
    """An environment whose HQPATH does not exist: a program that got as far as reaching a
    daemon fails with an HQPATH message (never starts one), so the expected message of an
    early check cannot be matched by accident."""
    return {**os.environ, "HQPATH": str(tmp_path / "no-such-installation")}


@pytest.fixture
def bad_jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.txt"
    path.write_text("command::sleep 1\ncommand::sleep 2\tslots::many\n")
    return path


SUBMIT_ERRORS = [
    (["--bogus", "sleep 1"], "No such option '--bogus'"),
    (["-c", "0", "sleep 1"], "--slots/-c must be at least 1, not 0"),
    (["-c", "x", "sleep 1"], "Invalid value for '-c' / '--slots'"),
    (["-c", "0", "-f", "{JOBS}"], "--slots/-c must be at least 1, not 0"),
    (["--cwd", "/does/not/exist", "sleep 1"], "--cwd: no such directory: /does/not/exist"),
    (["--cwd", "/etc/hostname", "sleep 1"], "--cwd: not a directory: /etc/hostname"),
    (["-f", "{JOBS}", "sleep 1"], "give either COMMAND or -f FILE, not both"),
    ([], "nothing to submit: give a COMMAND"),
    (["-t", "soon", "sleep 1"], '-t/--estimated-time: not a duration: "soon"'),
    (["--time-limit", "1:75", "sleep 1"], '--time-limit: not a duration: "1:75"'),
    (["--memory", "lots", "sleep 1"], '--memory: not a memory size: "lots"'),
    (["-m", "0", "sleep 1"], '-m/--estimated-memory: not a memory size: "0"'),
    (["-S", "bash", "sleep 1"], "--shell must be an absolute path, not 'bash'"),
    (["--parsable", "--json", "sleep 1"], "--parsable and --json cannot be combined"),
    (["-f", "{BAD}"], '{BAD}:2: slots: not a positive integer: "many"'),
    (["-f", "{MISSING}"], "{MISSING}: no such file"),
    (["sleep 1", "sleep 2"], 'COMMAND is one quoted string, or a program or script with its '
                             'arguments: got an extra argument "sleep 2"'),
    (["--array", "5-1", "true"], "--array 5-1: a range goes upwards"),
    (["--array", "1-9%0", "true"], "--array 1-9%0: the cap after % must be a number"),
    (["--array", "1-x", "true"], "--array 1-x: '1-x' is not an index or a range"),
    (["--array", "1-3", "-f", "{JOBS}"], "--array and -f cannot be combined"),
    (["--array-cap", "2", "true"], "--array-cap is for an array (--array) or a jobs file"),
    (["--array", "1-3%2", "--array-cap", "3", "true"], "--array 1-3%2 and --array-cap 3"),
    (["-d", "afterwards:3", "true"], "--dependency 'afterwards:3': use afterok:ID"),
    (["-d", "afterok:x", "true"], "--dependency 'afterok:x': 'x' is not a job id"),
    (["-d", "aftercorr:4_1", "true"], "--dependency 'aftercorr:4_1': aftercorr names a whole"),
    (["--retries", "101", "true"], "Invalid value for '--retries'"),
    (["--script", "true"], "--script: true: no such file"),
]


@pytest.mark.parametrize(("args", "message"), SUBMIT_ERRORS,
                         ids=[" ".join(a) or "nothing" for a, _ in SUBMIT_ERRORS])
def test_hq_submit_refuses_bad_input_before_connecting(args, message, no_installation,
                                                       bad_jobs_file, tmp_path):
    good_jobs = tmp_path / "good.txt"
    good_jobs.write_text("command::true\n")
    files = {"{JOBS}": str(good_jobs), "{BAD}": str(bad_jobs_file),
             "{MISSING}": str(tmp_path / "missing.txt")}
    argv = [files.get(arg, arg) for arg in args]
    for name, path in files.items():
        message = message.replace(name, path)
    done = run("hq-submit", *argv, env=no_installation, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"hq-submit: error: {message}"), done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["show", "abc"], 'bad job id "abc"'),
    (["show", "1-3"], '"1-3" names 3 jobs; give one job id'),
    (["cancel"], "no jobs named: give job ids"),
    (["cancel", "42_[x]"], 'bad array element "42_[x]"'),
    (["show", "42_*"], '"42_*" names several jobs; give one job id'),
    (["wait", "5-2"], 'bad job id range "5-2"'),
    (["jobs", "--state", "running,sleeping"], '--state: unknown state "sleeping"'),
    (["jobs", "--all", "--state", "done"], "--all and --state cannot be combined"),
    (["jobs", "--limit", "0"], "Invalid value for '--limit'"),
    (["log", "--both", "x"], 'bad job id "x"'),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_hq_client_refuses_bad_input_before_connecting(args, message, no_installation):
    done = run("hq-client", *args, env=no_installation)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"hq-client: error: {message}"), done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["activatehost:"], "Missing argument 'NAME'"),
    (["deactivatehost"], "Missing argument 'NAME'"),
    (["reboot"], "No such command 'reboot'"),
])
def test_hq_admin_refuses_bad_input_before_connecting(args, message, no_installation):
    done = run("hq-admin", *args, env=no_installation)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"hq-admin: error: {message}"), done.stderr


@pytest.mark.parametrize("args", [["info"], ["activatehost:node07"], ["ACTIVATECLUSTER"]])
def test_hq_admin_without_hq_server_says_it_is_not_running(args, tmp_path):
    done = run("hq-admin", *args, env={**os.environ, "HQPATH": str(tmp_path)})
    socket = tmp_path / "var" / "run" / "hq-server.sock"
    assert done.returncode == 5, done.stderr
    assert done.stdout == ""
    assert done.stderr == (f"hq-admin: error: hq-server is not running (no answer on {socket}):"
                           " start it with 'hq-server --daemon'\n")


def _subcommands(program: str) -> list[list[str]]:
    group = {"hq-client": client.cli, "hq-admin": admin.cli}.get(program)
    return [[]] + ([[name] for name in group.commands] if group else [])


@pytest.mark.parametrize(("program", "command"),
                         [(p, c) for p in PROGRAMS for c in _subcommands(p)],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_help_works_and_teaches_by_example(program, command):
    done = run(program, *command, "--help")
    assert done.returncode == 0, done.stderr
    assert "Example" in done.stdout
    assert done.stdout.startswith(f"Usage: {' '.join([program, *command])} ")


def test_cli_modules_import_no_daemon_no_database_and_submit_no_rich():
    code = ("import sys, hq.cli.submit\n"
            "heavy = {'rich', 'sqlalchemy', 'asyncio'} & {m.split('.')[0] for m in sys.modules}\n"
            "import hq.cli.client, hq.cli.admin, hq.cli.joblog, hq.cli.waiting, "
            "hq.cli.userd_link, hq.cli.admin_link, hq.cli.jobsfile\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'sqlalchemy')"
            " or m.startswith(('hq.server', 'hq.userd', 'hq.execd', 'hq.db')))\n"
            "print(sorted(heavy), bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[] []"


# --- the pure parts ---------------------------------------------------------------------

def test_parse_ids_and_format_ids():
    assert parse_ids("42") == [42]
    assert parse_ids("42-45,47", "44", " 50 ") == [42, 43, 44, 45, 47, 50]
    assert format_ids([47, 42, 43, 44, 45, 50, 51]) == "42-45,47,50-51"
    assert format_ids([7]) == "7"
    for bad in ("abc", "4-", "-4", "0", "5-2", "1,,2", "1.5"):
        with pytest.raises(UsageError):
            parse_ids(bad)
    with pytest.raises(UsageError, match="too many job ids"):
        parse_ids("1-100000000")


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
    ("1.5h", 5400), ("0.5", 1), ("30:00", 1800), ("1:30:00", 5400), ("2-12:00:00", 216000),
    ("1-2", 93600), ("1-02:30", 95400), (" 2H ", 7200),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "1:60", "1:75:00", "1-24:00:00", "-5",
                                  "5x", "1h-30m", "1::2", "inf", "nan"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_build_specs_from_a_command_and_from_a_jobs_file(tmp_path):
    template = JobSpec(command="", cwd=str(tmp_path), cores=3, name="n")
    (spec,) = submit.build_specs("sleep 42", None, template)
    assert spec == msgspec.structs.replace(template, command="sleep 42")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("command::a {idx}\ncommand::b\tslots::1\n")
    first, second = submit.build_specs(None, str(jobs), template)
    assert (first.command, first.cores, second.cores) == ("a 1", 3, 1)
    with pytest.raises(UsageError, match="not both"):
        submit.build_specs("x", str(jobs), template)
    with pytest.raises(UsageError, match="nothing to submit"):
        submit.build_specs(None, None, template)
    with pytest.raises(UsageError, match="the command is empty"):
        submit.build_specs("  ", None, template)


def test_submit_request_carries_environment_umask_and_full_specs(monkeypatch):
    monkeypatch.setenv("HQ_TEST_MARK", "1")
    old = os.umask(0o027)
    try:
        spec = JobSpec(command="x", cwd="/tmp", excluded_hosts=("a", "b"))
        request = submit.submit_request([spec], hold=True)
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        os.umask(old)
    assert isinstance(request, Submit) and request.hold is True
    assert request.umask == 0o027 and request.environment["HQ_TEST_MARK"] == "1"
    assert request.jobs == [spec]
    # what goes on the wire decodes back to the same request, specs and all
    assert decode_as(Submit, encode(request)[4:]) == request
    assert request.submit_host


def test_submit_refuses_an_environment_that_is_not_utf8():
    bad = os.fsdecode(b"caf\xe9")   # what Python makes of a Latin-1 byte in the environment
    with pytest.raises(UsageError, match="environment variable LABEL holds bytes that are not "
                                         "UTF-8"):
        submit.submit_environment({"PATH": "/bin", "LABEL": bad})
    assert submit.submit_environment({"PATH": "/bin"}) == {"PATH": "/bin"}


def test_job_directory_keeps_the_symlinked_name(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.chdir(link)
    monkeypatch.setenv("PWD", str(link))
    assert submit.job_directory(None) == str(link)
    assert submit.job_directory("sub") == str(link / "sub")
    assert submit.job_directory(str(real)) == str(real)
    monkeypatch.setenv("PWD", "/")  # stale: not this directory
    assert submit.job_directory(None) == str(real)


def test_small_submit_helpers():
    assert submit.host_list(("a,b", " c ,a", "")) == ("a", "b", "c")
    assert submit.submitted_text([42]) == "Submitted job 42"
    assert submit.submitted_text(list(range(42, 142))) == "Submitted 100 jobs 42-141 (array 42)"
    assert client.parse_states(("running", "DONE,failed", "running")) == [
        "running", "done", "failed"]
    assert client.parse_states(()) is None


def test_colon_form_of_hq_admin_commands():
    names = list(admin.cli.commands)
    assert split_colon_form(["activatehost:node07"], names) == ["activatehost", "node07"]
    assert split_colon_form(["-v", "deactivatehost:n1", "--json"], names) == [
        "-v", "deactivatehost", "n1", "--json"]
    assert split_colon_form(["activatehost:"], names) == ["activatehost"]
    assert split_colon_form(["info"], names) == ["info"]
    assert split_colon_form(["info", "x:y"], names) == ["info", "x:y"]
    assert split_colon_form(["nosuch:x"], names) == ["nosuch:x"]


@pytest.mark.parametrize(("results", "code"), [
    ([{"id": 1, "state": "done", "exit_code": 0, "signal": None}], 0),
    ([{"id": 1, "state": "failed", "exit_code": 3, "signal": None}], 3),
    ([{"id": 1, "state": "failed", "exit_code": None, "signal": 9}], 137),
    ([{"id": 1, "state": "failed", "exit_code": None, "signal": None}], 1),
    ([{"id": 1, "state": "cancelled", "exit_code": None, "signal": 15}], 1),
    ([{"id": 1, "state": "done"}, {"id": 2, "state": "done"}], 0),
    ([{"id": 1, "state": "done"}, {"id": 2, "state": "failed", "exit_code": 2}], 1),
])
def test_exit_status_of_waited_jobs(results, code):
    assert exit_status(waited(results)) == code


def waited(results):
    return [msgspec.convert(r, JobWaitState) for r in results]


def test_wait_progress_and_summary_lines():
    jobs = ([{"id": i, "state": "done"} for i in range(1, 4)] + [{"id": 4, "state": "failed",
                                                                "exit_code": 2}]
            + [{"id": i, "state": "running"} for i in range(5, 11)])
    jobs = waited(jobs)
    assert progress_text(jobs, 10) == "3/10 done, 1 failed, 6 running/pending"
    assert progress_text(jobs[:4], 10) == "3/10 done, 1 failed, 6 running/pending"
    assert progress_text(waited([{"id": 42, "state": "pending"}]), 1) == "job 42: pending"
    assert summary(jobs[:4]) == "4 jobs finished: 3 done, 1 failed"
    assert summary(waited([{"id": 42, "state": "failed", "exit_code": None, "signal": 9}])) == (
        "job 42: failed (signal 9)")


def test_format_table_aligns_columns():
    assert format_table(("ID", "NAME"), [(1, "a"), (100, None)], right={0}) == (
        " ID  NAME\n  1  a\n100  -")


JOB = {"id": 42, "name": "sim", "owner": "alice", "state": "failed", "state_reason": None,
       "host": "node07", "cores": 2, "memory_mb": 2048, "priority": 0, "group": None,
       "info_text": None, "submission_id": 7, "array_index": 3, "command": "./sim  --x\n1",
       "shell": "/bin/sh", "cwd": "/home/alice", "stdout": "/home/alice/hq-42.out",
       "stderr": "/home/alice/hq-42.err", "log_path": None, "excluded_hosts": ["n1"],
       "time_limit_s": 7200, "requeue": True, "pid": 999, "exit_code": None, "signal": 9,
       "submitted_at": 0.0, "started_at": 1.0, "ended_at": 2.0, "cpu_time_s": 1.5,
       "max_rss_kb": 2048, "restart_count": 0}


def test_job_table_and_details():
    table = format_job_table([msgspec.convert(JOB, JobInfo), msgspec.convert(
        {**JOB, "id": 43, "state": "pending", "host": None, "signal": None,
         "state_reason": "no free host"}, JobInfo)])
    header, first, second = table.splitlines()
    assert header.split() == ["ID", "STATE", "NAME", "CORES", "HOST", "SUBMITTED", "REASON",
                              "COMMAND"]
    assert "signal 9" in first and "./sim --x 1" in first
    assert "no free host" in second
    details = format_job_details(msgspec.convert(JOB, JobInfo))
    assert details.startswith("job 42\n")
    assert "state:" in details and "failed on node07: signal 9" in details
    assert "peak memory:    2.0 MiB" in details and "cpu time:       1.50 s" in details
    assert "time limit:     2h 00m 00s" in details and "array:          index 3" in details
    waiting = format_job_details(msgspec.convert({
        **JOB, "state": "cancelled", "signal": None, "array_id": 40, "retries": 2,
        "retry_count": 1, "state_reason": "dependency never satisfied: job 41 failed",
        "dependencies": [{"id": 41, "kind": "afterok", "state": "failed"}],
        "attempts": [{"attempt": 0, "state": "failed", "reason": "exit code 3"}]}, JobInfo))
    assert "state:          cancelled on node07 (dependency never satisfied: job 41 failed)" \
        in waiting
    assert "array:          40_3 (array 40, index 3)" in waiting
    assert "dependencies:   afterok:41 (failed)" in waiting
    assert "retries:        1 of 2" in waiting and "attempts:       0: failed (exit code 3)" \
        in waiting


def test_job_table_folds_an_array_into_one_line_unless_expanded():
    members = [msgspec.convert({**JOB, "id": 40 + i, "array_id": 40, "array_index": i,
                                "state": state, "signal": None,
                                "state_reason": "waiting for its turn" if state == "pending"
                                else None}, JobInfo)
               for i, state in enumerate(["running", "pending", "pending", "done"])]
    alone = msgspec.convert({**JOB, "id": 50, "array_index": None}, JobInfo)
    folded = format_job_table([*members, alone]).splitlines()
    assert len(folded) == 3
    assert folded[1].split()[:6] == ["40_[0-3]", "2", "pending,", "1", "running,", "1"]
    assert "waiting for its turn" in folded[1] and folded[2].startswith("50 ")
    expanded = format_job_table([*members, alone], expand=True).splitlines()
    assert len(expanded) == 6 and expanded[2].startswith("41 (40_1)")


def test_status_shows_others_only_as_counts():
    text = format_status(StatusReply(
        user="alice", mine={"running": 2, "pending": 5},
        others={"bob": {"running": 1}, "carol": {"pending": 4}},
        cluster=ClusterSummary(active=True, hosts=4, hosts_up=3, cores=32, cores_busy=12)))
    assert text.splitlines()[0] == "Your jobs (alice): 5 pending, 2 running"
    assert "  USER   PENDING  RUNNING" in text and "  bob          0        1" in text
    assert text.splitlines()[-1] == "Cluster: active, 3 of 4 hosts up, 12 of 32 cores busy"


def test_lscluster_table():
    common = {"cores": 8, "max_jobs": None, "memory_mb": None, "last_heartbeat": None}
    text = format_hosts([
        HostInfo(name="node07", state="up", active=True, drained=False, free_cores=6,
                 running_jobs=2, load1=1.5, reason=None, **common),
        HostInfo(name="node08", state="unreachable", active=False, drained=True,
                 free_cores=8, running_jobs=0, load1=None, reason="heartbeat lost", **common)])
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "STATE", "ACTIVE", "FREE/CORES", "JOBS", "LOAD",
                                "REASON"]
    assert lines[1].split() == ["node07", "up", "yes", "6/8", "2", "1.50"]
    assert lines[2].split() == ["node08", "unreachable", "drained", "8/8", "0", "-",
                                "heartbeat", "lost"]
    # a host with its own exec-server idle timeout (etc/cluster.tab): an IDLE column
    text = format_hosts([
        HostInfo(name="node07", state="up", active=True, drained=False, free_cores=6,
                 running_jobs=2, load1=1.5, reason=None, idle_timeout_s=300, **common),
        HostInfo(name="node08", state="up", active=True, drained=False, free_cores=8,
                 running_jobs=0, load1=None, reason=None, **common)])
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "STATE", "ACTIVE", "FREE/CORES", "JOBS", "LOAD",
                                "IDLE", "REASON"]
    assert lines[1].split() == ["node07", "up", "yes", "6/8", "2", "1.50", "5m"]
    assert lines[2].split() == ["node08", "up", "yes", "8/8", "0", "-", "-"]


def test_start_failure_reason_is_the_last_line_without_the_program_prefix():
    assert start_failure_reason("warning\nhq-user-server: error: no key\n", 1) == "no key"
    assert start_failure_reason("", 1) == "exit status 1 and no message"
    assert start_failure_reason("", -9) == "killed by signal 9"


def test_output_file_copies_new_data_and_starts_over_when_truncated_or_replaced(tmp_path):
    path = tmp_path / "hq-1.out"
    out = io.BytesIO()
    file = OutputFile(str(path), out)
    file.copy_new()  # not there yet: nothing happens
    assert file.file is None
    path.write_bytes(b"one\n")
    file.copy_new()
    with path.open("ab") as append:
        append.write(b"two\n")
    file.copy_new()
    assert out.getvalue() == b"one\ntwo\n"
    path.write_bytes(b"3\n")  # truncated and rewritten (a requeued job)
    file.copy_new()
    assert out.getvalue().endswith(b"two\n3\n")
    path.unlink()
    path.write_bytes(b"four\n")  # replaced by a new file
    file.copy_new()
    assert out.getvalue().endswith(b"3\nfour\n")
    file.close()


@pytest.mark.parametrize("program", ["hq-submit", "hq-client", "hq-admin", "hq-dbadmin"])
def test_every_program_says_its_version(program, no_installation):
    from hq import __version__

    done = run(program, "--version", env=no_installation)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{program} (hq) {__version__}\n"


def test_lsusers_limits_column():
    from hq.cli.admin import user_limits_text
    from hq.protocol.messages import UserInfo

    def user(**limits: object) -> UserInfo:
        return UserInfo(name="alice", roles=["user"], pending=0, running=0,
                        user_server=False, **limits)  # type: ignore[arg-type]

    assert user_limits_text(user()) == "-"
    assert user_limits_text(user(max_running=10, groups=["physics"])) == \
        "max_running=10 groups=physics"
    assert user_limits_text(user(max_cores=64)) == "max_cores=64"

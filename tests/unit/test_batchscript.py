"""hq-submit ./run.sh ARGS: which words are scripts, their directives, and the job command."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hq.cli.batchscript import (
    Directives,
    looks_like_script,
    read_directives,
    script_command,
    script_name,
)
from hq.errors import UsageError


def write_script(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    path.chmod(0o755)
    return path


def run(cmd: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env=env)


# --- looks_like_script --------------------------------------------------------------------

def test_a_program_on_path_is_not_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_script("sleep", forced=False)
    assert not looks_like_script("sleep 42", forced=False)


def test_a_relative_path_with_a_shebang_is_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_script(tmp_path / "run.sh", "#!/bin/sh\necho hi\n")
    assert looks_like_script("./run.sh", forced=False)
    assert looks_like_script(str(tmp_path / "run.sh"), forced=False)


def test_a_bare_dot_sh_file_not_on_path_is_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    write_script(tmp_path / "run.sh", "#!/bin/sh\necho hi\n")
    assert looks_like_script("run.sh", forced=False)


def test_a_bare_dot_sh_name_found_on_path_runs_the_program(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir / "run.sh", "#!/bin/sh\necho on path\n")
    write_script(tmp_path / "run.sh", "#!/bin/sh\necho here\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert not looks_like_script("run.sh", forced=False)
    # A slash means "this file", never a PATH lookup.
    assert looks_like_script("./run.sh", forced=False)


def test_a_file_without_shebang_is_not_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_script(tmp_path / "run.sh", "echo hi\n")
    assert not looks_like_script("./run.sh", forced=False)
    with pytest.raises(UsageError, match=r"^--script: \./run\.sh does not start with #!"):
        looks_like_script("./run.sh", forced=True)


def test_a_missing_file_is_not_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_script("./run.sh", forced=False)
    assert not looks_like_script("run.sh", forced=False)
    with pytest.raises(UsageError, match=r"^--script: \./run\.sh: no such file$"):
        looks_like_script("./run.sh", forced=True)


def test_a_directory_is_not_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.sh").mkdir()
    assert not looks_like_script("./jobs.sh", forced=False)
    with pytest.raises(UsageError, match="not a regular file"):
        looks_like_script("./jobs.sh", forced=True)


def test_forced_accepts_any_name_with_a_shebang(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_script(tmp_path / "analyse", "#!/bin/sh\necho hi\n")
    assert not looks_like_script("analyse", forced=False)
    assert looks_like_script("analyse", forced=True)


def test_script_name_is_the_base_name():
    assert script_name("./run.sh") == "run.sh"
    assert script_name("/home/u/jobs/sim") == "sim"
    assert script_name("run.sh") == "run.sh"


# --- read_directives ----------------------------------------------------------------------

def test_hq_long_and_short_forms():
    text = ("#!/bin/bash\n"
            "#HQ --time-limit 2h --memory=4G\n"
            "#HQ --hold\n"
            "#HQ -c 4 -o out.txt -Oerr.txt\n"
            "#HQ -p5 -g nightly -t 15m -m 512M   # a comment after the options\n"
            "#HQ --name 'my job' --exclude-hosts=n1\n"
            "echo hi\n")
    assert read_directives("run.sh", text) == Directives(options={
        "time_limit": "2h", "memory": "4G", "hold": "", "slots": "4", "stdout": "out.txt",
        "stderr": "err.txt", "priority": "5", "group": "nightly", "estimated_time": "15m",
        "estimated_memory": "512M", "name": "my job", "exclude_hosts": "n1",
    }, warnings=[])


def test_hq_unknown_short_option_names_the_line():
    with pytest.raises(UsageError, match=r"^run\.sh:3: #HQ -x "):
        read_directives("run.sh", "#!/bin/sh\n#HQ -c 2\n#HQ -x 1\n")


def test_sbatch_options_map_to_hq():
    text = ("#!/bin/bash\n"
            "#SBATCH --array=0-9%2\n"
            "#SBATCH --dependency afterok:12 -c4\n"
            "#SBATCH --mem=8G\n"
            "#SBATCH -t 1-12:00:00\n"
            "#SBATCH --output=sim-%A_%a.out -e sim-%j.err\n"
            "#SBATCH -J sim\n"
            "./simulate\n")
    directives = read_directives("run.sh", text)
    assert directives.options == {
        "array": "0-9%2", "dependency": "afterok:12", "slots": "4", "memory": "8G",
        "time_limit": "1-12:00:00", "stdout": "sim-%A_%a.out", "stderr": "sim-%j.err",
        "name": "sim",
    }
    assert directives.warnings == []


def test_sbatch_long_spellings():
    text = ("#!/bin/sh\n#SBATCH --cpus-per-task 2 --time=90 --error e --job-name=j -d after:3\n"
            "#SBATCH -o o\n")
    assert read_directives("r", text).options == {
        "slots": "2", "time_limit": "90", "stderr": "e", "name": "j", "dependency": "after:3",
        "stdout": "o"}


def test_unsupported_sbatch_options_warn_with_the_line_number():
    text = ("#!/bin/sh\n"
            "# a plain comment\n"
            "\n"
            "#SBATCH --partition=x\n"
            "#SBATCH --exclusive -c 2 -N 3 --account proj --mem 1G\n")
    directives = read_directives("run.sh", text)
    assert directives.options == {"slots": "2", "memory": "1G"}
    assert directives.warnings == [
        "run.sh:4: #SBATCH --partition is not supported by hq: ignored",
        "run.sh:5: #SBATCH --exclusive is not supported by hq: ignored",
        "run.sh:5: #SBATCH -N is not supported by hq: ignored",
        "run.sh:5: #SBATCH --account is not supported by hq: ignored",
    ]


def test_a_later_directive_overrides_an_earlier_one():
    text = "#!/bin/sh\n#SBATCH -c 2\n#HQ --slots 8\n#SBATCH -J a -J b\n#HQ -t 1h\n#HQ -t 2h\n"
    assert read_directives("r", text).options == {
        "slots": "8", "name": "b", "estimated_time": "2h"}


def test_the_directive_block_ends_at_the_first_command():
    text = "#!/bin/sh\n#SBATCH -c 2\necho hi\n#SBATCH -c 8\n#HQ --hold\n"
    assert read_directives("r", text).options == {"slots": "2"}


def test_look_alike_comments_are_not_directives():
    text = "#!/bin/sh\n#HQS -c 2\n#SBATCHx -c 3\n# SBATCH -c 4\n##SBATCH -c 5\n#HQ\n"
    assert read_directives("r", text) == Directives()


def test_a_missing_value_names_path_line_and_option():
    with pytest.raises(UsageError, match=r"^run\.sh:3: --time-limit needs a value$"):
        read_directives("run.sh", "#!/bin/sh\n#HQ --hold\n#HQ --time-limit\n")
    with pytest.raises(UsageError, match=r"^run\.sh:2: -J needs a value$"):
        read_directives("run.sh", "#!/bin/sh\n#SBATCH -J   # name comes later\n")


def test_bad_directive_lines_name_path_and_line():
    with pytest.raises(UsageError, match=r"^run\.sh:2: "):
        read_directives("run.sh", "#!/bin/sh\n#HQ --name 'unclosed\n")
    with pytest.raises(UsageError, match=r"^run\.sh:2: 'stray' is not an option"):
        read_directives("run.sh", "#!/bin/sh\n#HQ stray\n")
    with pytest.raises(UsageError, match=r"^run\.sh:2: --hold takes no value$"):
        read_directives("run.sh", "#!/bin/sh\n#HQ --hold=yes\n")


def test_crlf_lines_are_read():
    text = "#!/bin/sh\r\n#SBATCH -c 3\r\n#HQ --group g\r\n"
    assert read_directives("r", text).options == {"slots": "3", "group": "g"}


# --- script_command -----------------------------------------------------------------------

ECHO_ARGS = """#!/bin/sh
for arg in "$@"; do printf '<%s>\\n' "$arg"; done
"""


def test_args_arrive_exactly(tmp_path):
    args = ["plain", "with space", "it's", 'say "hi"', "$HOME", "`id`", "a\nb", "", "-x", "*"]
    result = run(script_command("run.sh", ECHO_ARGS, args), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"<{arg}>\n" for arg in args)


def test_exit_status_passes_through(tmp_path):
    result = run(script_command("run.sh", "#!/bin/sh\nexit 3\n", []), tmp_path)
    assert result.returncode == 3


def test_dollar_zero_is_the_script_base_name_and_its_directory_is_removed(tmp_path):
    text = '#!/bin/sh\necho "$0"\ndirname "$0" > where\n'
    result = run(script_command("jobs/sim.sh", text, []), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("/sim.sh")
    where = Path((tmp_path / "where").read_text().strip())
    assert where.is_absolute()
    assert not where.exists()


def test_the_directory_is_made_in_tmpdir(tmp_path):
    tmpdir = tmp_path / "scratch"
    tmpdir.mkdir()
    text = '#!/bin/sh\ndirname "$0"\n'
    result = run(script_command("run.sh", text, []), tmp_path,
                 env={**os.environ, "TMPDIR": str(tmpdir)})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == tmpdir
    assert list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("ending", ["\n", "", "\n\n\n"])
def test_the_script_is_copied_byte_exactly(tmp_path, ending):
    text = ('#!/bin/sh\ncat "$0" > copy\n'
            "EOF\n"
            "HQ_SCRIPT_\n"
            "echo $HOME `date` $(id) \\$x 'q' \"d\" \\\\ \t tab\n"
            "cat <<EOF\nnot a real here-doc\nEOF\n"
            "trailing spaces   \n"
            "exit 0" + ending)
    result = run(script_command("run.sh", text, []), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy").read_bytes() == text.encode()


def test_non_ascii_text_is_copied_byte_exactly(tmp_path):
    text = '#!/bin/sh\n# Grüße, 日本語\ncat "$0" > copy\n'
    result = run(script_command("run.sh", text, []), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy").read_bytes() == text.encode()


def test_the_shebang_picks_the_interpreter(tmp_path):
    text = "#!/usr/bin/env python3\nimport sys\nprint('python', sys.argv[1:])\n"
    result = run(script_command("run.py", text, ["a", "b c"]), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "python ['a', 'b c']\n"


def test_editing_the_file_after_submit_changes_nothing(tmp_path):
    script = write_script(tmp_path / "run.sh", "#!/bin/sh\necho original\n")
    cmd = script_command(str(script), script.read_text(), [])
    write_script(script, "#!/bin/sh\necho edited\n")
    assert run(cmd, tmp_path).stdout == "original\n"
    script.unlink()
    assert run(cmd, tmp_path).stdout == "original\n"


def test_a_cancel_reaches_the_script_and_the_directory_is_removed(tmp_path):
    text = ('#!/bin/sh\n'
            'trap \'echo got TERM > "$OLDPWD_MARK"; exit 7\' TERM\n'
            'dirname "$0" > where\n'
            'while :; do sleep 0.1; done\n')
    env = {**os.environ, "OLDPWD_MARK": str(tmp_path / "mark")}
    job = subprocess.Popen(["/bin/sh", "-c", script_command("run.sh", text, [])], cwd=tmp_path,
                           env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "where").exists() or not (tmp_path / "where").read_text():
            assert time.monotonic() < deadline, "the script did not start"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGTERM)
        assert job.wait(timeout=10) == 7
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert (tmp_path / "mark").read_text() == "got TERM\n"
    assert not Path((tmp_path / "where").read_text().strip()).exists()


def test_a_cancel_of_the_wrapper_alone_is_passed_on(tmp_path):
    text = '#!/bin/sh\ndirname "$0" > where\nexec sleep 30\n'
    job = subprocess.Popen(["/bin/sh", "-c", script_command("run.sh", text, [])], cwd=tmp_path,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "where").exists() or not (tmp_path / "where").read_text():
            assert time.monotonic() < deadline, "the script did not start"
            time.sleep(0.05)
        time.sleep(0.2)
        job.terminate()
        assert job.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert not Path((tmp_path / "where").read_text().strip()).exists()


def test_the_delimiter_never_occurs_in_the_text(monkeypatch):
    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr("hq.cli.batchscript.secrets.token_hex", lambda _n: next(tokens))
    cmd = script_command("run.sh", "#!/bin/sh\necho HQ_SCRIPT_aaaa\n", [])
    assert "<<'HQ_SCRIPT_bbbb'" in cmd


def test_nul_bytes_and_huge_scripts_are_refused():
    with pytest.raises(UsageError, match=r"^run\.sh contains a NUL byte"):
        script_command("run.sh", "#!/bin/sh\necho \0\n", [])
    big = "#!/bin/sh\n" + "#" * (128 * 1024)
    with pytest.raises(UsageError, match=r"^run\.sh is larger than 128 KiB: hq copies scripts"):
        script_command("run.sh", big, [])
    script_command("run.sh", big[: 128 * 1024], [])


def test_a_large_script_runs(tmp_path):
    text = "#!/bin/sh\n" + "# padding line\n" * 8000 + 'cat "$0" > copy\n'
    assert len(text) < 128 * 1024
    result = run(script_command("run.sh", text, []), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy").read_text() == text


@pytest.mark.skipif(not Path("/bin/dash").exists(), reason="dash is not installed")
def test_dash_runs_the_command(tmp_path):
    cmd = script_command("run.sh", ECHO_ARGS.rstrip("\n"), ["x y", "$z"])
    result = subprocess.run(["/bin/dash", "-c", cmd], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "<x y>\n<$z>\n")


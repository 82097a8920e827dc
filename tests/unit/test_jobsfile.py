"""The jobs file of ``hq-submit -f``: hQ's format, good files and every kind of bad line."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hq.cli.jobsfile import parse_jobs_file, read_jobs_file
from hq.errors import ConfigError, UsageError
from hq.jobspec import DEFAULT_STDOUT, JobSpec


@pytest.fixture
def defaults(tmp_path: Path) -> JobSpec:
    """What hq-submit's options give when none is used, submitting from tmp_path."""
    return JobSpec(command="", cwd=str(tmp_path))


def parse(text: str, defaults: JobSpec) -> list[JobSpec]:
    return parse_jobs_file("jobs.txt", text, defaults)


def test_one_command_per_line_with_idx_as_line_number_and_array_index(defaults):
    text = ("# a comment\n"
            "command::echo {idx}\tstdout::out-{idx}.txt\n"
            "\n"
            "   \t  \n"
            "command::sleep 1\n")
    specs = parse(text, defaults)
    assert [s.command for s in specs] == ["echo 2", "sleep 1"]
    assert [s.array_index for s in specs] == [2, 5]
    assert specs[0].stdout == "out-2.txt"
    assert specs[1].stdout == DEFAULT_STDOUT
    assert all(s.cwd == defaults.cwd for s in specs)


def test_every_prop_in_hq_camel_case_and_snake_case(defaults, tmp_path):
    (tmp_path / "sub").mkdir()
    camel = ("command::run\tslots::4\tpriority::-3\tgroup::g1\tinfoText::note {idx}\t"
             "logfile::hq.log\tshell::/bin/bash\texcludeHosts::a, b,,c\t"
             "estimatedTime::1:30:00\testimatedMemory::2G\toutputFile::o.txt\t"
             "errorFile::e.txt\tname::job-{idx}\tcwd::sub\ttimeLimit::2h\tmemory::512\t"
             "requeue::no")
    snake = camel.replace("infoText", "info_text").replace("excludeHosts", "exclude_hosts") \
        .replace("estimatedTime", "estimated_time").replace("estimatedMemory", "ESTIMATED_MEMORY") \
        .replace("outputFile", "stdout").replace("errorFile", "stderr") \
        .replace("timeLimit", "time_limit").replace("command::", "Command::")
    first, second = parse(f"{camel}\n{snake}\n", defaults)
    assert first == msgspec.structs.replace(second, array_index=1, info_text="note 1",
                                        name="job-1")
    assert first.cores == 4 and first.priority == -3 and first.group == "g1"
    assert first.info_text == "note 1" and first.log_path == "hq.log"
    assert first.shell == "/bin/bash" and first.excluded_hosts == ("a", "b", "c")
    assert first.estimated_time_s == 5400 and first.estimated_memory_mb == 2048
    assert (first.stdout, first.stderr) == ("o.txt", "e.txt")
    assert first.name == "job-1" and first.cwd == str(tmp_path / "sub")
    assert first.time_limit_s == 7200 and first.memory_mb == 512 and first.requeue is False


def test_options_give_defaults_and_a_line_overrides_them(defaults):
    options = msgspec.structs.replace(defaults, cores=2, group="opt", priority=5, requeue=False,
                                  stdout="%j.o", excluded_hosts=("x",))
    plain, overriding = parse("command::a\ncommand::b\tslots::8\tgroup::line\trequeue::yes\n",
                              options)
    assert (plain.cores, plain.group, plain.priority, plain.requeue) == (2, "opt", 5, False)
    assert plain.stdout == "%j.o" and plain.excluded_hosts == ("x",)
    assert (overriding.cores, overriding.group, overriding.requeue) == (8, "line", True)
    assert overriding.priority == 5


def test_values_keep_inner_double_colons_and_spaces_around_fields_do_not_matter(defaults):
    (spec,) = parse("  command:: echo a::b  \t name :: x \r\n", defaults)
    assert spec.command == "echo a::b" and spec.name == "x"


@pytest.mark.parametrize(("text", "message"), [
    ("command::a\ncommand::b\tcores::2\n",
     "jobs.txt:2: cores: unknown prop (known: command, slots,"),
    ("command::a\tsleep 5\n", "jobs.txt:1: sleep 5: not prop::value"),
    ("# c\nslots::2\n", "jobs.txt:2: command: missing: every job line needs command::"),
    ("command::a\tslots::two\n", 'jobs.txt:1: slots: not a positive integer: "two"'),
    ("command::a\tslots::0\n", 'jobs.txt:1: slots: not a positive integer: "0"'),
    ("command::a\tpriority::1.5\n", 'jobs.txt:1: priority: not a whole number: "1.5"'),
    ("command::a\ttimeLimit::soon\n", 'jobs.txt:1: timeLimit: not a duration: "soon"'),
    ("command::a\tmemory::lots\n", 'jobs.txt:1: memory: not a memory size: "lots"'),
    ("command::a\testimatedMemory::-1\n", "jobs.txt:1: estimatedMemory: not a memory size"),
    ("command::a\trequeue::maybe\n", 'jobs.txt:1: requeue: not a boolean: "maybe" (use yes or no)'),
    ("command::a\tshell::bash\n", 'jobs.txt:1: shell: not an absolute path: "bash"'),
    ("command::a\tcwd::does-not-exist\n", "jobs.txt:1: cwd: not an existing directory"),
    ("command::a\tslots::1\tslots::2\n", "jobs.txt:1: slots: given twice on this line"),
    ("command::a\tstdout::x\toutputFile::y\n",
     "jobs.txt:1: outputFile: given twice on this line (also as stdout)"),
    ("command::a\tname::\n", "jobs.txt:1: name: has no value"),
    ("command::   \n", "jobs.txt:1: command: has no value"),
    ("command::a\t::b\n", "jobs.txt:1: '': unknown prop"),
    ("command::a\n\n\ncommand::x\0y\n", "jobs.txt:4: the command or directory contains a NUL"),
    ("command::a\tname::" + "n" * 300 + "\n", "jobs.txt:1: --name is longer than 255"),
])
def test_a_bad_line_names_file_line_and_prop(defaults, text, message):
    with pytest.raises(ConfigError) as caught:
        parse(text, defaults)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


def test_a_file_without_jobs_is_an_error(defaults):
    with pytest.raises(ConfigError, match=r"^jobs.txt: holds no jobs"):
        parse("# only a comment\n\n", defaults)


def test_read_jobs_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"/missing.txt: no such file$"):
        read_jobs_file(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match=r": is a directory"):
        read_jobs_file(str(tmp_path))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"command::a\ncommand::caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.txt:2: not UTF-8 text$"):
        read_jobs_file(str(bad))
    good = tmp_path / "good.txt"
    good.write_bytes(b"\xef\xbb\xbfcommand::a\n")  # a byte-order mark is dropped
    assert read_jobs_file(str(good)) == "command::a\n"


def test_hundred_thousand_lines_parse(defaults):
    text = "command::./simulate --seed {idx}\tslots::2\tstdout::run-{idx}.out\n" * 100_000
    specs = parse(text, defaults)
    assert len(specs) == 100_000
    assert specs[-1].command == "./simulate --seed 100000"
    assert specs[-1].stdout == "run-100000.out" and specs[-1].array_index == 100_000

"""The jobs file of ``hq-submit -f FILE`` (the original hQ format): one job per line.

Fields are separated by tabs and each is ``prop::value``; ``{idx}`` in a value becomes the
line's number (1-based, counting every physical line), which is also the job's array index.
Blank lines and lines starting with ``#`` are skipped. Example::

    # three runs of the same program
    command::./simulate --seed {idx}\tslots::2\tstdout::sim-{idx}.out
    command::./simulate --seed {idx}\tname::seed-{idx}\ttimeLimit::2h

The command line options of hq-submit give every line's defaults; a line's props override
them. A bad line is a ConfigError ``FILE:LINE: prop: what is wrong`` and nothing of the file
is submitted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from hq.cli.units import parse_duration, parse_memory
from hq.config_syntax import parse_bool, positive_int
from hq.errors import ConfigError, UsageError
from hq.jobspec import JobSpec

Parser = Callable[[str], Any]


def _text(value: str) -> str:
    return value


def _int(value: str) -> int:
    digits = value[1:] if value[:1] in "+-" else value
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f'not a whole number: "{value}"')
    return int(value)


def _absolute_path(value: str) -> str:
    if not os.path.isabs(value):
        raise ValueError(f'not an absolute path: "{value}"')
    return value


def _host_list(value: str) -> tuple[str, ...]:
    return tuple(host.strip() for host in value.split(",") if host.strip())


# prop (lower case, without "_", so that hQ's camelCase and snake_case both match)
# -> (JobSpec field, parser); "cwd" is added per file, as it depends on the submit directory
_PROPS: dict[str, tuple[str, Parser]] = {
    "command": ("command", _text),
    "slots": ("cores", positive_int),
    "priority": ("priority", _int),
    "group": ("group", _text),
    "infotext": ("info_text", _text),
    "logfile": ("log_path", _text),
    "shell": ("shell", _absolute_path),
    "excludehosts": ("excluded_hosts", _host_list),
    "estimatedtime": ("estimated_time_s", parse_duration),
    "estimatedmemory": ("estimated_memory_mb", parse_memory),
    "stdout": ("stdout", _text),
    "outputfile": ("stdout", _text),
    "stderr": ("stderr", _text),
    "errorfile": ("stderr", _text),
    "name": ("name", _text),
    "timelimit": ("time_limit_s", parse_duration),
    "memory": ("memory_mb", parse_memory),
    "requeue": ("requeue", parse_bool),
    "constraint": ("constraint", _text),
    "retries": ("retries", _int),
}
PROP_NAMES = ("command", "slots", "priority", "group", "infoText", "logfile", "shell",
              "excludeHosts", "estimatedTime", "estimatedMemory", "stdout", "outputFile",
              "stderr", "errorFile", "name", "cwd", "timeLimit", "memory", "requeue",
              "constraint", "retries")
"""The props a jobs file may use, as hQ spelt them (snake_case works too)."""


def read_jobs_file(path: str) -> str:
    """The text of a jobs file (``-`` is standard input); ConfigError naming it if unreadable."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a jobs file") from None
    except OSError as err:
        raise ConfigError(path, f"cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(path, "not UTF-8 text", line=data.count(b"\n", 0, err.start) + 1
                          ) from None


def parse_jobs_file(source: str, text: str, defaults: JobSpec) -> list[JobSpec]:
    """The jobs of a jobs file's ``text``; ``source`` names the file in messages.

    ``defaults`` (built from the command line options; its command is ignored) gives every
    field a line does not set. Relative ``cwd::`` values are taken from ``defaults.cwd``.
    Raises ConfigError ``source:line: prop: what is wrong`` at the first bad line.
    """
    base = {name: getattr(defaults, name) for name in JobSpec.__struct_fields__}
    props = dict(_PROPS)
    props["cwd"] = ("cwd", _directory_parser(defaults.cwd))
    specs: list[JobSpec] = []
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped[0] == "#":
            continue
        values = _parse_line(source, number, stripped, props)
        spec = JobSpec(**{**base, **values})
        try:
            spec.validate()
        except UsageError as err:
            raise ConfigError(source, err.message, line=number) from None
        specs.append(spec)
    if not specs:
        raise ConfigError(source, "holds no jobs (every line is blank or a # comment)")
    return specs


def _parse_line(source: str, number: int, line: str,
                props: dict[str, tuple[str, Parser]]) -> dict[str, Any]:
    index = str(number)
    substitute = "{idx}" in line
    values: dict[str, Any] = {"array_index": number}
    for field in line.split("\t"):
        prop, sep, value = field.partition("::")
        entry = props.get(prop) if sep else None
        if entry is None:
            prop = prop.strip()
            if not sep:
                if not prop:
                    continue  # an empty field: two tabs in a row, or a trailing tab
                shown = prop if len(prop) <= 40 else prop[:37] + "..."
                raise ConfigError(source, "not prop::value (fields are separated by tabs, "
                                  "each written prop::value)", line=number, field=shown)
            entry = props.get(prop.lower().replace("_", ""))
            if entry is None:
                raise ConfigError(source, f"unknown prop (known: {', '.join(PROP_NAMES)})",
                                  line=number, field=prop or "''")
            props[field.partition("::")[0]] = entry  # this spelling is known from now on
        name, parse = entry
        if name in values:
            raise ConfigError(source, f"given twice on this line (also as "
                              f"{_first_spelling(line, name, props)})", line=number,
                              field=prop.strip())
        value = value.strip()
        if substitute:
            value = value.replace("{idx}", index)
        if not value:
            raise ConfigError(source, "has no value", line=number, field=prop.strip())
        try:
            values[name] = parse(value)
        except ValueError as err:
            raise ConfigError(source, str(err), line=number, field=prop.strip()) from None
    if "command" not in values:
        raise ConfigError(source, "missing: every job line needs command::...", line=number,
                          field="command")
    return values


def _first_spelling(line: str, name: str, props: dict[str, tuple[str, Parser]]) -> str:
    """How ``line`` first wrote the prop that sets field ``name`` (for a message)."""
    for field in line.split("\t"):
        prop = field.partition("::")[0].strip()
        if props.get(prop.lower().replace("_", ""), ("",))[0] == name:
            return prop
    return name


def _directory_parser(base: str) -> Parser:
    """A parser of ``cwd::`` values: relative to ``base``, must be an existing directory."""
    checked: dict[str, str] = {}

    def parse(value: str) -> str:
        path = os.path.normpath(os.path.join(base, value))
        if path not in checked:
            if not os.path.isdir(path):
                raise ValueError(f'not an existing directory: "{path}"')
            checked[path] = path
        return checked[path]

    return parse

"""Batch scripts for ``hq-submit ./run.sh ARGS...``, the way Slurm's sbatch takes them.

Three jobs, each a pure function that hq-submit calls before it builds the JobSpec:

- ``looks_like_script`` decides whether the first word of the command is a script file to
  copy into the job (``--script`` forces it) rather than a program to run by name;
- ``read_directives`` reads the ``#HQ`` and ``#SBATCH`` option lines at the top of the
  script into hq-submit option names and raw values; the caller parses and validates the
  values and lets its command line options win over them;
- ``script_command`` turns the script text into a /bin/sh command that recreates the file,
  as it was at submit time, in a private temporary directory on the execution host, runs it
  there with the arguments and removes it again. Like sbatch, hq copies the script at submit
  time: editing or deleting the file afterwards does not change a queued job.

Example::

    #!/bin/bash
    #SBATCH --job-name=sim --cpus-per-task=4
    #SBATCH -t 2:00:00 -o sim-%j.out
    #HQ --group nightly     # comments after the options are fine
    ./simulate "$@"
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
from dataclasses import dataclass, field

from hq.errors import UsageError

MAX_SCRIPT_BYTES = 128 * 1024

# #HQ short options: the hq-submit ones that make sense in a script.
_HQ_SHORT = {"c": "slots", "o": "stdout", "O": "stderr", "p": "priority", "g": "group",
             "t": "estimated_time", "m": "estimated_memory"}
# hq-submit's long options that take no value; every other long option needs one.
_HQ_FLAGS = {"hold", "no_requeue", "wait", "parsable", "json"}

_SBATCH_LONG = {"array": "array", "dependency": "dependency", "cpus-per-task": "slots",
                "mem": "memory", "time": "time_limit", "output": "stdout", "error": "stderr",
                "job-name": "name", "constraint": "constraint", "gres": "gres",
                "gpus": "gpus"}
_SBATCH_SHORT = {"a": "array", "d": "dependency", "c": "slots", "t": "time_limit",
                 "o": "stdout", "e": "stderr", "J": "name", "C": "constraint"}
# Unsupported sbatch options that take no value (or only an optional ``=value``): knowing
# them keeps the word after them from being swallowed as their value.
_SBATCH_LONG_FLAGS = {"contiguous", "exclusive", "get-user-env", "help", "hold", "ignore-pbs",
                      "no-kill", "no-requeue", "overcommit", "oversubscribe", "parsable",
                      "quiet", "reboot", "requeue", "spread-job", "test-only", "usage",
                      "use-min-nodes", "verbose", "version", "wait"}
_SBATCH_SHORT_FLAGS = {"H", "h", "k", "O", "Q", "s", "V", "v", "W"}

_CAMEL_HUMP = re.compile(r"(?<=[a-z])(?=[A-Z])")
# "#HQ" or "#SBATCH", then blanks or the end of the line: "#HQS" is just a comment.
_DIRECTIVE = re.compile(r"(#HQ|#SBATCH)(?:[ \t](.*))?")


@dataclass
class Directives:
    """The options found in a script's directive lines, and what was ignored."""

    options: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def script_name(path: str) -> str:
    """The script's base name: the job's default name, as sbatch does."""
    name = os.path.basename(os.path.normpath(path))
    return name if name not in ("", ".", "..") else "script"


def looks_like_script(word: str, *, forced: bool) -> bool:
    """Whether ``word``, the first word of the command, is a batch script to copy into the job.

    Without ``forced`` (``--script``) a word is a script only when it is written like a file
    (``./run.sh``, ``dir/run``, ``run.sh``), is a regular file starting with ``#!`` and is not
    a program found through PATH: ``hq-submit sleep 42`` keeps running ``sleep``. With
    ``forced`` a word that is not such a file is a UsageError.
    """
    if forced:
        _check_script_file(word)
        return True
    if "/" not in word and not word.endswith(".sh"):
        return False
    try:
        _check_script_file(word)
    except UsageError:
        return False
    # A word with a slash is never looked up on PATH, so only a bare "run.sh" can be shadowed.
    return "/" in word or shutil.which(word) is None


def _check_script_file(path: str) -> None:
    if not os.path.lexists(path):
        raise UsageError(f"--script: {path}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"--script: {path} is not a regular file")
    try:
        with open(path, "rb") as script:
            start = script.read(2)
    except OSError as err:
        raise UsageError(f"--script: {path}: {err.strerror}") from None
    if start != b"#!":
        raise UsageError(f"--script: {path} does not start with #! (the interpreter line)")


def read_directives(path: str, text: str) -> Directives:
    """Read the ``#HQ`` and ``#SBATCH`` lines at the top of a script.

    The directive block runs from after the ``#!`` line to the first line that is neither
    blank nor a comment; directives further down are ordinary comments, as with sbatch.
    ``#HQ`` lines take hq-submit's long options (``--time-limit 2h``, ``--hold``; the key is
    the name with dashes as underscores) and its short options -c -o -O -p -g -t -m.
    ``#SBATCH`` lines take --array, --dependency/-d, --cpus-per-task/-c, --mem, --time/-t,
    --output/-o, --error/-e and --job-name/-J (and -a for --array); other sbatch options
    are ignored with a warning. Values stay raw text: the caller parses them, so a bad value
    is reported by the same code as on the command line. A later directive overrides an
    earlier one. Malformed lines are UsageErrors naming ``path:line``.
    """
    directives = Directives()
    lines = text.split("\n")
    first = 1 if lines and lines[0].startswith("#!") else 0
    for index in range(first, len(lines)):
        line = lines[index].rstrip("\r")
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        match = _DIRECTIVE.fullmatch(line)
        if match is None:
            continue
        kind, rest = match.group(1), match.group(2) or ""
        where = f"{path}:{index + 1}"
        try:
            words = shlex.split(rest, comments=True)
        except ValueError as err:
            raise UsageError(f"{where}: {kind} line: {err}") from None
        if kind == "#HQ":
            _read_hq(words, where, directives)
        else:
            _read_sbatch(words, where, directives)
    return directives


def _split_option(word: str, where: str) -> tuple[str, str, str | None]:
    """``word`` as (option as written, bare name, attached value or None)."""
    if word.startswith("--") and len(word) > 2 and word[2] != "=":
        name, equals, value = word[2:].partition("=")
        return f"--{name}", name, value if equals else None
    if word.startswith("-") and len(word) > 1 and not word.startswith("--"):
        return word[:2], word[1], word[2:] or None
    raise UsageError(f"{where}: {word!r} is not an option (directive lines hold only options)")


def _take_value(option: str, attached: str | None, words: list[str], where: str) -> str:
    if attached is not None:
        return attached
    if not words:
        raise UsageError(f"{where}: {option} needs a value")
    return words.pop(0)


def _read_hq(words: list[str], where: str, directives: Directives) -> None:
    while words:
        option, name, attached = _split_option(words.pop(0), where)
        if option.startswith("--"):
            # --excludeHosts and --exclude-hosts are one hq-submit option: exclude_hosts.
            key = _CAMEL_HUMP.sub("_", name).lower().replace("-", "_")
            if key in _HQ_FLAGS:
                if attached is not None:
                    raise UsageError(f"{where}: {option} takes no value")
                directives.options[key] = ""
                continue
        elif name in _HQ_SHORT:
            key = _HQ_SHORT[name]
        else:
            raise UsageError(f"{where}: #HQ {option} is not an hq-submit option for scripts "
                             f"(short options: {' '.join('-' + s for s in _HQ_SHORT)})")
        directives.options[key] = _take_value(option, attached, words, where)


def _read_sbatch(words: list[str], where: str, directives: Directives) -> None:
    while words:
        option, name, attached = _split_option(words.pop(0), where)
        long = option.startswith("--")
        key = (_SBATCH_LONG if long else _SBATCH_SHORT).get(name)
        if key is not None:
            directives.options[key] = _take_value(option, attached, words, where)
            continue
        directives.warnings.append(f"{where}: #SBATCH {option} is not supported by hq: ignored")
        # Its value must not be read as the next option; an unknown option is assumed to take
        # one unless the next word looks like an option.
        takes_no_value = name in (_SBATCH_LONG_FLAGS if long else _SBATCH_SHORT_FLAGS)
        if attached is None and not takes_no_value and words and not words[0].startswith("-"):
            words.pop(0)


def script_command(path: str, text: str, args: list[str]) -> str:
    """A /bin/sh command that recreates the script ``text`` and runs it with ``args``.

    When the job runs, the command makes a private directory with ``mktemp -d`` (in $TMPDIR,
    else /tmp), writes the text byte for byte into a file named like the script, makes it
    executable and runs it, so ``$0`` and the ``#!`` interpreter work as with sbatch
    (``dirname "$0"`` is that directory, not where the script was submitted from). The
    directory is removed when the script ends, also when the job is cancelled with SIGTERM,
    which the command passes on to the script; the command exits with the script's status.
    A text with a NUL byte, or larger than 128 KiB, is a UsageError.
    """
    if "\0" in text:
        raise UsageError(f"{path} contains a NUL byte: not a script text hq can copy")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_SCRIPT_BYTES:
        raise UsageError(f"{path} is larger than 128 KiB: hq copies scripts into the job")
    delimiter = f"HQ_SCRIPT_{secrets.token_hex(8)}"
    while delimiter in text:
        delimiter = f"HQ_SCRIPT_{secrets.token_hex(8)}"
    write = f"cat > \"$f\" <<'{delimiter}'"
    body = text
    if text and not text.endswith("\n"):
        # A here-document always ends in a newline; $(...) strips exactly that one back off.
        write += ' && s=$(cat "$f") && printf %s "$s" > "$f"'
        body += "\n"
    run = " ".join(['"$f"', *(shlex.quote(arg) for arg in args)])
    return "\n".join([
        'd=$(mktemp -d "${TMPDIR:-/tmp}/hq-script.XXXXXX") || exit 1',
        f'f="$d"/{shlex.quote(script_name(path))}',
        f'{write} && chmod 700 "$f" || {{ echo "hq: cannot write $f" >&2; rm -rf "$d"; exit 1; }}',
        body + delimiter,
        # The script runs in the background so that this shell, waiting, can pass on a
        # cancel and still remove the directory; wait returns early when a signal comes.
        "trap 'kill -TERM \"$child\" 2>/dev/null' TERM INT",
        f"{run} &",
        "child=$!",
        'while :; do wait "$child"; status=$?; kill -0 "$child" 2>/dev/null || break; done',
        # a wait cut short by the signal says 128+15 even when the script has ended with its
        # own status meanwhile: ask once more (127: it was collected already, keep what we have)
        'if [ "$status" -gt 128 ]; then wait "$child"; s=$?; [ "$s" = 127 ] || status=$s; fi',
        'rm -rf "$d"',
        'exit "$status"',
        "",
    ])

"""How hq's configuration files are written, apart from what they mean: the words of values
(booleans, memory sizes, numbers, names), reading a file as text (a file holding secrets only
when it is private), and INI files with the line number of every key (configparser keeps none).

Value parsers take the stripped text of one cell or key and raise ``ValueError`` with a message
that quotes the text; the loaders in ``hq.config`` add file, line and field to make a
``ConfigError``. Imports nothing from hq but ``hq.errors``.
"""

from __future__ import annotations

import configparser
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, TypeVar

from hq.errors import ConfigError

_TRUE = frozenset({"true", "yes", "on", "1", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "n"})
_DIGITS = re.compile(r"[0-9]+")  # not str.isdigit: that accepts non-ASCII digits
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")  # no leading "-": not an option
_ADDRESS = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9_.:-]{0,252}")  # ":" for IPv6 literals
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?", re.IGNORECASE)
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(?:I?B)?)?", re.IGNORECASE)
_KIB_PER_UNIT = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}

T = TypeVar("T")


def quote(text: str) -> str:
    """``text`` in double quotes, as messages show a value from a file."""
    return f'"{text}"'


def parse_bool(text: str) -> bool:
    """Read a yes/no word (true/false, yes/no, on/off, 1/0, y/n; any case); never truthiness."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"not a boolean: {quote(text)} (use yes or no)")


def parse_memory_mb(text: str) -> int:
    """Read a memory size such as ``64G``, ``512M``, ``1T`` or ``2048`` (MiB) into MiB.

    Units are binary (K, M, G, T; any case; an optional trailing B or iB). Part of a MiB rounds
    up, so that a size is never understated.
    """
    match = _MEMORY.fullmatch(text.strip())
    mib = 0
    if match:
        kib = Fraction(match[1]) * _KIB_PER_UNIT[(match[2] or "M").upper()]
        mib = math.ceil(kib / 1024)
    if mib <= 0:
        raise ValueError(f"not a memory size: {quote(text)} (e.g. 512M, 64G, 1T; a number is MiB)")
    return mib


def positive_int(text: str) -> int:
    """Read a whole number >= 1."""
    if not _DIGITS.fullmatch(text) or int(text) == 0:
        raise ValueError(f"not a positive integer: {quote(text)}")
    return int(text)


def core_count(text: str) -> int:
    """A host's cores: ``24``, or sockets x cores as hardware lists them (``2x12``)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", text)
    if match is None:
        return positive_int(text.strip())
    cores = int(match[1]) * int(match[2])
    if cores == 0:
        raise ValueError(f"not a core count (24, or sockets x cores: 2x12): {quote(text)}")
    return cores


def non_negative_int(text: str) -> int:
    """Read a whole number >= 0."""
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"not an integer >= 0: {quote(text)}")
    return int(text)


def positive_number(text: str) -> float:
    """Read a finite number > 0, fractions allowed (durations in seconds, factors)."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"not a positive number: {quote(text)}")
    return number


def port(text: str) -> int:
    """Read a TCP port, 1..65535."""
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"not a port number (1..65535): {quote(text)}")
    return int(text)


def _matching(pattern: re.Pattern[str], what: str, allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise ValueError(f"invalid {what} {quote(text)}: use {allowed}")
        return text
    parse.__doc__ = f"Return ``text`` if it is a valid {what}."
    return parse


host_name = _matching(_HOST_NAME, "host name", "letters, digits, '-', '_' and '.'")
address = _matching(_ADDRESS, "address", "a host name or an IP address")
user_name = _matching(_USER_NAME, "user name",
                      "letters, digits, '_', '.', '-' (not first), at most 32 characters")


def gpu_list(text: str) -> tuple[str, ...]:
    """A host's GPUs: a count (``2`` -> devices 0 and 1) or their ids or UUIDs, commas
    between (``GPU-8f3e...,GPU-1a2b...``: CUDA orders devices otherwise than nvidia-smi)."""
    text = text.strip()
    if not text:
        return ()
    if text.isdigit():
        count = int(text)
        if count > 64:
            raise ValueError(f"at most 64 GPUs per host, not {count}")
        return tuple(str(n) for n in range(count))
    ids = tuple(item.strip() for item in text.split(",") if item.strip())
    if len(set(ids)) != len(ids) or any(not i.replace("-", "").replace("_", "").isalnum()
                                        for i in ids):
        raise ValueError(f"not a GPU count or a list of distinct device ids: {text!r}")
    return ids


def feature_set(text: str) -> frozenset[str]:
    """Read a comma-separated list; items are stripped and empty ones dropped."""
    return frozenset(item.strip() for item in text.split(",") if item.strip())


def read_text(path: Path) -> str:
    """The text of a configuration file; ConfigError naming the path when it cannot be read."""
    try:
        # utf-8-sig: files saved by some editors start with a byte-order mark
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None


def read_private_text(path: Path, holds: str) -> str | None:
    """The text of a secret file, None if there is none; refused unless private to its owner.

    ``holds`` says what is secret in it, for the message.
    """
    try:
        with path.open(encoding="utf-8-sig") as file:
            # fstat of the opened file rather than a stat of its name: no other file can be
            # swapped in between the check and the read
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            if mode & 0o077:
                what = "readable" if mode & 0o044 else "writable"
                who = "others" if mode & 0o007 else "its group"
                raise ConfigError(str(path), f"{what} by {who} (mode {mode:04o}): it holds "
                                  f"{holds}; run: chmod 600 {path}")
            return file.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None


class IniValue(NamedTuple):
    """The text of one INI key (stripped; empty means "the default") and where it was."""

    text: str
    line: int | None


_INI_SECTION = re.compile(r"\s*\[([^\]]+)\]")
_INI_KEY = re.compile(r"\s*([^=:\s][^=:]*?)\s*[=:]")


def _ini_line(text: str, section: str, key: str | None = None) -> int | None:
    """The line of ``[section]``, or of ``key`` inside it."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("#", ";")):
            continue
        if match := _INI_SECTION.match(line):
            current = match[1]
            if key is None and current == section:
                return number
        elif (key is not None and current == section and (match := _INI_KEY.match(line))
              and match[1].lower() == key):
            return number
    return None


def read_ini(source: str, text: str,
             known: Mapping[str, frozenset[str]]) -> dict[str, dict[str, IniValue]]:
    """Parse INI ``text`` into {section: {key: IniValue}}; every section and key must be known.

    Sections match case-insensitively (the original hQ wrote ``[DATABASE]``) and come back in
    lower case, as keys do. Comments take whole lines. No message quotes a line of the file:
    it may hold a password.
    """
    # "\0" as default section: a [DEFAULT] section would otherwise lend its keys to every
    # section; this way it is an ordinary, unknown one.
    parser = configparser.ConfigParser(interpolation=None, default_section="\0",
                                       empty_lines_in_values=False)
    try:
        parser.read_string(text, source=source)
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(source, f"duplicate section [{exc.section}]", line=exc.lineno) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(source, "duplicate key", line=exc.lineno, field=exc.option) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(source, "a key before the first [section] line",
                          line=exc.lineno) from None
    except configparser.ParsingError as exc:
        raise ConfigError(source, "not a 'key = value' line", line=exc.errors[0][0]) from None
    result: dict[str, dict[str, IniValue]] = {}
    for section in parser.sections():
        name = section.lower()
        line = _ini_line(text, section)
        if name not in known:
            raise ConfigError(source, f"unknown section [{section}] (known: "
                              f"{', '.join(f'[{s}]' for s in known)})", line=line)
        if name in result:
            raise ConfigError(source, f"duplicate section [{section}]", line=line)
        result[name] = {}
        for key, value in parser.items(section, raw=True):
            key_line = _ini_line(text, section, key)
            if key not in known[name]:
                raise ConfigError(source, f"unknown key in [{section}] (known: "
                                  f"{', '.join(sorted(known[name]))})", line=key_line, field=key)
            result[name][key] = IniValue(value.strip(), key_line)
    return result


def ini_value(source: str, entries: Mapping[str, IniValue], key: str,
                 parse: Callable[[str], T]) -> T | None:
    """``entries[key]`` read by ``parse``; None when absent or empty (meaning the default)."""
    entry = entries.get(key)
    if entry is None or not entry.text:
        return None
    try:
        return parse(entry.text)
    except ValueError as exc:
        raise ConfigError(source, str(exc), line=entry.line, field=key) from None


_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_s(text: str) -> float:
    """Seconds, or a number with one unit: ``90``, ``12h``, ``7d``."""
    word = text.strip().lower()
    scale = _UNIT_S.get(word[-1:])
    number = word[:-1] if scale is not None else word
    return positive_number(number) * (scale or 1.0)


def duration_text(seconds: float) -> str:
    """``2h``, ``1h30m``, ``90s``: a duration as people write it (whole seconds)."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"

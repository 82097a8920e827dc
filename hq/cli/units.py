"""Durations and memory sizes as people write them on a command line or in a jobs file.

Each parser takes the text and returns a whole number (seconds, MiB) or raises ``ValueError``
with a message that quotes the text; ``option_value`` turns that into a UsageError naming the
option, the jobs file reader into ``FILE:LINE: prop: ...``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

from hq.errors import UsageError

T = TypeVar("T")

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# 90, 90s, 1.5h, 1h30m, 2d12h
_WITH_UNITS = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?[smhd])+|[0-9]+(?:\.[0-9]+)?", re.IGNORECASE)
_UNIT_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])", re.IGNORECASE)
# Slurm: MM:SS, H:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_CLOCK = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+))?(?::([0-9]+))?")
_DURATION_HELP = "e.g. 90, 90s, 15m, 2h, 1d, 1h30m, 1:30:00, 30:00 or 2-12:00:00"


def parse_duration(text: str) -> int:
    """Read a duration into whole seconds (at least 1; a part of a second rounds up).

    Accepted: seconds (``90``), a number with a unit or several (``90s``, ``15m``, ``2h``,
    ``1d``, ``1h30m``) and Slurm's clock forms (``MM:SS``, ``H:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``).
    """
    word = text.strip()
    seconds: float | None = None
    if _WITH_UNITS.fullmatch(word):
        if word[-1].isdigit():
            seconds = float(word)
        else:
            seconds = sum(float(number) * _UNIT_SECONDS[unit.lower()]
                          for number, unit in _UNIT_PART.findall(word))
    elif (match := _CLOCK.fullmatch(word)) and (":" in word or "-" in word):
        seconds = _clock_seconds(match)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f'not a duration: "{text}" ({_DURATION_HELP})')
    return math.ceil(seconds)


def _clock_seconds(match: re.Match[str]) -> float | None:
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:
        # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, secs = [*parts, 0, 0][:3]
        total_days = int(days)
    else:
        total_days = 0
        if len(parts) == 2:        # MM:SS
            hours, (minutes, secs) = 0, parts
        else:                      # H:MM:SS
            hours, minutes, secs = parts
    if minutes >= 60 or secs >= 60 or (days is not None and hours >= 24):
        return None
    return ((total_days * 24 + hours) * 60 + minutes) * 60 + secs


def parse_memory(text: str) -> int:
    """Read a memory size into MiB: ``512M``, ``2G``, ``1T``; a plain number is MiB."""
    from hq.config_syntax import parse_memory_mb

    return parse_memory_mb(text)


def option_value(parse: Callable[[str], T], text: str, option: str) -> T:
    """``parse(text)``, a ValueError becoming a UsageError that names ``option``."""
    try:
        return parse(text)
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None

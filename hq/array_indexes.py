"""An array's index set as text, Slurm's spelling without the cap: ``1-500``, ``1-500:2``,
``1,3,7-9``; the one reading of it for hq-submit, hq-server and the user-server.

An array submitted with ``--array`` travels and is signed as one spec whose
``array_indexes`` is this text (``hq.jobspec``): hq-server lays the elements out from it
(``expand``), and the user-server hands element i to an exec-server only when i is in the
set its owner signed (``contains``). So the text's meaning is part of every such signature:
change how it reads and arrays queued before stop verifying.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

MAX_ARRAY = 1_000_000      # elements of one array
MAX_TEXT = 1024            # characters of a signed index set (a longer list is signed per job)
MAX_INDEX = 2**31 - 1
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?")

FORMS = "1-500, 1-500:2 (every second), 1,3,7-9, with %CAP for the most at once: 1-500%20"

Range = tuple[int, int, int]   # first, last, step


class BadIndexSet(ValueError):
    """Index-set text that does not read; the message says what is wrong with it."""


def ranges(text: str) -> list[Range]:
    """The ranges of ``text`` in the order given; BadIndexSet when it does not read, holds
    an index above 2**31-1 or more than MAX_ARRAY elements (counting repeats)."""
    found: list[Range] = []
    total = 0
    for item in text.split(","):
        match = _RANGE.fullmatch(item.strip())
        if not match:
            raise BadIndexSet(f"{item.strip() or 'an empty item'!r} is not an index or a "
                              f"range; use {FORMS}")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        step = 1 if match[3] is None else int(match[3])
        if last < first or step < 1:
            raise BadIndexSet("a range goes upwards in steps of at least 1")
        total += (last - first) // step + 1
        if total > MAX_ARRAY:
            raise BadIndexSet(f"more than {MAX_ARRAY:,} elements")
        if last > MAX_INDEX:
            raise BadIndexSet(f"an index is larger than {MAX_INDEX}")
        found.append((first, last, step))
    return found


def canonical(text: str) -> str:
    """``text`` as it is signed: the same items, without blanks."""
    return ",".join(item.strip() for item in text.split(","))


def compact(numbers: Iterable[int]) -> str:
    """Numbers written compactly, in order, each once: ``[42, 43, 44, 47]`` -> ``42-44,47``
    (job ids, or an array's indexes as ``expand`` reads them)."""
    parts: list[str] = []
    start = previous = None
    for number in sorted(set(numbers)):
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = number
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def expand(text: str) -> list[int]:
    """The indexes of ``text`` in the order given, each once: element n of the array is the
    n-th (its job id is the array's id + n)."""
    found = ranges(text)
    if len(found) == 1:   # the usual 1-N: no repeats to drop
        first, last, step = found[0]
        return list(range(first, last + 1, step))
    indexes: dict[int, None] = {}
    for first, last, step in found:
        indexes.update(dict.fromkeys(range(first, last + 1, step)))
    return list(indexes)


def count(text: str) -> int:
    """How many elements ``text`` names (repeats once)."""
    found = ranges(text)
    if len(found) == 1:
        first, last, step = found[0]
        return (last - first) // step + 1
    return len(expand(text))


@functools.lru_cache(maxsize=256)
def _cached_ranges(text: str) -> tuple[Range, ...] | None:
    try:
        return tuple(ranges(text))
    except BadIndexSet:
        return None


def contains(text: str, index: int) -> bool:
    """Whether ``index`` is in the set ``text`` (False when the text does not read)."""
    found = _cached_ranges(text)
    return found is not None and any(
        first <= index <= last and (index - first) % step == 0 for first, last, step in found)

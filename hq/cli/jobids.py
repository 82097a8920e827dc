"""Job ids as people type and read them: ``42``, ``42-45``, ``42,44`` and mixtures."""

from __future__ import annotations

import re
from collections.abc import Iterable

from hq.errors import UsageError

MAX_IDS = 1_000_000
_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def parse_ids(*words: str) -> list[int]:
    """The job ids named by ``words``, sorted and without repeats.

    >>> parse_ids("42-45,47", "44")
    [42, 43, 44, 45, 47]
    """
    ids: set[int] = set()
    for word in words:
        for item in word.split(","):
            match = _ITEM.fullmatch(item.strip())
            if not match:
                raise UsageError(f'bad job id "{item}": use a number, a range such as 42-45, '
                                 "or a comma list such as 42,44")
            first = int(match[1])
            last = int(match[2]) if match[2] is not None else first
            if first < 1 or last < first:
                raise UsageError(f'bad job id range "{item}": ids start at 1 and a range '
                                 "goes upwards")
            if last - first >= MAX_IDS or len(ids) + last - first >= MAX_IDS:
                raise UsageError(f"too many job ids (more than {MAX_IDS:,})")
            ids.update(range(first, last + 1))
    return sorted(ids)


def format_ids(ids: Iterable[int]) -> str:
    """Ids written compactly: ``[42, 43, 44, 47]`` -> ``42-44,47``."""
    parts: list[str] = []
    run_start = previous = None
    for job_id in sorted(set(ids)):
        if previous is not None and job_id == previous + 1:
            previous = job_id
            continue
        if run_start is not None:
            parts.append(_run(run_start, previous))  # type: ignore[arg-type]
        run_start = previous = job_id
    if run_start is not None:
        parts.append(_run(run_start, previous))  # type: ignore[arg-type]
    return ",".join(parts)


def _run(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"

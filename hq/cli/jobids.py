"""Job ids as people type and read them: ``42``, ``42-45``, ``42,44`` and mixtures."""

from __future__ import annotations

import re
from collections.abc import Iterable

from hq.array_indexes import compact
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
    return compact(ids)


_ELEMENTS = re.compile(r"([0-9]+)_(\*|[0-9]+|\[([^\]]*)\])")
# commas inside brackets belong to an index list (42_[1,3-5]), not to the list of ids
_TOP_COMMA = re.compile(r",(?![^\[]*\])")


def parse_selection(*words: str) -> tuple[list[int], dict[int, list[int] | None]]:
    """Job ids and array elements as typed: (the job ids, {array id: its indexes, or None
    for all of it}).

    >>> parse_selection("42-43,50_[1-3,7]", "60_*", "61_2")
    ([42, 43], {50: [1, 2, 3, 7], 60: None, 61: [2]})
    """
    plain: list[str] = []
    arrays: dict[int, list[int] | None] = {}
    for word in words:
        for item in _TOP_COMMA.split(word):
            item = item.strip()
            match = _ELEMENTS.fullmatch(item)
            if match is None:
                if "_" in item or "[" in item:
                    raise UsageError(f'bad array element "{item}": use 42_7, 42_[1-5,9] or '
                                     "42_* (every element of array 42)")
                plain.append(item)
                continue
            array = int(match[1])
            if match[2] == "*":
                arrays[array] = None
                continue
            indexes = (parse_indexes(match[3], item) if match[3] is not None
                       else [int(match[2])])
            if array not in arrays or arrays[array] is not None:
                arrays[array] = sorted(set(arrays.get(array) or []) | set(indexes))
    return (parse_ids(",".join(plain)) if plain else []), arrays


def parse_indexes(text: str, item: str) -> list[int]:
    """``1-5,9`` -> [1, 2, 3, 4, 5, 9] (array indexes start at 0)."""
    found: set[int] = set()
    for part in text.split(","):
        match = _ITEM.fullmatch(part.strip())
        if not match:
            raise UsageError(f'bad array element "{item}": the indexes in brackets are '
                             "numbers and ranges, such as [1-5,9]")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first or last - first >= MAX_IDS:
            raise UsageError(f'bad array element "{item}": a range goes upwards')
        found.update(range(first, last + 1))
    return sorted(found)

"""hq-submit's workflow options as people type them, in Slurm's spelling: ``--array`` and
``--dependency``. Pure parsing: each returns what the Submit request carries, or raises a
UsageError that names the option and shows the form it expects.
"""

from __future__ import annotations

import re

from hq import array_indexes
from hq.errors import UsageError
from hq.protocol.messages import MAX_ARRAY_CAP, MAX_DEPENDENCIES, DependencyRef

_KINDS = ("afterok", "afterany", "afternotok", "aftercorr")
_TARGET = re.compile(r"([0-9]+)(?:_([0-9]+))?")

ARRAY_FORMS = array_indexes.FORMS
DEPENDENCY_FORMS = ("afterok:ID[:ID...][,afterany:ID][,afternotok:ID][,aftercorr:ARRAY]; "
                    "an ID is a job, an array (its id) or an element (42_7)")


def parse_array(text: str) -> tuple[str, int | None]:
    """``1-500:2%20`` -> (the index set as it is signed, ``hq.array_indexes``; the cap or
    None). Its indexes are ``hq.array_indexes.expand`` of the first."""
    spec, _, cap_text = text.strip().partition("%")
    cap = None
    if cap_text:
        if not cap_text.isdigit() or not 1 <= int(cap_text) <= MAX_ARRAY_CAP:
            raise UsageError(f"--array {text}: the cap after % must be a number from 1 to "
                             f"{MAX_ARRAY_CAP:,}")
        cap = int(cap_text)
    try:
        array_indexes.ranges(spec)
    except array_indexes.BadIndexSet as err:
        raise UsageError(f"--array {text}: {err}") from None
    return array_indexes.canonical(spec), cap


def parse_dependency(texts: tuple[str, ...], after: tuple[str, ...]) -> list[DependencyRef]:
    """``--dependency`` items (repeatable, comma lists) and ``--after ID`` (afterok)."""
    refs: list[DependencyRef] = []
    words = [w for t in texts for w in t.split(",") if w.strip()]
    words += [f"afterok:{a}" for t in after for a in t.split(",") if a.strip()]
    for word in words:
        kind, sep, ids = word.strip().partition(":")
        if kind not in _KINDS or not sep or not ids:
            raise UsageError(f"--dependency {word.strip()!r}: use {DEPENDENCY_FORMS}")
        for target in ids.split(":"):
            match = _TARGET.fullmatch(target.strip())
            if not match or int(match[1]) < 1:
                raise UsageError(f"--dependency {word.strip()!r}: {target!r} is not a job id "
                                 "(42) or an array element (42_7)")
            index = None if match[2] is None else int(match[2])
            if kind == "aftercorr" and index is not None:
                raise UsageError(f"--dependency {word.strip()!r}: aftercorr names a whole "
                                 "array (its id), not an element")
            refs.append(DependencyRef(kind, int(match[1]), index))  # type: ignore[arg-type]
    if len(refs) > MAX_DEPENDENCIES:
        raise UsageError(f"--dependency names {len(refs)} jobs, at most {MAX_DEPENDENCIES} "
                         "(name an array by its id for all of its jobs)")
    return refs

"""Host features a job asks for (``hq-submit --constraint "avx512&bigmem|gpu"``, Slurm's
``--constraint``): ``&`` binds tighter than ``|``, so that example asks for a host with both
avx512 and bigmem, or one with gpu. Features are the words of a host's ``features`` column
in etc/cluster.tab. Nothing here talks to anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[A-Za-z0-9_.:+-]+")

Constraint = tuple[frozenset[str], ...]
"""Alternatives, each the features a host must all have."""


class BadConstraint(ValueError):
    pass


def parse(text: str) -> Constraint:
    """``"a&b|c"`` -> ``({"a", "b"}, {"c"})``; BadConstraint naming what is wrong."""
    alternatives = []
    for part in text.split("|"):
        words = [w.strip() for w in part.split("&")]
        bad = next((w for w in words if not _WORD.fullmatch(w)), None)
        if bad is not None:
            shown = repr(bad) if bad else "an empty feature"
            raise BadConstraint(f"--constraint {text}: {shown} is not a feature name "
                                "(letters, digits, _ . : + -; & for and, | for or)")
        alternatives.append(frozenset(words))
    return tuple(alternatives)


def satisfied(constraint: Constraint, features: frozenset[str]) -> bool:
    return any(alternative <= features for alternative in constraint)


def missing(constraint: Constraint, hosts: Iterable[frozenset[str]]) -> list[str]:
    """The features no host has, of the alternative that lacks fewest of them."""
    every = frozenset().union(*hosts)
    return min((sorted(alt - every) for alt in constraint), key=len, default=[])

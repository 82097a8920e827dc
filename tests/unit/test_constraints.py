"""Host features a job asks for: the syntax, what a host's features satisfy, what is missing."""

from __future__ import annotations

import pytest

from hq.constraints import BadConstraint, missing, parse, satisfied
from hq.jobspec import InvalidSpec, JobSpec


def test_and_binds_tighter_than_or():
    wanted = parse("avx512&bigmem|gpu")
    assert wanted == (frozenset({"avx512", "bigmem"}), frozenset({"gpu"}))
    assert satisfied(wanted, frozenset({"gpu"}))
    assert satisfied(wanted, frozenset({"avx512", "bigmem", "ssd"}))
    assert not satisfied(wanted, frozenset({"avx512"}))


def test_missing_names_the_features_no_host_has():
    hosts = [frozenset({"avx512"}), frozenset({"ssd"})]
    assert missing(parse("avx512&bigmem"), hosts) == ["bigmem"]
    assert missing(parse("gpu&a100|bigmem"), hosts) == ["bigmem"]
    assert missing(parse("avx512&ssd"), hosts) == []   # each exists, never together


@pytest.mark.parametrize("text", ["", "a&", "|b", "a b", "a&(b|c)", "gpu;rm"])
def test_a_bad_constraint_is_refused_with_the_option(text):
    with pytest.raises(BadConstraint, match="--constraint"):
        parse(text)
    with pytest.raises(InvalidSpec, match="--constraint"):
        JobSpec(command="true", cwd="/tmp", constraint=text).validate()

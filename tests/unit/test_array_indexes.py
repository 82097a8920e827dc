"""An array's index set as text (hq.array_indexes): what hq-submit signs, hq-server lays out
and the user-server checks an element against must read the same everywhere."""

from __future__ import annotations

import pytest

from hq import array_indexes
from hq.array_indexes import BadIndexSet, canonical, contains, count, expand


@pytest.mark.parametrize(("text", "indexes"), [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-9:4", [1, 5, 9]),
    ("7", [7]),
    ("0-2", [0, 1, 2]),
    ("9,3,7-8,3", [9, 3, 7, 8]),          # the order given, each once
    (" 1-3 ", [1, 2, 3]),
])
def test_expand_count_and_contains_agree(text, indexes):
    assert expand(text) == indexes
    assert count(text) == len(indexes)
    assert all(contains(text, i) for i in indexes)
    outside = {max(indexes) + 1, min(indexes) - 1} | set(range(max(indexes))) - set(indexes)
    assert not any(contains(text, i) for i in outside if i >= 0)


def test_a_million_elements_read_at_once_and_one_more_is_refused():
    assert count("1-1000000") == 1_000_000 == len(expand("1-1000000"))
    assert contains("1-1000000", 1_000_000) and not contains("1-1000000", 1_000_001)
    with pytest.raises(BadIndexSet, match="more than 1,000,000 elements"):
        expand("0-1000000")
    with pytest.raises(BadIndexSet, match="more than 1,000,000"):
        expand("1-600000,1-600000")   # repeats count: the bound is on what is read


@pytest.mark.parametrize(("text", "message"), [
    ("5-1", "a range goes upwards"),
    ("1-9:0", "a range goes upwards"),
    ("1,,2", "'an empty item' is not an index"),
    ("1-x", "'1-x' is not an index or a range"),
    ("2147483648", "an index is larger than 2147483647"),
])
def test_what_does_not_read_is_refused_with_its_reason(text, message):
    with pytest.raises(BadIndexSet, match=message):
        array_indexes.ranges(text)
    assert not contains(text, 1)


def test_the_signed_text_has_no_blanks_and_means_the_same():
    assert canonical(" 1-3 , 9 ") == "1-3,9"
    assert expand(canonical(" 1-3 , 9 ")) == expand(" 1-3 , 9 ")


def test_the_python_api_signs_an_array_as_a_whole_when_its_text_reads_back_the_same():
    from hq.api import _array_specs
    from hq.jobspec import JobSpec

    spec = JobSpec(command="sim", cwd="/tmp")
    (whole,) = _array_specs(spec, [1, 2, 3, 7])
    assert whole.array_indexes == "1-3,7" and whole.array_index is None
    assert [e.array_index for e in whole.elements()] == [1, 2, 3, 7]
    # an order the text cannot say: one spec per index, in that order
    assert [s.array_index for s in _array_specs(spec, [3, 1, 2])] == [3, 1, 2]
    scattered = list(range(0, 2000, 2))           # 1,000 items: too long to sign as text
    assert len(_array_specs(spec, scattered)) == 1000

"""The jobs a command line names, as ids hq-server knows: plain ids and ranges (``42-45``),
array elements (``42_7``, ``42_[1-5]``), whole arrays (``42_*`` or ``--array 42``).

An array's id is its first job's id (Slurm's ArrayJobId), so ``42-45`` stays a range of job
ids; its elements are looked up by index (``array_elements``), a whole array is listed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hq.cli.jobids import parse_selection
from hq.errors import NotFound, UsageError
from hq.protocol.messages import MAX_ELEMENTS, MAX_PAGE, ArrayElements, Jobs, JobsReply

if TYPE_CHECKING:
    from hq.protocol import BlockingClient
    from hq.protocol.messages import JobInfo

IDS_HELP = ("IDS: 42, 42-45, 42,44; array elements 42_7 or 42_[1-5,9]; a whole array 42_* "
            "(its id is its first job's); several may be given.")


def array_jobs(client: BlockingClient, array: int) -> list[JobInfo]:
    """Every job of array ``array`` (finished ones too), in id order."""
    found: list[JobInfo] = []
    before = None
    while True:
        page: JobsReply = client.request(Jobs(array=array, limit=MAX_PAGE, before=before))
        found = page.jobs + found
        if not page.more or not page.jobs:
            return found
        before = page.jobs[0].id


Selection = tuple[list[int], dict[int, list[int] | None]]


def parse_selected(words: tuple[str, ...], arrays: tuple[int, ...] = ()) -> Selection:
    """What ``words`` and ``--array`` options name (checked before connecting)."""
    ids, elements = parse_selection(*words)
    for array in arrays:
        elements[array] = None
    if not ids and not elements:
        raise UsageError("no jobs named: give job ids (42, 42-45, 42_7, 42_*) or --array ID")
    return ids, elements


def selected_ids(client: BlockingClient, selection: Selection) -> list[int]:
    """The job ids of ``selection``, in order, without repeats. NotFound names the first
    element that does not exist. Elements named by index are looked up (``array_elements``),
    so ``42_7`` costs the same in an array of ten and of a million."""
    ids, elements = list(selection[0]), selection[1]
    for array, indexes in elements.items():
        if indexes is None:
            jobs = array_jobs(client, array)
            if not jobs:
                raise NotFound(f"no such array: {array}")
            ids += [job.id for job in jobs]
            continue
        by_index: dict[int, int] = {}
        for start in range(0, len(indexes), MAX_ELEMENTS):
            found = client.request(ArrayElements(array=array,
                                                 indexes=indexes[start:start + MAX_ELEMENTS]))
            by_index.update(zip(found.indexes, found.ids, strict=True))
        missing = [i for i in indexes if i not in by_index]
        if missing:
            raise NotFound(f"array {array} has no element {missing[0]} ({array}_{missing[0]})")
        ids += [by_index[i] for i in indexes]
    return sorted(set(ids))

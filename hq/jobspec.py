"""What a user asks hq to run: the job spec, its one validator, its signature text, its paths.

``JobSpec`` is the one definition of a job's spec from ``hq-submit`` to the database: the
command line builds it, the wire carries it (``hq.protocol.messages``), hq-server keeps it in
memory, and ``hq.db.jobs`` is the only place that maps it to the columns of the jobs table.

Two kinds of checks, on purpose:
- the *type* (field types and ranges, in the annotations) is checked by msgspec whenever a
  frame is decoded, by every daemon, so nothing ill-typed gets past any boundary;
- ``JobSpec.validate`` (the semantic checks, with messages that name the option at fault) runs
  where a spec enters hq: in the command line (good errors early), in the user-server and in
  hq-server, through ``Submit``'s decode (hq-server relies on no user-server's checks: any
  user can run one). The exec-server checks the type and the signature only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Annotated

import msgspec

from hq import array_indexes
from hq.errors import UsageError

DEFAULT_SHELL = "/bin/sh"
# Like Slurm's slurm-%j.out: in the submit directory, named after the job id.
DEFAULT_STDOUT = "hq-%j.out"
DEFAULT_STDERR = "hq-%j.err"
MAX_COMMAND_BYTES = 128 * 1024
MAX_PATH = 4096
SIGNATURE_VERSION = 2
INT32_MAX = 2**31 - 1
MAX_RETRIES = 100
# excluded_hosts is stored as one comma-separated column of this width
EXCLUDED_HOSTS_WIDTH = 1024

Positive32 = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
PathText = Annotated[str, msgspec.Meta(max_length=MAX_PATH)]
HostNameText = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class InvalidSpec(UsageError, ValueError):
    """A spec that fails ``validate``; a ValueError too, so that a decode reports it with the
    place in the frame (``... - at `$.jobs[3]```)."""


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
              omit_defaults=True):
    """One job as submitted. Paths may hold %j (job id) and %a (array index)."""

    command: Annotated[str, msgspec.Meta(max_length=MAX_COMMAND_BYTES)]
    cwd: PathText
    shell: PathText = DEFAULT_SHELL
    name: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    cores: Positive32 = 1
    memory_mb: Positive32 | None = None
    priority: Annotated[int, msgspec.Meta(ge=-INT32_MAX, le=INT32_MAX)] = 0
    group: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    info_text: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    time_limit_s: Positive32 | None = None
    estimated_time_s: Positive32 | None = None
    estimated_memory_mb: Positive32 | None = None
    stdout: PathText = DEFAULT_STDOUT
    stderr: PathText = DEFAULT_STDERR
    log_path: PathText | None = None
    excluded_hosts: Annotated[tuple[HostNameText, ...], msgspec.Meta(max_length=256)] = ()
    requeue: bool = True
    retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)] = 0
    constraint: Annotated[str, msgspec.Meta(max_length=255)] | None = None   # host features
    gpus: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    array_index: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] | None = None
    # a whole array signed at once (hq.array_indexes): its index set, in every element's spec
    array_indexes: Annotated[str, msgspec.Meta(min_length=1, max_length=array_indexes.MAX_TEXT)
                             ] | None = None
    signature: Annotated[str, msgspec.Meta(max_length=64)] | None = None   # the column's width

    def elements(self, indexes: Sequence[int] | None = None) -> list[JobSpec]:
        """The specs of the elements of an array signed as a whole (this spec, with
        ``array_indexes`` and no index), in id order: all of them, or those at ``indexes``
        (already expanded, a part of them); their strings are this spec's."""
        replace = msgspec.structs.replace
        if indexes is None:
            indexes = array_indexes.expand(self.array_indexes or "")
        return [replace(self, array_index=i) for i in indexes]

    def validate(self) -> None:
        """Raise InvalidSpec naming the option at fault: the semantic checks of a spec."""
        if not self.command.strip():
            raise InvalidSpec("the command is empty")
        if len(_utf8(self.command, "the command")) > MAX_COMMAND_BYTES:
            raise InvalidSpec(f"the command is longer than {MAX_COMMAND_BYTES} bytes")
        for option, text in (("--cwd", self.cwd), ("--shell", self.shell),
                             ("--name", self.name), ("-g/--group", self.group),
                             ("-i/--info-text", self.info_text), ("-o/--stdout", self.stdout),
                             ("-O/--stderr", self.stderr), ("-l/--logfile", self.log_path),
                             *(("-E/--excludeHosts", h) for h in self.excluded_hosts)):
            if text is not None:
                _utf8(text, option)
        if "\0" in self.command or "\0" in self.cwd:
            raise InvalidSpec("the command or directory contains a NUL byte")
        if not os.path.isabs(self.cwd):
            raise InvalidSpec(f"--cwd must be an absolute path, not {self.cwd!r}")
        if not os.path.isabs(self.shell) or "\0" in self.shell:
            raise InvalidSpec(f"--shell must be an absolute path, not {self.shell!r}")
        if self.cores < 1:
            raise InvalidSpec(f"--slots/-c must be at least 1, not {self.cores}")
        for option, value in (("--memory", self.memory_mb), ("--time-limit", self.time_limit_s),
                              ("-t/--estimated-time", self.estimated_time_s),
                              ("-m/--estimated-memory", self.estimated_memory_mb)):
            if value is not None and not 1 <= value <= INT32_MAX:
                raise InvalidSpec(f"{option} must be from 1 to {INT32_MAX}, not {value}")
        if not -INT32_MAX <= self.priority <= INT32_MAX:
            raise InvalidSpec(f"-p/--priority must be within ±{INT32_MAX}")
        if self.constraint is not None:
            from hq.constraints import BadConstraint, parse

            try:
                parse(self.constraint)
            except BadConstraint as err:
                raise InvalidSpec(str(err)) from None
        if not 0 <= self.retries <= MAX_RETRIES:
            raise InvalidSpec(f"--retries must be from 0 to {MAX_RETRIES}, not {self.retries}")
        if self.array_index is not None and self.array_index < 0:
            raise InvalidSpec(f"array_index must not be negative, not {self.array_index}")
        if self.array_indexes is not None:
            # submitted, it is a whole array; its elements (with an index) come only from
            # hq-server, and what they may be is the user-server's check (as_signed)
            if self.array_index is not None:
                raise InvalidSpec("a spec with array_indexes is a whole array, without an "
                                  "array_index of its own")
            try:
                array_indexes.ranges(self.array_indexes)
            except array_indexes.BadIndexSet as err:
                raise InvalidSpec(f"--array {self.array_indexes}: {err}") from None
        for option, path in (("-o/--stdout", self.stdout), ("-O/--stderr", self.stderr),
                             ("-l/--logfile", self.log_path)):
            if path is not None and (not path or "\0" in path):
                raise InvalidSpec(f"{option}: the path is empty or contains a NUL byte")
        if self.name is not None and len(self.name) > 255:
            raise InvalidSpec("--name is longer than 255 characters")
        if self.group is not None and len(self.group) > 64:
            raise InvalidSpec("--group is longer than 64 characters")
        if self.info_text is not None and len(self.info_text) > 255:
            raise InvalidSpec("-i/--info-text is longer than 255 characters")
        if any(not h or "," in h for h in self.excluded_hosts):
            raise InvalidSpec("-E/--excludeHosts: a host name is empty or holds a comma")
        if len(",".join(self.excluded_hosts)) > EXCLUDED_HOSTS_WIDTH:
            raise InvalidSpec(f"-E/--excludeHosts: more than {EXCLUDED_HOSTS_WIDTH} "
                              "characters of host names")


def _utf8(text: str, what: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (undecodable bytes in argv or a file) is refused."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidSpec(f"{what} is not valid UTF-8 text") from None


def submission_digest(environment: dict[str, str], umask: int) -> str:
    """A digest of what all jobs of one submission share (environment, umask).

    The exact text is part of every signature ever made: never change it.
    """
    text = json.dumps({"environment": environment, "umask": umask}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def array_of(spec: JobSpec, index_set: str) -> list[JobSpec]:
    """What to submit to run ``spec`` once per index of ``index_set`` (``hq.array_indexes``
    text): one spec for the whole set, signed once, when the text fits its field; else one
    spec per index."""
    if len(index_set) <= array_indexes.MAX_TEXT:
        return [msgspec.structs.replace(spec, array_indexes=index_set)]
    return [msgspec.structs.replace(spec, array_index=i) for i in array_indexes.expand(index_set)]


def as_signed(spec: JobSpec) -> JobSpec | None:
    """What was signed for ``spec``: itself, or for an element of an array signed as a whole
    (``array_indexes``) the array's spec, without the element's index; None for an element
    whose index is not in the set that was signed."""
    if spec.array_indexes is None or spec.array_index is None:
        return spec
    if not array_indexes.contains(spec.array_indexes, spec.array_index):
        return None
    return msgspec.structs.replace(spec, array_index=None)


def signed_text(spec: JobSpec, owner: str, digest: str, *, database: str,
                submission_id: int) -> bytes:
    """The exact bytes a job signature covers: the whole spec (but the signature), whose it
    is, what its submission shares (``digest``), and where it belongs: the database and the
    submission (its array index is in the spec). Copied under another submission, into
    another database or with any field changed, it no longer verifies; the user-server's
    ledger refuses to hand over the same (submission, index) twice.

    Fields at their default are left out, so that a field a later hq adds leaves earlier
    signatures valid."""
    # By equality, not by msgspec's omit_defaults, which compares some defaults by identity:
    # a shell read back from the database is an equal string but another object.
    body = {encoded: list(value) if isinstance(value, tuple) else value
            for name, encoded, default in _signed_fields()
            if (value := getattr(spec, name)) != default}
    covered = [SIGNATURE_VERSION, owner, database, submission_id, body, digest]
    if any(type(value) is float for value in body.values()):
        # (no field is a float; but where one was passed, json's spelling of it is the one
        # signatures were made with: msgspec writes 1e16 where json writes 1e+16)
        return json.dumps(covered, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()
    # the same bytes as json.dumps(sort_keys, compact, ensure_ascii=False) for strings, ints,
    # bools, None and lists (tests/unit/test_protocol.py checks every code point), 10x faster
    return _encode_sorted(covered)


_encode_sorted = msgspec.json.Encoder(order="sorted").encode


@functools.cache
def _signed_fields() -> list[tuple[str, str, object]]:
    """(attribute, name in the text, default) of each signed field of JobSpec: looked up
    once, since msgspec.structs.fields evaluates the annotations at every call."""
    return [(f.name, f.encode_name, f.default) for f in msgspec.structs.fields(JobSpec)
            if f.name != "signature"]


def signed_text_v1(spec: JobSpec, owner: str, digest: str) -> bytes:
    """What a signature of protocol version 1 covered (jobs queued before an upgrade)."""
    covered = [1, owner, spec.command, spec.shell, spec.cwd, spec.stdout, spec.stderr,
               spec.log_path, spec.array_index, digest]
    return json.dumps(covered, separators=(",", ":"), ensure_ascii=False).encode()


def resolve_path(template: str, job_id: int, array_index: int | None, cwd: str,
                 array_id: int | None = None) -> str:
    """An output path with %j (job id), %a (array index) and %A (array id; the job id for a
    job of no array, as in Slurm) filled in, relative paths taken from the job's directory."""
    path = (template.replace("%j", str(job_id))
            .replace("%a", "" if array_index is None else str(array_index))
            .replace("%A", str(job_id if array_id is None else array_id)))
    return os.path.normpath(os.path.join(cwd, path))

"""How hq-client shows jobs to a person: the jobs table, one job's details, the status summary.

Input is what the user-server answers (JobInfo objects and the ``status`` reply of
doc/protocol.md); output is plain text. Times are shown in local time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hq.array_indexes import compact
from hq.cli.common import format_table, format_time
from hq.protocol.messages import ArrayLine, JobInfo, StatusReply
from hq.states import JobState

STATE_ORDER = tuple(state.value for state in JobState)
UNFINISHED_STATES = tuple(state.value for state in JobState if not state.finished)
FINISHED_STATES = frozenset(state.value for state in JobState if state.finished)
COMMAND_WIDTH = 40


def job_result(job: JobInfo) -> str:
    """The short word on how a job is doing: its pending reason, exit code or signal."""
    if job.signal:
        return f"signal {job.signal}"
    if job.exit_code is not None:
        return f"exit {job.exit_code}"
    if job.state in ("pending", "held") and job.state_reason:
        return str(job.state_reason)
    return ""


def _short(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[:width - 3] + "..."


def job_reason(job: JobInfo) -> str:
    """Why a job waits or ended as it did (its exit code when nothing else is said)."""
    if job.state_reason and (job.state in ("pending", "held") or job.state in FINISHED_STATES):
        return str(job.state_reason)
    return job_result(job)


def format_job_table(jobs: Sequence[JobInfo], *, expand: bool = False,
                     arrays: Sequence[ArrayLine] = ()) -> str:
    """One line per job: id, state, name, cores, host, submitted, reason, command; an
    array's jobs folded into one line with counts per state unless ``expand`` (``arrays``:
    lines hq-server folded already). Lines are in id order, an array at its first job's."""
    groups: dict[int, list[JobInfo]] = {}
    for job in jobs:
        if not expand and job.array_id is not None:
            groups.setdefault(job.array_id, []).append(job)
    folded = {array for array, members in groups.items() if len(members) > 1}
    lines = [*arrays, *(array_line(groups[array]) for array in folded)]
    entries = [(line.first, _folded_row(line)) for line in lines]
    entries += [(job.id, _job_row(job)) for job in jobs if job.array_id not in folded]
    entries.sort(key=lambda entry: entry[0])
    return format_table(("ID", "STATE", "NAME", "CORES", "HOST", "SUBMITTED", "REASON",
                         "COMMAND"), [row for _id, row in entries], right={3})


def _job_row(job: JobInfo) -> tuple[object, ...]:
    ident = f"{job.id}" if job.array_id is None else f"{job.id} ({job.array_id}_" \
        f"{job.array_index})"
    return (ident, job.state, job.name or "", job.cores, job.host or "",
            format_time(job.submitted_at), job_reason(job), _short(job.command, COMMAND_WIDTH))


def _folded_row(line: ArrayLine) -> tuple[object, ...]:
    return (f"{line.id}_[{line.indexes}]", counts_text({str(s): n for s, n in
                                                        line.counts.items()}),
            line.name or "", line.cores, ",".join(line.hosts) + ("..." if line.more_hosts
                                                                  else ""),
            format_time(line.submitted_at), line.reason or "", _short(line.command,
                                                                     COMMAND_WIDTH))


def array_line(members: Sequence[JobInfo]) -> ArrayLine:
    """The line of an array's jobs (in id order) that came one by one, as hq-server folds
    one (``hq.server.views.array_line``): why its first waiting job waits."""
    from collections import Counter

    first = members[0]
    hosts = sorted({m.host for m in members if m.host and m.state in ("dispatched", "running")})
    waiting = next((m for m in members if m.state in ("pending", "held")), None)
    return ArrayLine(id=first.array_id or first.id, first=first.id,
                     indexes=compact(m.array_index for m in members if m.array_index is not None),
                     counts=dict(Counter(m.state for m in members)), name=first.name,
                     cores=first.cores, hosts=hosts[:4], more_hosts=len(hosts) > 4,
                     submitted_at=first.submitted_at,
                     reason=None if waiting is None else job_reason(waiting),
                     command=first.command)


def format_duration(seconds: float | None) -> str:
    """``2h 05m 03s`` style, for time limits; ``-`` for none."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _state_line(job: JobInfo) -> str:
    state = str(job.state)
    if job.host and state in ("dispatched", "running"):
        return f"{state} on {job.host}"
    if state in ("pending", "held") and job.state_reason:
        return f"{state} ({job.state_reason})"
    if state in FINISHED_STATES and job.state_reason:
        host = f" on {job.host}" if job.host else ""
        return f"{state}{host} ({job.state_reason})"
    result = job_result(job)
    if result and state in FINISHED_STATES:
        host = f" on {job.host}" if job.host else ""
        return f"{state}{host}: {result}"
    return state


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def format_job_details(job: JobInfo) -> str:
    """Every field of one job, one ``key: value`` per line, for ``show`` and ``details``."""
    memory = job.memory_mb
    array = ""
    if job.array_index is not None:
        array = (f"{job.array_id}_{job.array_index} (array {job.array_id}, index "
                 f"{job.array_index})" if job.array_id else f"index {job.array_index}")
    waits = ", ".join(f"{d.kind}:{d.id} ({d.state})" for d in job.dependencies)
    runs = "; ".join(f"{a.attempt}: {a.state}" + (f" ({a.reason})" if a.reason else "")
                     for a in job.attempts)
    cpu = job.cpu_time_s
    fields: list[tuple[str, object]] = [
        ("state", _state_line(job)),
        ("owner", job.owner),
        ("name", job.name),
        ("command", job.command),
        ("shell", job.shell),
        ("directory", job.cwd),
        ("stdout", job.stdout),
        ("stderr", job.stderr),
        ("log file", job.log_path),
        ("cores", job.cores),
        ("memory", None if memory is None else f"{memory} MiB"),
        ("priority", job.priority),
        ("group", job.group),
        ("info", job.info_text),
        ("array", array or None),
        ("dependencies", waits or None),
        ("retries", f"{job.retry_count} of {job.retries}" if job.retries else None),
        ("attempts", runs or None),
        ("resubmit of", job.resubmit_of),
        ("time limit", format_duration(job.time_limit_s)),
        ("excluded hosts", ", ".join(job.excluded_hosts or ()) or None),
        ("constraint", job.constraint),
        ("gpus", f"{job.gpus}" + (f" ({job.gpu_ids})" if job.gpu_ids else "")
         if job.gpus else None),
        ("requeue", "yes" if job.requeue else "no"),
        ("restarts", job.restart_count),
        ("submitted", format_time(job.submitted_at)),
        ("started", format_time(job.started_at)),
        ("ended", format_time(job.ended_at)),
        ("pid", job.pid),
        ("exit", job_result(job) if job.state in FINISHED_STATES
         else None),
        ("cpu time", None if cpu is None else f"{cpu:.2f} s"),
        ("peak memory", None if job.max_rss_kb is None else _mib(job.max_rss_kb)),
    ]
    shown = [(key, value) for key, value in fields if value not in (None, "", "-")]
    width = max(len(key) for key, _ in shown) + 1
    lines = [f"job {job.id}"]
    lines += [f"  {key + ':':{width}} {value}" for key, value in shown]
    return "\n".join(lines)


def counts_text(counts: Mapping[str, int]) -> str:
    """``{"running": 2, "pending": 5}`` -> ``5 pending, 2 running`` (``none`` when empty)."""
    ordered = [s for s in STATE_ORDER if counts.get(s)]
    ordered += sorted(s for s in counts if s not in STATE_ORDER and counts[s])
    return ", ".join(f"{counts[s]} {s}" for s in ordered) or "none"


def format_counts_table(label: str, counts: Mapping[str, Mapping[str, int]]) -> str:
    """Job counts per user (``label`` heads the first column) and state, states that occur
    as columns."""
    states = [s for s in STATE_ORDER if any(c.get(s) for c in counts.values())]
    states += sorted({s for c in counts.values() for s in c if c[s]} - set(STATE_ORDER))
    rows = [(name, *(by_state.get(s, 0) for s in states))
            for name, by_state in sorted(counts.items())]
    return format_table((label, *(s.upper() for s in states)), rows,
                        right=set(range(1, len(states) + 1)))


def format_status(reply: StatusReply) -> str:
    """The ``status`` reply: own jobs by state, others' as counts per owner, the cluster."""
    lines = [f"Your jobs ({reply.user}): {counts_text(reply.mine)}"]
    if reply.usage_core_hours is not None:
        lines.append(f"Your fair-share usage: {reply.usage_core_hours:.2f} core-hours "
                     "(decayed; less goes first)")
    if reply.others:
        table = format_counts_table("USER", reply.others)
        lines += ["", "Other users' jobs:", *(f"  {line}" for line in table.splitlines())]
    cluster = reply.cluster
    active = "active" if cluster.active else "INACTIVE (no new jobs start)"
    lines += ["", f"Cluster: {active}, {cluster.hosts_up} of {cluster.hosts} hosts up, "
                  f"{cluster.cores_busy} of {cluster.cores} cores busy"]
    return "\n".join(lines)

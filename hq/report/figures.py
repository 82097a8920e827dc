"""The usage report's plots, drawn with matplotlib's Agg backend into PNG bytes.

matplotlib is imported inside ``draw`` only, so hq-admin's other commands never pay for it.
Each figure has a stable name (its --png file name and its anchor in the HTML page).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hq.report.data import Report

DPI = 100
SIZE = (9.0, 4.0)           # inches: 900 x 400 pixels at DPI
MAX_BARS = 12               # failure reasons drawn; the table under the plot lists them all
MAX_USERS = 10              # users drawn one by one; the others are summed as "others"
MAX_LINES = 10              # hosts drawn one by one; the others are summed


@dataclass(frozen=True)
class Figure:
    """One plot: its file-name stem, its title and the PNG image."""

    name: str
    title: str
    png: bytes


FIGURES = (
    ("cores-busy", "Cores busy per host"),
    ("user-jobs", "Jobs per user per day (by the day they ended)"),
    ("user-core-hours", "Core-hours per user per day (by the day they ended)"),
    ("wait-times", "Waiting time (start - submit) of jobs that started"),
    ("run-times", "Run time (end - start) of jobs that ended"),
    ("failures", "Failed jobs by reason"),
)


def draw(report: Report) -> list[Figure]:
    """Every plot of ``report``, in FIGURES order."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure as MplFigure

    painters: dict[str, Callable[[Any, Report], None]] = {
        "cores-busy": _cores_busy, "user-jobs": _user_jobs,
        "user-core-hours": _user_core_hours, "wait-times": _wait_times,
        "run-times": _run_times, "failures": _failures}
    drawn = []
    for name, title in FIGURES:
        # a Figure made directly (not through pyplot) keeps no global state between reports
        fig = MplFigure(figsize=SIZE, dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        ax.set_title(title)
        painters[name](ax, report)
        out = io.BytesIO()
        fig.savefig(out, format="png", metadata={"Software": None})
        drawn.append(Figure(name=name, title=title, png=out.getvalue()))
    return drawn


def _nothing(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _cores_busy(ax: Any, report: Report) -> None:
    hosts = sorted((h for h in report.hosts if h.core_hours > 0),
                   key=lambda h: (-h.core_hours, h.host))
    if not hosts:
        _nothing(ax, "no job ran in this window")
        return
    for host in hosts[:MAX_LINES]:
        label = host.host if host.cores is None else f"{host.host} ({host.cores} cores)"
        ax.step(report.bin_starts, host.busy, where="post", label=_text(label))
    if len(hosts) > MAX_LINES:
        rest = [sum(values) for values in zip(*(h.busy for h in hosts[MAX_LINES:]),
                                              strict=True)]
        ax.step(report.bin_starts, rest, where="post",
                label=f"{len(hosts) - MAX_LINES} other hosts together")
    ax.set_ylabel(f"mean cores busy per {_width_text(report.bin_s)}")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small", ncols=2)
    ax.figure.autofmt_xdate()


def _by_user(ax: Any, report: Report, value: str, ylabel: str) -> None:
    if not report.user_days:
        _nothing(ax, "no job ended in this window")
        return
    days = sorted({d.day for d in report.user_days})
    owners = {d.owner for d in report.user_days}
    # the same users, in the same order (so the same colours), on both per-user plots: the
    # MAX_USERS with the most jobs
    shown = sorted(sorted(owners, key=lambda u: (-_jobs_of(report, u), u))[:MAX_USERS])
    series: dict[str, list[float]] = {u: [0.0] * len(days) for u in shown}
    if len(owners) > len(shown):
        series["others"] = [0.0] * len(days)
    for d in report.user_days:
        key = d.owner if d.owner in shown else "others"
        series[key][days.index(d.day)] += d.jobs if value == "jobs" else d.core_hours
    bottom = [0.0] * len(days)
    for owner, values in series.items():
        ax.bar(days, values, bottom=bottom, label=_text(owner))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize="small", ncols=2)
    ax.tick_params(axis="x", labelrotation=30)


def _jobs_of(report: Report, owner: str) -> int:
    """How many jobs of ``owner`` ended in the report's window."""
    return sum(d.jobs for d in report.user_days if d.owner == owner)


def _user_jobs(ax: Any, report: Report) -> None:
    _by_user(ax, report, "jobs", "jobs")
    _whole_numbers(ax.yaxis)


def _user_core_hours(ax: Any, report: Report) -> None:
    _by_user(ax, report, "core_hours", "core-hours (cores x run time)")


def _durations(ax: Any, labels: list[str], counts: list[int], empty: str) -> None:
    if not any(counts):
        _nothing(ax, empty)
        return
    ax.bar(labels, counts)
    ax.set_ylabel("jobs")
    _whole_numbers(ax.yaxis)
    ax.tick_params(axis="x", labelsize="small")


def _wait_times(ax: Any, report: Report) -> None:
    _durations(ax, report.wait.labels, report.wait.counts, "no job started in this window")


def _run_times(ax: Any, report: Report) -> None:
    _durations(ax, report.run.labels, report.run.counts, "no job ended in this window")


def _failures(ax: Any, report: Report) -> None:
    if not report.failures:
        _nothing(ax, "no job failed in this window")
        return
    shown = report.failures[:MAX_BARS][::-1]   # the most frequent on top
    ax.barh([_short(f.reason) for f in shown], [f.jobs for f in shown])
    ax.set_xlabel("failed jobs")
    _whole_numbers(ax.xaxis)
    ax.tick_params(axis="y", labelsize="small")


def _whole_numbers(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _short(text: str, limit: int = 50) -> str:
    return _text(text if len(text) <= limit else text[:limit - 1] + "…")


def _text(text: str) -> str:
    # matplotlib reads $...$ as mathematics; a reason or a name is plain text
    return text.replace("$", r"\$")


def _width_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"

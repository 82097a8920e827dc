"""The usage report as one self-contained HTML page (images as data: URIs, inline CSS, no
script, nothing fetched from anywhere), and the files it is written to.

Every plot has a table of its numbers under it, so the page reads without images too.
Files are written through a temporary file in the same directory and renamed into place: a
link planted at the target is replaced, never followed.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hq.errors import UsageError
from hq.report.data import Report
from hq.report.figures import Figure

CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
details summary { cursor: pointer; color: #555; }
"""


def html_page(report: Report, figures: Sequence[Figure], generated: dt.datetime) -> str:
    """The whole page for ``report`` with its drawn ``figures``."""
    tables = _tables(report)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        # no script and nothing from elsewhere: images from data: URIs only
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'img-src data:; style-src \'unsafe-inline\'">',
        f"<title>hq usage report {_day(report.since)} to {_day(report.until)}</title>",
        f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>hq usage report</h1><p>From {_when(report.since)} to {_when(report.until)} "
        f"(UTC), made {_when(generated)} from the report views.</p>"]
    for figure in figures:
        data = base64.b64encode(figure.png).decode("ascii")
        title = html.escape(figure.title)
        parts += [f'<section class="figure" id="{figure.name}">', f"<h2>{title}</h2>",
                  f'<img alt="{title}" src="data:image/png;base64,{data}">',
                  tables[figure.name], "</section>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _tables(report: Report) -> dict[str, str]:
    busy_header = ["bin start (UTC)", *(h.host for h in report.hosts)]
    busy_rows = [[_when(t), *(f"{h.busy[i]:g}" for h in report.hosts)]
                 for i, t in enumerate(report.bin_starts)
                 if any(h.busy[i] for h in report.hosts)]
    users = [[d.day, d.owner, str(d.jobs), f"{d.core_hours:.2f}"] for d in report.user_days]
    return {
        "cores-busy": _table(busy_header, busy_rows, f"mean cores busy per bin of "
                             f"{report.bin_s} s (bins with no job left out)"),
        "user-jobs": _table(["day", "user", "jobs", "core-hours"], users, "per user and day"),
        "user-core-hours": _table(["day", "user", "jobs", "core-hours"], users,
                                  "per user and day"),
        "wait-times": _histogram_table(report.wait.labels, report.wait.counts,
                                       report.wait.median_s),
        "run-times": _histogram_table(report.run.labels, report.run.counts,
                                      report.run.median_s),
        "failures": _table(["reason", "jobs"], [[f.reason, str(f.jobs)]
                                                for f in report.failures], "failed jobs"),
    }


def _histogram_table(labels: list[str], counts: list[int], median: float | None) -> str:
    note = "jobs per bin" + ("" if median is None else f"; median {median:g} s")
    return _table(["bin", "jobs"], [[label, str(n)] for label, n in
                                    zip(labels, counts, strict=True)], note)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], summary: str) -> str:
    if not rows:
        return f"<p>{html.escape(summary)}: none</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                     for row in rows)
    return (f"<details open><summary>{html.escape(summary)}</summary>"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
            "</details>")


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def _day(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d")


def write_file(path: Path, data: bytes, option: str) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it, mode 0644 less
    the umask. A directory (or a link to one) at ``path`` is refused."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: no directory {parent}")
    umask = os.umask(0)
    os.umask(umask)
    try:
        fd, temp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot write there ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644 & ~umask)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def png_directory(path: Path) -> Path:
    """``path`` as the directory of --png: made 0755 when missing; a link or a directory of
    another user is refused (the files would land where the caller did not mean)."""
    try:
        path.mkdir(mode=0o755, parents=True)
    except FileExistsError:
        pass
    except OSError as err:
        raise UsageError(f"--png {path}: cannot make the directory ({err.strerror})") from None
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(f"--png {path}: is a symbolic link; give the directory itself")
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--png {path}: not a directory")
    if info.st_uid != os.geteuid():
        raise UsageError(f"--png {path}: belongs to another user")
    return path


def write_pngs(directory: Path, figures: Sequence[Figure]) -> list[Path]:
    """One NAME.png per figure in ``directory`` (see png_directory); the paths written."""
    written = []
    for figure in figures:
        target = directory / f"{figure.name}.png"
        write_file(target, figure.png, "--png")
        written.append(target)
    return written

"""hq-admin report: the usage report of a time window as a self-contained HTML page, PNG
files or JSON, read straight from the database's report views (hq-server need not run).

It opens the database the way hq-dbadmin does (etc/hq-db.cfg, or the embedded SQLite file),
as the admin, and reads only the ``report_*`` views; hq.report holds the work.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import click

from hq.cli.common import json_option, print_json, say
from hq.errors import DatabaseError, UsageError


@click.command("report")
@click.option("--since", default="7d", show_default=True, metavar="DURATION|DATE",
              help="From this long ago (7d, 12h) or this day (2026-11-01).")
@click.option("--until", "until_text", metavar="DURATION|DATE",
              help="Up to this long ago or this day (default: now).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write the report as one HTML page (images embedded).")
@click.option("--png", "png_dir", type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Write one PNG per plot into DIR (made 0755 if missing).")
@json_option
def report_command(since: str, until_text: str | None, html_path: Path | None,
                   png_dir: Path | None, as_json: bool) -> None:
    """A usage report: cores busy per host over time, jobs and core-hours per user per day,
    waiting and run time distributions, failed jobs by reason. Give at least one of --html,
    --png and --json. Every number comes from the report views (doc/admin-guide.md has the
    SQL behind each plot).

    \b
    Examples:
      hq-admin report --html usage.html                 # the last 7 days
      hq-admin report --since 2026-11-01 --until 2026-12-01 --png plots/
      hq-admin report --since 24h --json                # the numbers behind each plot
    """
    from hq.cli.admin_hosts import _point

    if html_path is None and png_dir is None and not as_json:
        raise UsageError("report: give --html FILE, --png DIR or --json (or several)")
    now = time.time()
    start = _point(since, now, "--since")
    end = now if until_text is None else _point(until_text, now, "--until")
    if end <= start:
        raise UsageError("--until must be after --since")
    if png_dir is not None:
        from hq.report.page import png_directory

        png_dir = png_directory(png_dir)
    report = _load(dt.datetime.fromtimestamp(start, dt.UTC),
                   dt.datetime.fromtimestamp(end, dt.UTC), dt.datetime.fromtimestamp(now, dt.UTC))
    if as_json:
        print_json(report.as_json())
    if html_path is None and png_dir is None:
        return
    from hq.report.figures import draw
    from hq.report.page import html_page, write_file, write_pngs

    figures = draw(report)
    if html_path is not None:
        page = html_page(report, figures, dt.datetime.fromtimestamp(now, dt.UTC))
        write_file(html_path, page.encode("utf-8"), "--html")
        say(f"report: wrote {html_path}")
    if png_dir is not None:
        written = write_pngs(png_dir, figures)
        say(f"report: wrote {len(written)} PNG files into {png_dir}")


def _load(since: dt.datetime, until: dt.datetime, now: dt.datetime):  # type: ignore[no-untyped-def]
    from hq.config import Installation, load_database
    from hq.db.engine import create_engine, database_errors, read_connection
    from hq.db.revision import require_head
    from hq.report.data import load_report

    config = load_database(Installation.locate())
    if config.url is None and config.dialect == "sqlite" and config.sqlite_path is not None \
            and not Path(config.sqlite_path).exists():
        # opening it would create an empty database file, and a report only reads
        raise DatabaseError(f"no database at {config.sqlite_path}: run "
                            "'hq-dbadmin --create-tables --add-standard-entries'")
    with database_errors(config):
        engine = create_engine(config)
        try:
            # the views of an older revision lack columns: say which command upgrades it
            require_head(engine)
            with read_connection(engine) as conn:
                return load_report(conn, since, until, now)
        finally:
            engine.dispose()

"""hq-dbadmin: create, upgrade, inspect and load hq's database (the admin's tool).

Reads etc/hq-db.cfg (or uses the embedded SQLite default), etc/users and etc/cluster.tab of the
installation named by $HQPATH. Every change is one transaction: a bad line in a config file
writes nothing.
"""

from __future__ import annotations

import datetime as dt
import sys

import click

from hq.cli.common import (
    CONTEXT_SETTINGS,
    json_option,
    print_json,
    run_program,
    say,
    verbosity_options,
)
from hq.config import DatabaseConfig, Installation, load_cluster, load_database, load_users
from hq.errors import DatabaseError, UsageError
from hq.program import version_option

PROG = "hq-dbadmin"


class Database:
    """The installation's database config with its engine, opened on first use."""

    def __init__(self, inst: Installation) -> None:
        self.inst = inst
        self.config: DatabaseConfig = load_database(inst)
        self._engine = None

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        if self._engine is None:
            from hq.db.engine import create_engine

            self._engine = create_engine(self.config)
        return self._engine

    def close(self) -> None:
        """Let go of the engine's connections (the command is done with the database)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def errors(self):  # type: ignore[no-untyped-def]
        from hq.db.engine import database_errors

        return database_errors(self.config)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@click.group(context_settings=CONTEXT_SETTINGS, invoke_without_command=True,
             no_args_is_help=True)
@version_option
@click.option("-C", "--create-tables", is_flag=True,
              help="Create hq's schema (an alembic upgrade to the newest revision).")
@click.option("-a", "--add-standard-entries", is_flag=True,
              help="Load etc/users and etc/cluster.tab; again after editing them to apply "
                   "the changes (removed hosts and users are retired, not deleted).")
@click.option("--drop-tables", is_flag=True,
              help="Drop every hq table and view: all jobs are lost. Asks first.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("-s", "--show-database-configuration", "show", is_flag=True,
              help="Show which database hq uses (password masked) and its schema revision.")
@json_option
@verbosity_options
@click.pass_context
def cli(ctx: click.Context, create_tables: bool, add_standard_entries: bool,
        drop_tables: bool, yes: bool, show: bool, as_json: bool) -> None:
    """Set up and maintain hq's database.

    \b
    Examples:
    First installation (after editing etc/users and etc/cluster.tab):
      hq-dbadmin --create-tables --add-standard-entries      (short: -C -a)
    After editing etc/cluster.tab or etc/users:
      hq-dbadmin -a
    After installing a newer hq:
      hq-dbadmin upgrade
    Where is my database, and is it current?
      hq-dbadmin -s
    """
    inst = Installation.locate()
    db = Database(inst)
    ctx.obj = db
    ctx.call_on_close(db.close)
    if drop_tables and (create_tables or add_standard_entries):
        raise UsageError("--drop-tables cannot be combined with --create-tables or "
                         "--add-standard-entries")
    report: dict[str, object] = {}
    if show:
        report["database"] = _show(db, as_json)
    if drop_tables:
        report["dropped"] = _drop(db, yes)
    if create_tables:
        report["schema"] = _create(db)
    if add_standard_entries:
        report["changes"] = _add_standard_entries(db, as_json)
    if as_json and report and ctx.invoked_subcommand is None:
        print_json(report)


def _show(db: Database, as_json: bool) -> dict[str, object]:
    from hq.db import migrate

    cfg = db.config
    info: dict[str, object] = {"dialect": cfg.dialect, "database": cfg.describe(),
                               "source": cfg.source}
    try:
        with db.errors():
            info["schema"] = migrate.schema_status(db.engine).describe()
    except DatabaseError as err:
        info["schema"] = f"unavailable: {err}"
    if not as_json:
        for key in ("dialect", "database", "source", "schema"):
            click.echo(f"{key + ':':10} {info[key]}")
    return info


def _create(db: Database) -> str:
    from hq.db import migrate

    with db.errors():
        status = migrate.schema_status(db.engine)
        if status.at_head:
            say(f"schema already at the newest revision {status.head} in {db.config.describe()}")
            return status.describe()
        if status.current is None and (tables := migrate.unexpected_tables(db.engine)):
            raise DatabaseError(
                f"{db.config.describe()} already holds tables hq did not make "
                f"({', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}): "
                "refusing to create hq's schema there; use an empty database")
        migrate.upgrade(db.engine)
        done = migrate.schema_status(db.engine)
    verb = "created" if status.current is None else f"upgraded from {status.current} to"
    say(f"schema {verb} revision {done.head} in {db.config.describe()}")
    return done.describe()


def _add_standard_entries(db: Database, as_json: bool) -> list[str]:
    from hq.db import migrate
    from hq.db.engine import run_in_transaction
    from hq.db.events import record_events
    from hq.db.hosts import sync_hosts
    from hq.db.settings import add_missing_settings
    from hq.db.users import sync_users

    # Both files are read completely before anything is written: a bad line writes nothing.
    users = load_users(db.inst.users_file)
    cluster = load_cluster(db.inst.cluster_tab)
    now = _now()

    def load(conn):  # type: ignore[no-untyped-def]
        user_changes = sync_users(conn, users, now)
        host_changes = sync_hosts(conn, cluster, now)
        setting_changes = add_missing_settings(conn, now)
        changes = [*user_changes, *host_changes, *setting_changes]
        record_events(conn, [change.to_event(now) for change in changes])
        return [str(change) for change in changes]

    with db.errors():
        migrate.require_head(db.engine)
        changes = run_in_transaction(db.engine, load, what="loading standard entries")
    if not as_json:
        for line in changes:
            click.echo(line)
        if not changes:
            say(f"no changes: the database matches {db.inst.users_file} and "
                f"{db.inst.cluster_tab}")
    return changes


def _drop(db: Database, yes: bool) -> bool:
    from hq.db import migrate

    question = (f"Drop every hq table and view in {db.config.describe()}? "
                "All jobs and history are lost.")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("--drop-tables needs confirmation: run it at a terminal or add "
                             "--yes")
        click.confirm(question, abort=True, err=True)
    with db.errors():
        if migrate.current_revision(db.engine) is None:
            say(f"nothing to drop: no hq schema in {db.config.describe()}")
            return False
        migrate.drop_schema(db.engine)
    say(f"dropped hq's schema in {db.config.describe()}")
    return True


@cli.command()
@click.argument("revision", default="head")
@click.pass_obj
def upgrade(db: Database, revision: str) -> None:
    """Upgrade the schema to REVISION (default: the newest).

    Example: hq-dbadmin upgrade
    """
    from hq.db import migrate

    with db.errors():
        before = migrate.current_revision(db.engine)
        migrate.upgrade(db.engine, revision)
        after = migrate.schema_status(db.engine)
    if before == after.current:
        say(f"schema already at {after.describe()}")
    else:
        say(f"schema upgraded from {before or 'nothing'} to {after.describe()}")


@cli.command()
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def downgrade(db: Database, revision: str, yes: bool) -> None:
    """Downgrade the schema to REVISION ('base' removes it); may drop data.

    Example: hq-dbadmin downgrade base --yes
    """
    from hq.db import migrate

    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("downgrade needs confirmation: run it at a terminal or add --yes")
        click.confirm(f"Downgrade {db.config.describe()} to {revision}? Data may be lost.",
                      abort=True, err=True)
    with db.errors():
        migrate.downgrade(db.engine, revision)
        say(f"schema now at {migrate.schema_status(db.engine).describe()}")


@cli.command()
@json_option
@click.pass_obj
def current(db: Database, as_json: bool) -> None:
    """Print the schema revision of the database.

    Example: hq-dbadmin current
    """
    from hq.db import migrate

    with db.errors():
        status = migrate.schema_status(db.engine)
    if as_json:
        print_json({"current": status.current, "head": status.head, "at_head": status.at_head})
    else:
        click.echo(status.describe())


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              metavar="N", help="Name at most N damaged job rows.")
@json_option
@click.pass_obj
def check(db: Database, limit: int, as_json: bool) -> int:
    """Check the database: the schema is current and every job row agrees with its events.

    Exits 6 with the command to run when the schema is not at the newest revision, and 1,
    naming each job, when a job row disagrees with the last event recorded for that job
    (its state, or an end time that a finished job lacks or an unfinished one has).

    
    Examples:
      hq-dbadmin check && hq-server --daemon
      hq-dbadmin check --json
    """
    from hq.db import migrate
    from hq.db.consistency import job_row_mismatches

    with db.errors():
        migrate.require_head(db.engine)
        with db.engine.connect() as conn:
            mismatches, total = job_row_mismatches(conn, limit=limit)
    if as_json:
        print_json({"schema": migrate.head_revision(), "job_rows_disagreeing": total,
                    "jobs": [{"id": m.job_id, "row_state": str(m.row_state),
                              "event_state": m.event_state, "problem": m.describe()}
                             for m in mismatches]})
    else:
        for mismatch in mismatches:
            click.echo(mismatch.describe())
    if total:
        more = f" (the first {len(mismatches)} listed)" if total > len(mismatches) else ""
        click.echo(f"{PROG}: error: {total} job row(s) disagree with the event log{more}",
                   err=True)
        return 1
    say(f"schema at the newest revision {migrate.head_revision()}; every job row agrees "
        "with its events")
    return 0


def main() -> None:
    """Entry point of hq-dbadmin."""
    sys.exit(run_program(cli, PROG))


if __name__ == "__main__":
    main()

"""What every hq command line program shares: options, output and the one error exit.

Every program is started through ``run_program``: it turns an HqError or a click usage error
into ``<program>: error: <one line>`` on stderr with the documented exit code, so no program
prints a traceback at a user for a known failure. Data goes to stdout, messages to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import click

from hq.errors import HqError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def json_option(func: F) -> F:
    """``--json``: print machine-readable output (one JSON document on stdout)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout, for scripts.")(func)


def verbosity_options(func: F) -> F:
    """``-v/--verbose`` and ``-q/--quiet``, applied to the logging of this process."""
    func = click.option("-q", "--quiet", is_flag=True, callback=_set_quiet, expose_value=False,
                        is_eager=True, help="Only print errors.")(func)
    return click.option("-v", "--verbose", count=True, callback=_set_verbose,
                        expose_value=False, is_eager=True,
                        help="Say more (repeat for debug output).")(func)


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    import logging  # here, not at the top: a plain client call should not pay for it

    level = logging.WARNING if value == 0 else logging.INFO if value == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        import logging

        logging.getLogger().setLevel(logging.ERROR)
        ctx.meta["hq.quiet"] = True


def is_quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("hq.quiet"))


def say(message: str) -> None:
    """A message for the person at the terminal (stderr), unless -q."""
    if not is_quiet():
        click.echo(message, err=True)


def print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 right: Collection[int] = ()) -> str:
    """An aligned plain-text table: two spaces between columns, columns in ``right``
    right-aligned (numbers), None shown as ``-``; no trailing blanks."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(width) if i in right else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_time(seconds: float | None) -> str:
    """A wire time (UTC seconds since the epoch) in local time, ``YYYY-MM-DD HH:MM:SS``."""
    if seconds is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def run_program(command: click.Command, prog: str,
                args: list[str] | None = None) -> int:
    """Run a click command as program ``prog`` and return its exit code; errors are one line."""
    try:
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
    except HqError as err:
        click.echo(f"{prog}: error: {err}", err=True)
        return err.exit_code
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help() if err.ctx else str(err), err=True)
        return 2
    except click.UsageError as err:
        hint = f" (try '{prog} --help')" if err.ctx is not None else ""
        click.echo(f"{prog}: error: {err.format_message()}{hint}", err=True)
        return err.exit_code
    except click.ClickException as err:
        click.echo(f"{prog}: error: {err.format_message()}", err=True)
        return err.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # stdout was closed early (``hq-client jobs | head``): not an error worth a traceback.
        # Point stdout at /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result if isinstance(result, int) else 0

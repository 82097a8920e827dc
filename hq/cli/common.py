"""What every hq command line program shares: options and output.

Every program is started through ``hq.program.run_program`` (re-exported here), which turns an
error into ``<program>: error: <one line>`` with the documented exit code. Data goes to stdout,
messages to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import click

from hq.program import CONTEXT_SETTINGS, run_program

F = TypeVar("F", bound=Callable[..., Any])



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
    """``data`` (plain values, or messages, which lose their ``type`` and ``rid``) as one
    JSON document on stdout."""
    import json

    import msgspec

    click.echo(json.dumps(_without_envelope(msgspec.to_builtins(data)), indent=2,
                          sort_keys=True, default=str))


def _without_envelope(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_envelope(v) for k, v in data.items() if k not in ("type", "rid")}
    if isinstance(data, list):
        return [_without_envelope(v) for v in data]
    return data


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

__all__ = ["CONTEXT_SETTINGS", "run_program"]

"""How every hq program starts and fails: the click settings and the one error exit.

``run_program`` turns an HqError or a click usage error into ``<program>: error: <one line>``
on stderr with the documented exit code, so no program, command or daemon, prints a traceback
at a person for a known failure. The daemons use it too, so it lives here and not in hq.cli.
"""

from __future__ import annotations

import os
import sys

import click

from hq.errors import HqError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def version_option(func: click.Command) -> click.Command:
    """``--version``: the program's name and hq's version (no package metadata lookup, which
    would cost every call a scan of site-packages)."""
    from hq import __version__

    return click.version_option(__version__, "--version", message="%(prog)s (hq) %(version)s",
                                help="Print hq's version and exit.")(func)


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

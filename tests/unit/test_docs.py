"""The documentation builds without a warning and says what the code says.

Builds doc/ as `make doc` does (sphinx-build -W --keep-going, html and man) into a temporary
directory, then checks the generated references against the code they come from: every option
and command that a program's --help prints is on its reference page, and every table and column
of hq.db.model.metadata (and every report view) is in the database reference.
"""

from __future__ import annotations

import html
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from fixtures.mariadb import skip_or_fail

from hq.db import model

REPO = Path(__file__).resolve().parents[2]
SPHINX_BUILD = Path(sys.executable).parent / "sphinx-build"   # hqVE/bin/sphinx-build
PROGRAMS = {   # program: its click command, as doc/reference/<program>.md documents it
    "hq-submit": "hq.cli.submit:cli",
    "hq-client": "hq.cli.client:cli",
    "hq-admin": "hq.cli.admin:cli",
    "hq-dbadmin": "hq.cli.dbadmin:cli",
    "hq-server": "hq.server.main:cli",
}
HELP_OPTIONS = {"-h", "--help"}   # sphinx-click leaves out click's own help option
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Built:
    html: Path
    man: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """doc/ built once for this module, html and man side by side (about 5 s)."""
    if not SPHINX_BUILD.exists():
        skip_or_fail(f"{SPHINX_BUILD} is missing: `make` installs Sphinx from "
                     "hqConf/requirements.txt")
    out = tmp_path_factory.mktemp("doc")
    builds = {}
    for builder in ("html", "man"):
        builds[builder] = subprocess.Popen(
            [str(SPHINX_BUILD), "-E", "-W", "--keep-going", "-q", "-b", builder,
             "-d", str(out / f"doctrees-{builder}"), str(REPO / "doc"), str(out / builder)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for builder, process in builds.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"sphinx-build -b {builder} failed:\n{output}"
        assert "WARNING" not in output and "ERROR" not in output, output
    return Built(html=out / "html", man=out / "man")


def page_text(fragment: str) -> str:
    """The text of an HTML fragment, as a reader sees it."""
    return html.unescape(TAG.sub("", fragment))


def section(page: str, section_id: str) -> str:
    """The HTML of section ``section_id`` up to the next section (its own text, no children)."""
    start = page.find(f'<section id="{section_id}"')
    assert start >= 0, f"no section {section_id!r} on the page"
    end = page.find("<section", start + 1)
    return page[start:end if end >= 0 else len(page)]


def anchor(command_path: str) -> str:
    """The id docutils gives a section named so (make_id): sphinx-click names a command's
    section by its path, hq_dbref a table's by "table-NAME"."""
    return re.sub(r"[^a-z0-9]+", "-", command_path.lower()).strip("-")


def help_entries(help_text: str, heading: str) -> list[str]:
    """The first column of each entry under ``heading:`` of a --help text."""
    entries, inside = [], False
    for line in help_text.splitlines():
        if not line.startswith(" "):
            inside = line.strip() == f"{heading}:"
            continue
        stripped = line.strip()
        # an entry starts two spaces in; its help text follows two or more spaces later, or
        # continues on more deeply indented lines
        if inside and stripped and len(line) - len(line.lstrip()) == 2:
            entries.append(re.split(r"\s{2,}", stripped)[0])
    return entries


def commands_of(prog: str) -> Iterator[tuple[str, click.Command, click.Context]]:
    """(command path, command, context) of the program and each of its (sub)commands."""
    module, _, name = PROGRAMS[prog].partition(":")
    root = getattr(importlib.import_module(module), name)

    def walk(command: click.Command, ctx: click.Context) -> Iterator[
            tuple[str, click.Command, click.Context]]:
        yield ctx.command_path, command, ctx
        if isinstance(command, click.Group):
            for sub_name in command.list_commands(ctx):
                sub = command.get_command(ctx, sub_name)
                if sub is not None and not sub.hidden:
                    yield from walk(sub, click.Context(sub, info_name=sub_name, parent=ctx))

    yield from walk(root, click.Context(root, info_name=prog))


def test_docs_build_with_warnings_as_errors(built: Built) -> None:
    for page in ("index", "quickstart", "user-guide", "admin-guide", "commands",
                 "configuration", "cluster", "database", "protocol", "security",
                 "reference/commands", "reference/database"):
        assert (built.html / f"{page}.html").is_file(), page


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_command_reference_has_every_option_and_command_help_prints(
        built: Built, prog: str) -> None:
    page = (built.html / "reference" / f"{prog}.html").read_text(encoding="utf-8")
    checked = 0
    for path, command, ctx in commands_of(prog):
        help_text = command.get_help(ctx)
        options = {match for entry in help_entries(help_text, "Options")
                   for match in OPTION.findall(entry)} - HELP_OPTIONS
        if options:
            # the program's own options are in its Options section; a command's in its own
            text = page_text(section(page, f"{prog}-options" if path == prog else anchor(path)))
        for option in sorted(options):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
                f"{path}: {option} (in --help) is not on reference/{prog}.html")
            checked += 1
        for name in help_entries(help_text, "Commands"):
            assert f'<section id="{anchor(f"{path} {name}")}"' in page, (
                f"{path} {name} (in --help) has no section on reference/{prog}.html")
            checked += 1
    assert checked, f"{prog}: nothing found in --help to check"


def test_command_reference_pages_show_workflow_options(built: Built) -> None:
    submit = page_text((built.html / "reference" / "hq-submit.html").read_text("utf-8"))
    for option in ("--array", "--dependency", "--retries"):
        assert option in submit
    client = (built.html / "reference" / "hq-client.html").read_text("utf-8")
    assert '<section id="hq-client-resubmit"' in client


def test_database_reference_lists_every_table_and_column(built: Built) -> None:
    page = (built.html / "reference" / "database.html").read_text(encoding="utf-8")
    for table in model.metadata.tables.values():
        html_section = section(page, anchor(f"table-{table.name}"))
        rows = re.findall(r"<tr[^>]*>\s*<td>(.*?)</td>", html_section, flags=re.S)
        documented = [page_text(cell).strip() for cell in rows]
        assert documented == [c.name for c in table.columns], table.name
        text = page_text(html_section)
        for column in table.columns:
            if column.comment:   # each column's comment is in its row
                assert column.comment in text, f"{table.name}.{column.name}: its comment"
    for view in model.REPORT_VIEWS:
        rows = re.findall(r"<tr[^>]*>\s*<td>(.*?)</td>", section(page, anchor(f"view-{view}")),
                          flags=re.S)
        assert rows, f"view {view} has no columns on reference/database.html"


def test_man_pages_for_every_program(built: Built) -> None:
    for prog in ("hq-submit", "hq-client", "hq-admin", "hq-dbadmin", "hq-server"):
        page = built.man / "man1" / f"{prog}.1"
        assert page.is_file(), f"no man page {page.name}"
        text = page.read_text(encoding="utf-8")
        assert f'.TH "{prog.upper()}" "1"' in text
        assert "<>" not in text, f"{page.name}: a link rendered as text <>"
    submit = (built.man / "man1" / "hq-submit.1").read_text(encoding="utf-8")
    for option in ("array", "dependency", "retries"):
        assert rf"\-\-{option}" in submit

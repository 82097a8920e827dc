"""Sphinx extension: hq's database reference, generated from the code so it cannot drift.

Two directives, used by doc/reference/database.md:

``hq-db-tables``
    every table of ``hq.db.model.metadata`` in the order model.py defines them, each with
    what a row is (its line in the "Schema" table of doc/database.md) and every column: its
    type as MariaDB stores it, whether it may be NULL, its key, its default and its
    ``comment``.
``hq-db-views``
    every view of ``hq.db.model.REPORT_VIEWS`` with its text from the "Report views" table of
    doc/database.md and its columns as the migrations create them (an in-memory SQLite
    database upgraded to the newest revision).

A table or view that doc/database.md does not describe, or a view whose columns there differ
from the ones the migrations create, is a warning, so ``sphinx-build -W`` (``make doc``) fails
until doc/database.md is brought up to date.
"""

from __future__ import annotations

import logging as stdlib_logging
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

DATABASE_MD = "database.md"      # relative to the source directory (doc/)
COLUMN_HEADINGS = ("column", "type (MariaDB)", "NULL", "key", "default", "comment")
VIEW_HEADINGS = ("column", "type (SQLite)")
ROW = re.compile(r"^\|(?P<names>[^|]*)\|(?P<text>.*)\|\s*$")
INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


# ------------------------------------------------------------------------- doc/database.md

def markdown_rows(path: Path, heading: str) -> dict[str, tuple[str, int]]:
    """The rows of the first table under the ``## heading...`` of a Markdown file: each name
    in backquotes of a row's first cell, mapped to (the row's other cells, line number)."""
    rows: dict[str, tuple[str, int]] = {}
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("## "):
            inside = line[3:].strip().startswith(heading)
            continue
        match = ROW.match(line) if inside else None
        if not match or set(match["names"].strip()) <= set("-: "):
            continue
        text = match["text"].strip()
        for name in re.findall(r"`([^`]+)`", match["names"]):
            rows[name] = (text, number)
    return rows


def inline(text: str) -> list[nodes.Node]:
    """Markdown's `code` and **strong** in a table cell, as docutils nodes."""
    result: list[nodes.Node] = []
    end = 0
    for match in INLINE.finditer(text):
        if match.start() > end:
            result.append(nodes.Text(text[end:match.start()]))
        if match[1] is not None:
            result.append(nodes.literal(match[1], match[1]))
        else:
            result.append(nodes.strong(match[2], match[2]))
        end = match.end()
    if end < len(text):
        result.append(nodes.Text(text[end:]))
    return result


# ------------------------------------------------------------------------------ the schema

def column_type(column: Any) -> str:
    from sqlalchemy.dialects import mysql

    text = str(column.type.compile(dialect=mysql.dialect()))
    choices = getattr(column.type, "enums", None)
    return f"{text}: {', '.join(choices)}" if choices else text


def column_key(column: Any) -> str:
    keys = ["primary key"] if column.primary_key else []
    if column.unique:
        keys.append("unique")
    for fk in sorted(column.foreign_keys, key=lambda fk: fk.target_fullname):
        on_delete = f" (on delete {fk.ondelete.lower()})" if fk.ondelete else ""
        keys.append(f"→ {fk.target_fullname}{on_delete}")
    return ", ".join(keys)


def column_default(column: Any) -> str:
    default = column.default
    if default is not None and getattr(default, "is_scalar", False):
        value = getattr(default.arg, "value", default.arg)   # an enum member: its word
        return repr(value) if isinstance(value, str) else str(value)
    if column.server_default is not None:
        return str(getattr(column.server_default, "arg", column.server_default))
    return ""


def _migrated_view_columns() -> dict[str, list[tuple[str, str]]]:
    import sqlalchemy as sa

    from hq.db import migrate, model

    engine = sa.create_engine("sqlite://")
    try:
        migrate.upgrade(engine)
        inspector = sa.inspect(engine)
        return {view: [(c["name"], "" if isinstance(c["type"], sa.types.NullType)
                        else str(c["type"])) for c in inspector.get_columns(view)]
                for view in model.REPORT_VIEWS}
    finally:
        engine.dispose()


def view_columns(app: Sphinx) -> dict[str, list[tuple[str, str]]]:
    """Each report view's (column, type) as the migrations create them, once per build."""
    cached = getattr(app, "_hq_view_columns", None)
    if cached is None:
        # not a line per alembic plugin and revision in the build's output (furo's
        # accessible-pygments gives the root logger a handler)
        alembic_log = stdlib_logging.getLogger("alembic")
        level = alembic_log.level
        alembic_log.setLevel(stdlib_logging.WARNING)
        try:
            cached = _migrated_view_columns()
        finally:
            alembic_log.setLevel(level)
        app._hq_view_columns = cached  # type: ignore[attr-defined]
    return cached


# ------------------------------------------------------------------------------ the nodes

def table_node(headings: tuple[str, ...], rows: list[list[list[nodes.Node]]],
               widths: tuple[int, ...]) -> nodes.table:
    table = nodes.table(classes=["hq-db-columns"])
    group = nodes.tgroup(cols=len(headings))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += _row([[nodes.Text(h)] for h in headings])
    group += head
    body = nodes.tbody()
    for cells in rows:
        body += _row(cells)
    group += body
    return table


def _row(cells: list[list[nodes.Node]]) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        if content:
            entry += nodes.paragraph("", "", *content)
        row += entry
    return row


def _code(text: str) -> list[nodes.Node]:
    return [nodes.literal(text, text)] if text else []


def _text(text: str) -> list[nodes.Node]:
    return [nodes.Text(text)] if text else []


class _SchemaDirective(SphinxDirective):
    has_content = False
    heading = ""

    def descriptions(self) -> tuple[dict[str, tuple[str, int]], str]:
        path = Path(self.env.srcdir) / DATABASE_MD
        self.env.note_dependency(str(path))
        return markdown_rows(path, self.heading), str(path)

    def section(self, kind: str, name: str) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(f"{kind}-{name}")], names=[f"{kind} {name}"])
        section += nodes.title("", "", nodes.literal(name, name))
        self.state.document.note_explicit_target(section)
        return section

    def undocumented(self, what: str, path: str) -> None:
        logger.warning("%s: %s", path, what, location=self.get_location())


class DatabaseTables(_SchemaDirective):
    """``hq-db-tables``: every table and column of hq.db.model.metadata."""

    heading = "Schema"

    def run(self) -> list[nodes.Node]:
        from hq.db import model

        self.env.note_dependency(model.__file__)
        described, path = self.descriptions()
        sections: list[nodes.Node] = []
        for table in model.metadata.tables.values():
            section = self.section("table", table.name)
            if table.name in described:
                section += nodes.paragraph("", "", *inline(described[table.name][0]))
            else:
                self.undocumented(f"table {table.name} is not in its \"Schema\" table "
                                  f"(hq/db/model.py defines it)", path)
            if table.comment:
                section += nodes.paragraph("", table.comment)
            rows = [[_code(c.name), _code(column_type(c)), _text("yes" if c.nullable else "no"),
                     _text(column_key(c)), _code(column_default(c)), _text(c.comment or "")]
                    for c in table.columns]
            section += table_node(COLUMN_HEADINGS, rows, (14, 18, 5, 14, 8, 41))
            sections.append(section)
        return sections


class DatabaseViews(_SchemaDirective):
    """``hq-db-views``: every view of hq.db.model.REPORT_VIEWS and its columns."""

    heading = "Report views"

    def run(self) -> list[nodes.Node]:
        from hq.db import model

        described, path = self.descriptions()
        columns = view_columns(self.env.app)
        sections: list[nodes.Node] = []
        for view in model.REPORT_VIEWS:
            section = self.section("view", view)
            names = [name for name, _type in columns[view]]
            if view not in described:
                self.undocumented(f"view {view} is not in its \"Report views\" table "
                                  "(hq.db.model.REPORT_VIEWS names it)", path)
            else:
                text, line = described[view]
                section += nodes.paragraph("", "", *inline(text))
                listed = [w.strip() for w in re.sub(r"\([^)]*\)", "", text).split(",")]
                if listed != names:
                    self.undocumented(
                        f"line {line}: view {view} lists columns {', '.join(listed)}; "
                        f"the migrations create {', '.join(names)}", path)
            rows = [[_code(name), _code(type_)] for name, type_ in columns[view]]
            section += table_node(VIEW_HEADINGS, rows, (30, 70))
            sections.append(section)
        return sections


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("hq-db-tables", DatabaseTables)
    app.add_directive("hq-db-views", DatabaseViews)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

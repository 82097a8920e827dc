"""Sphinx extension: the command reference pages, from the click programs (sphinx-click).

``.. hq-program:: hq.cli.submit:cli`` (with sphinx-click's ``:prog:`` and ``:nested:``) is
sphinx-click's ``click`` directive without the section it wraps the program in: the page's own
heading names the program, and its description, synopsis, options, arguments and commands
become sections of the page, so that the man page has DESCRIPTION, SYNOPSIS, OPTIONS...

hq's help texts are written for a terminal, not in reStructuredText: ``42_*``, ``a|b`` or
``--json`` must come out as they are. The handlers below escape reStructuredText's inline
markup in the help text (never in the markup sphinx-click writes around it).
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx_click.ext import ClickDirective

MARKUP = re.compile(r"([\\*`|_])")
BAR = "| "                  # sphinx-click's line block, for click's \b paragraphs
OPTION_MARKUP = (":default:", ":options:")
INDENT = "    "


def escape(text: str) -> str:
    """``text`` as it is, whatever reStructuredText would make of it."""
    return MARKUP.sub(r"\\\1", text)


def escape_help_line(line: str) -> str:
    if line.startswith(BAR):
        return BAR + escape(line[len(BAR):])
    return escape(line)


def escape_description(_app: Sphinx, _ctx: Any, lines: list[str]) -> None:
    """Description and epilog: every line is the program's help text. A paragraph that click
    prints as it is (after a ``\\b`` line: examples, aligned comments) becomes a literal
    block, so that its spaces stay too."""
    result: list[str] = []
    literal = False
    for line in lines:
        if line.startswith(BAR):
            if not literal:
                result.extend(["", "::", ""])
                literal = True
            result.append(INDENT + line[len(BAR):])
            continue
        if literal and line:
            result.append("")
        literal = False
        result.append(escape(line))
    lines[:] = result


def escape_option_help(_app: Sphinx, _ctx: Any, lines: list[str]) -> None:
    """Options and arguments: sphinx-click's ``.. option::`` lines and its ``:default:`` and
    ``:options:`` fields stay; the help text indented below them is escaped."""
    result = []
    for line in lines:
        if line.startswith(INDENT):
            body = line[len(INDENT):]
            if not body.startswith(OPTION_MARKUP):
                required = "**Required** "
                if body.startswith(required):
                    line = INDENT + required + escape_help_line(body[len(required):])
                else:
                    line = INDENT + escape_help_line(body)
        result.append(line)
    lines[:] = result


# sphinx-click's rubrics of a program become its page's sections (the man page's .SH)
SECTION_NAMES = {"Usage": "Synopsis", "Options": "Options", "Arguments": "Arguments",
                 "Environment variables": "Environment", "Commands": "Commands"}


class ProgramDirective(ClickDirective):
    """sphinx-click's ``click`` directive, with the program's parts as sections.

    The page's own heading names the program; below it come Synopsis, Description (the help
    text), Options, Arguments and, for a program with commands, Commands with one subsection
    per command (each as sphinx-click writes it).
    """

    def run(self) -> list[nodes.Node]:
        generated = list(super().run())
        if len(generated) != 1 or not isinstance(generated[0], nodes.section):
            return generated
        prog = self.options["prog"]
        sections = [self._section(prog, "Description")]
        commands: list[nodes.Node] = []
        for child in generated[0].children:
            if isinstance(child, nodes.title):
                continue
            if isinstance(child, nodes.section):
                commands.append(child)
            elif isinstance(child, nodes.rubric):
                title = SECTION_NAMES.get(child.astext(), child.astext())
                sections.append(self._section(prog, title))
            else:
                sections[-1] += child
        if commands:
            section = self._section(prog, "Commands")
            section.extend(commands)
            sections.append(section)
        first = {SECTION_NAMES["Usage"]: 0, "Description": 1}   # as man pages have them
        sections.sort(key=lambda section: first.get(section[0].astext(), 2))
        return [section for section in sections if len(section.children) > 1]

    def _section(self, prog: str, title: str) -> nodes.section:
        return nodes.section("", nodes.title(title, title),
                             ids=[nodes.make_id(f"{prog}-{title}")])


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_click")
    app.add_directive("hq-program", ProgramDirective)
    app.connect("sphinx-click-process-description", escape_description)
    app.connect("sphinx-click-process-epilog", escape_description)
    app.connect("sphinx-click-process-options", escape_option_help)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

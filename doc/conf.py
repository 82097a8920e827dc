"""Sphinx configuration for hq's documentation: `make doc` builds doc/html and doc/man.

The Markdown pages in doc/ are the source (myst-parser). The command reference is generated
from the click programs (sphinx-click) and the database reference from hq/db/model.py
(doc/_ext/hq_dbref.py), so neither can drift from the code. Only sphinx-build imports this.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent
sys.path[:0] = [str(DOC.parent), str(DOC / "_ext")]   # hq of this work tree, our extension

import hq  # noqa: E402

project = "hq"
author = "the hq authors"
version = release = hq.__version__

extensions = ["myst_parser", "hq_click", "hq_dbref"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# the builds' output lies inside doc/ (doc/html, doc/man): never read it as a source
exclude_patterns = ["html", "man", "_build", "_ext", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3           # [text](configuration.md#etcusers) links to a heading
myst_enable_extensions = ["colon_fence"]
# option names and commands stay as typed: no "--" turned into a dash, no curly quotes
smartquotes = False
# code blocks without a language (terminal output, config files) are shown as they are
highlight_language = "text"
# man pages and the web pages give the same dates regardless of the build machine's locale
today_fmt = "%Y-%m-%d"

html_theme = "furo"
html_title = f"hq {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False

# man1 pages, one per program; doc/man/man1/hq-submit.1 etc. (MANPATH from .hqrc)
man_pages = [
    ("reference/hq-submit", "hq-submit", "submit jobs to hq", [], 1),
    ("reference/hq-client", "hq-client", "follow and control your own hq jobs", [], 1),
    ("reference/hq-admin", "hq-admin", "look at and steer the hq cluster", [], 1),
    ("reference/hq-dbadmin", "hq-dbadmin", "set up and maintain hq's database", [], 1),
    ("reference/hq-server", "hq-server", "the scheduler of an hq installation", [], 1),
]
man_make_section_directory = True
man_show_urls = False

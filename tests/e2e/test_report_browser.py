"""hq-admin report's HTML page opened in headless Chromium (Debian's ``chromium``): every
plot is there and its image decodes, nothing is refused or fails in the console, and a
screenshot is kept under the test's tmp_path.

The page is built from the known history (tests/fixtures/report_history.py) in a SQLite
database; its numbers are checked on both backends in tests/db/test_report.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.mariadb import skip_or_fail
from fixtures.report_history import NOW, SINCE, UNTIL, write_history

from hq.config import DatabaseConfig
from hq.db import migrate
from hq.db.engine import create_engine
from hq.report.data import load_report
from hq.report.figures import FIGURES, draw
from hq.report.page import html_page, write_file

pytestmark = pytest.mark.timeout(180)

# Run on window load in a copy of the page (the page itself allows no script): one line per
# image with its decoded width, where --dump-dom shows it.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = [...document.images].map(
    img => img.closest("section").id + " " + img.naturalWidth + "x" + img.naturalHeight
  ).join("\\n");
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        skip_or_fail("Debian's chromium is not installed (make system-deps installs it)")
    return str(found)


def open_page(browser: str, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--window-size=1000,5200", "--virtual-time-budget=5000", *extra,
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line or "Refused to" in line or "Uncaught" in line]


@pytest.fixture
def report_page(tmp_path: Path) -> Path:
    engine = create_engine(DatabaseConfig(dialect="sqlite", sqlite_path=tmp_path / "hq.db",
                                          source="<test report_page>"))
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            write_history(conn)
        with engine.connect() as conn:
            report = load_report(conn, SINCE, UNTIL, NOW)
    finally:
        engine.dispose()
    page = tmp_path / "usage.html"
    write_file(page, html_page(report, draw(report), NOW).encode(), "--html")
    return page


def test_the_report_page_renders_in_headless_chromium(report_page, tmp_path):
    browser = chromium()
    screenshot = tmp_path / "usage.png"
    shown = open_page(browser, report_page, f"--screenshot={screenshot}")
    assert shown.returncode == 0, shown.stderr[-2000:]
    print(f"screenshot: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000          # a page of plots, not a blank one
    assert console_errors(shown.stderr) == []
    dom = shown.stdout
    for name, title in FIGURES:
        assert f'id="{name}"' in dom and title in dom
    assert dom.count("<img") == len(FIGURES)
    assert "<td>exit code 3</td><td>2</td>" in dom

    checked = tmp_path / "usage-checked.html"
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "",
                  report_page.read_text())
    checked.write_text(text.replace("</body>", IMAGE_CHECK + "\n</body>"))
    result = open_page(browser, checked)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="image-check">(.*?)</pre>', result.stdout, re.S)
    assert found is not None, "the image check did not run"
    sizes = dict(line.split(" ") for line in found.group(1).splitlines())
    # each plot decoded at the size it was drawn: 9 x 4 inches at 100 dpi
    assert sizes == {name: "900x400" for name, _ in FIGURES}

"""The architecture and style rules, checked by the tools that enforce them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_import_contracts_hold():
    """execd/userd hold no database code, daemons don't import each other, and so on."""
    result = subprocess.run([str(BIN / "lint-imports")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean():
    result = subprocess.run([str(BIN / "ruff"), "check", "--output-format", "concise", "."],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_test_module_has_a_name_of_its_own():
    """The test directories are not packages: pytest refuses to collect two modules of one
    basename (tests/unit/test_x.py and tests/e2e/test_x.py), which stops the whole run."""
    names: dict[str, list[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}

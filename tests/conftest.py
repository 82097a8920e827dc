"""Test-session wiring: shared fixtures, and the rule that CI skips nothing.

Fixtures live in tests/fixtures/ (loaded below as plugins):
- ``mariadb_server`` (session): a private MariaDB server from Debian's binaries.
- ``mariadb_admin_sql``: run SQL as that server's admin.
- ``db_config``: a fresh empty database, parametrized ``sqlite`` / ``mariadb``.
- ``hq_install``: a scratch installation (etc/, var/) on ``db_config``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/ itself, so that the fixture package imports as `fixtures` however pytest was started
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["fixtures.mariadb", "fixtures.installation", "fixtures.running_hq",
                  "fixtures.config_files",
                  "fixtures.testground", "fixtures.cluster_hq"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``root`` need root: skipped outside CI when not root; in CI a failure."""
    if item.get_closest_marker("root") is None or os.getuid() == 0:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("needs root, and CI runs the tests as root: this run is not root",
                    pytrace=False)
    pytest.skip("needs root (test users, network namespaces)")

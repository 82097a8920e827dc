"""The embedded SQLite database is private: every job's command and environment is in it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from hq.config import DatabaseConfig
from hq.db import migrate
from hq.db.engine import create_engine, relocate_sqlite, secure_sqlite_files
from hq.errors import PermissionDenied


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def sqlite_at(path: Path) -> sa.Engine:
    return create_engine(DatabaseConfig(dialect="sqlite", sqlite_path=path))


def test_a_new_database_and_its_wal_are_private_whatever_the_umask(tmp_path: Path):
    path = tmp_path / "var" / "db" / "hq.db"
    old = os.umask(0o022)
    try:
        engine = sqlite_at(path)
        migrate.upgrade(engine)   # writes through the WAL: -wal and -shm now exist
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar()
            files = {p.name: mode(p) for p in path.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert mode(path.parent) == 0o700
    assert {"hq.db", "hq.db-wal", "hq.db-shm"} <= set(files)
    assert set(files.values()) == {0o600}


def test_files_left_readable_are_tightened(tmp_path: Path):
    path = tmp_path / "hq.db"
    for name in ("hq.db", "hq.db-wal", "hq.db-shm"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o644)
    secure_sqlite_files(path)
    assert [mode(tmp_path / n) for n in ("hq.db", "hq.db-wal", "hq.db-shm")] == [0o600] * 3


def test_a_symlinked_database_is_refused(tmp_path: Path):
    (tmp_path / "elsewhere.db").write_bytes(b"")
    (tmp_path / "hq.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(PermissionDenied, match="not a regular file"):
        secure_sqlite_files(tmp_path / "hq.db")


def test_a_directory_others_may_write_is_refused_with_the_fix(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionDenied, match=f"run chmod 700 {shared}"):
        secure_sqlite_files(shared / "hq.db")
    assert not (shared / "hq.db").exists()


@pytest.mark.root  # makes a file that another uid owns
def test_a_file_of_another_account_is_refused(tmp_path: Path):
    (tmp_path / "hq.db").write_bytes(b"")
    (tmp_path / "hq.db-wal").write_bytes(b"")
    os.chown(tmp_path / "hq.db-wal", 65534, 65534)   # planted by nobody
    with pytest.raises(PermissionDenied, match="belongs to uid 65534"):
        secure_sqlite_files(tmp_path / "hq.db")


def test_relocation_moves_the_database_with_its_journal_files(tmp_path: Path):
    old, new = tmp_path / "var" / "hq.db", tmp_path / "var" / "db" / "hq.db"
    engine = sqlite_at(old)
    migrate.upgrade(engine)
    engine.dispose()
    (old.parent / "hq.db-wal").write_bytes(b"")   # as a crashed server leaves it
    assert relocate_sqlite(old, new)
    assert not old.exists() and not (old.parent / "hq.db-wal").exists()
    assert (new.parent / "hq.db-wal").exists() and mode(new.parent) == 0o700
    engine = sqlite_at(new)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
    assert not relocate_sqlite(old, new)   # nothing left to move

"""The one place that turns hq's configuration files into frozen dataclasses.

Files (all under the installation root, see ``Installation``):

- ``etc/cluster.tab``  hosts, tab-separated, in the original hQ 8-column format or an extended
  header-named one -> ``load_cluster`` -> ``HostConfig``
- ``etc/users``        user names and roles -> ``load_users`` -> ``UserConfig``
- ``etc/hq-db.cfg``    database location and credentials (INI, must be mode 0600 or tighter)
  -> ``load_database`` -> ``DatabaseConfig``; no file means the embedded SQLite database
- ``etc/hq-server.cfg`` daemon paths, timeouts and scheduler knobs (INI, optional)
  -> ``load_server`` -> ``ServerConfig``

Every problem is a ``ConfigError`` naming ``file:line: field: what is wrong``; a loader either
returns a whole configuration or raises, never half of one. doc/configuration.md is the
reference for people. The syntax of values and INI files is in ``hq.config_syntax``, and
etc/cluster.tab is read by ``hq.config_cluster`` (its names are offered here too). This
module imports nothing from hq but those two, ``errors`` and ``states``, and never
sqlalchemy: daemons that run as users import it and must hold no database code
(``hq.db.engine.url_for`` turns a DatabaseConfig into a SQLAlchemy URL).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import hq
from hq import config_syntax as syntax
from hq.config_cluster import (  # noqa: F401 (the one place: hq.config offers them)
    EXTENDED_CLUSTER_COLUMNS,
    ORIGINAL_CLUSTER_COLUMNS,
    HostConfig,
    load_cluster,
)
from hq.config_syntax import parse_bool, quote, read_text
from hq.errors import ConfigError
from hq.states import Role


@dataclass(frozen=True)
class Installation:
    """Where an hq installation lives; every other path is derived from ``root``."""

    root: Path

    @property
    def etc(self) -> Path:
        """``root/etc``: the configuration files."""
        return self.root / "etc"

    @property
    def var(self) -> Path:
        """``root/var``: data, sockets, logs; written by the daemons."""
        return self.root / "var"

    @property
    def data_dir(self) -> Path:
        """``root/var/db``: the embedded SQLite database; 0700, only the admin enters it."""
        return self.var / "db"

    @property
    def sqlite_path(self) -> Path:
        """The embedded SQLite database, ``var/db/hq.db``.

        Installations made before the database had a private directory kept it in
        ``var/hq.db`` (0644 in a 0755 directory): that file is used until hq-server, at its
        next start, moves it here (``hq.db.engine.relocate_sqlite``).
        """
        path = self.data_dir / "hq.db"
        if not path.exists() and self.legacy_sqlite_path.exists():
            return self.legacy_sqlite_path
        return path

    @property
    def legacy_sqlite_path(self) -> Path:
        """Where the embedded database was before ``var/db`` existed."""
        return self.var / "hq.db"

    @property
    def hqconf(self) -> Path:
        """``root/hqConf``: installation settings (requirements, database server)."""
        return self.root / "hqConf"

    @property
    def cluster_tab(self) -> Path:
        """The hosts: ``etc/cluster.tab``."""
        return self.etc / "cluster.tab"

    @property
    def users_file(self) -> Path:
        """Accounts and roles: ``etc/users``."""
        return self.etc / "users"

    @property
    def db_cfg(self) -> Path:
        """Database location and credentials: ``etc/hq-db.cfg`` (optional)."""
        return self.etc / "hq-db.cfg"

    @property
    def server_cfg(self) -> Path:
        """Daemon settings: ``etc/hq-server.cfg`` (optional)."""
        return self.etc / "hq-server.cfg"

    @classmethod
    def locate(cls, environ: Mapping[str, str] = os.environ) -> Installation:
        """Return the installation named by ``$HQPATH``, else the one this code was loaded from."""
        value = environ.get("HQPATH")
        if value is None:
            return cls(Path(hq.__file__).resolve().parent.parent)
        if not value:
            raise ConfigError("HQPATH", "is set but empty: unset it or name the hq directory")
        if not os.path.isdir(value):
            raise ConfigError("HQPATH", f"not a directory: {quote(value)}")
        # abspath, not resolve: keep the name the admin chose for the shared filesystem, which
        # may be a symlink that points elsewhere on other hosts.
        return cls(Path(os.path.abspath(value)))


# ---------------------------------------------------------------------------- cluster.tab
# (hq.config_cluster reads it; its names are this module's too)

def exec_server_idle_s(inst: Installation, host: str, default: float) -> float:
    """The idle timeout of ``host``'s exec-servers: its ``idle_timeout`` in etc/cluster.tab,
    else ``default`` ([server] exec_server_idle_timeout). Read when an exec-server is started,
    so an edit applies to the next one without a reload."""
    for entry in load_cluster(inst.cluster_tab):
        if entry.name == host and entry.idle_timeout_s is not None:
            return entry.idle_timeout_s
    return default


# ---------------------------------------------------------------------------- users

@dataclass(frozen=True)
class UserConfig:
    """One account from etc/users and the roles it holds."""

    name: str
    roles: frozenset[Role]
    line: int = 0
    share: float = 1.0              # fair share weight: twice the share, twice the usage
    max_running: int | None = None  # most jobs at once (over [scheduler] max_running_per_user)
    max_cores: int | None = None    # most cores at once

    @property
    def is_admin(self) -> bool:
        """Whether the account may use hq-admin."""
        return Role.ADMIN in self.roles


_USER_KEYS: Mapping[str, Callable[[str], object]] = MappingProxyType({
    "share": syntax.positive_number, "max_running": syntax.non_negative_int,
    "max_cores": syntax.positive_int})


GROUP_LINE_MARK = "@"
"""etc/users lines that start with it (``@physics max_cores=128``) set a Unix group's limits;
no user name starts with it, so the original format cannot hold one."""


def load_users(path: Path) -> tuple[UserConfig, ...]:
    """Read etc/users: ``<user> <ROLE>[,<ROLE>...] [key=value...]`` per line, ``#`` comments;
    may be empty. The keys (``share``, ``max_running``, ``max_cores``) come after the roles,
    so the original hQ format reads as before. ``@group`` lines are left to
    ``hq.limits_config``."""
    source = str(path)
    users: list[UserConfig] = []
    first_seen: dict[str, int] = {}
    known = ", ".join(role.value for role in Role)
    for number, text in enumerate(read_text(path).splitlines(), 1):
        content = text.split("#", 1)[0].strip()
        if not content or content.startswith(GROUP_LINE_MARK):
            continue   # a group's limits: hq.limits_config reads those lines
        name, *more = content.split(None, 1)
        rest = more[0] if more else ""
        try:
            syntax.user_name(name)
        except ValueError as exc:
            raise ConfigError(source, str(exc), line=number, field="user") from None
        words = [word for word in re.split(r"[\s,]+", rest) if word]
        settings: dict[str, object] = {}
        for word in [w for w in words if "=" in w]:
            key, _, value = word.partition("=")
            parse = _USER_KEYS.get(key.lower())
            if parse is None:
                raise ConfigError(source, f"unknown key {quote(key)} for user {quote(name)} "
                                  f"(known: {', '.join(_USER_KEYS)})", line=number, field=key)
            try:
                settings[key.lower()] = parse(value)
            except ValueError as exc:
                raise ConfigError(source, str(exc), line=number, field=key) from None
        words = [w for w in words if "=" not in w]
        if not words:
            raise ConfigError(source, f"missing role for user {quote(name)} (known: {known})",
                              line=number, field="roles")
        roles: set[Role] = set()
        for word in words:
            try:
                roles.add(Role(word.lower()))
            except ValueError:
                raise ConfigError(source, f"unknown role {quote(word)} (known: {known})",
                                  line=number, field="roles") from None
        if Role.ADMIN in roles:
            roles.add(Role.USER)  # an admin runs jobs too
        if name in first_seen:
            raise ConfigError(source, f"duplicate user {quote(name)} (first defined on line "
                              f"{first_seen[name]})", line=number, field="user")
        first_seen[name] = number
        users.append(UserConfig(name=name, roles=frozenset(roles), line=number,
                                **settings))  # type: ignore[arg-type]
    return tuple(users)


# ---------------------------------------------------------------------------- hq-db.cfg

_DIALECTS = {"mysql": "mysql", "mariadb": "mysql", "mysql+pymysql": "mysql",
             "mariadb+pymysql": "mysql", "sqlite": "sqlite"}
_DB_KEYS = frozenset({
    "database_host", "database_port", "database_dialect", "database_name", "database_username",
    "database_password", "database_socket", "database_path", "url"})


@dataclass(frozen=True)
class DatabaseConfig:
    """Where hq-server's database is and how to log in; the password never shows in repr."""

    dialect: str                   # "sqlite" or "mysql" (MariaDB included)
    name: str = "hq"               # database name (mysql)
    host: str = "localhost"
    port: int = 3306
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    socket: str | None = None      # unix socket path (mysql); used instead of host and port
    sqlite_path: Path | None = None
    sqlite_default: bool = False   # sqlite_path is the default, not set in hq-db.cfg
    url: str | None = field(default=None, repr=False)  # explicit SQLAlchemy URL; wins
    source: str = "<embedded default>"                 # the file it came from, for messages

    def describe(self) -> str:
        """One line for people and logs naming the database; a password shows as ``***``."""
        if self.url is not None:
            where = _mask_url(self.url)
        elif self.dialect == "sqlite":
            where = f"sqlite:///{self.sqlite_path}"
        else:
            login = (self.username or "") + (":***" if self.password else "")
            server = f"{self.host}:{self.port}" if self.socket is None else ""
            where = f"mysql://{login}@{server}/{self.name}"
            if self.socket is not None:
                where += f"?unix_socket={self.socket}"
        return f"{where} (from {self.source})"


def _mask_url(url: str) -> str:
    """``url`` without its password or query (a query may carry one too).

    Plain string splitting, not urllib: passwords are often written without the escapes a
    parser needs (``/``, ``?``, ``@``); splitting at the last ``@`` masks too much, never too
    little.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable url>"
    login, at, server = rest.rpartition("@")
    if ":" in login:
        login = login.partition(":")[0] + ":***"
    return f"{scheme}://{login}{at}{server.partition('?')[0]}"


def _dialect(text: str) -> str:
    if text.lower() not in _DIALECTS:
        raise ValueError(f"unknown dialect {quote(text)} (use mysql, mariadb or sqlite)")
    return _DIALECTS[text.lower()]


def _dialect_of_url(url: str) -> str:
    # the message names the scheme only: the rest of the url may hold the password
    scheme, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise ValueError("not a URL (expected e.g. mysql://user:password@host/name)")
    if scheme.lower() not in _DIALECTS:
        raise ValueError(f"unsupported database {quote(scheme)} (use mysql, mariadb or sqlite)")
    return _DIALECTS[scheme.lower()]


def load_database(inst: Installation) -> DatabaseConfig:
    """Read etc/hq-db.cfg; without that file, the embedded SQLite database var/db/hq.db.

    The file holds credentials, so it is refused unless only its owner can read and write it.
    """
    path = inst.db_cfg
    source = str(path)
    text = syntax.read_private_text(path, holds="database credentials")
    if text is None:
        return DatabaseConfig(dialect="sqlite", sqlite_path=inst.sqlite_path, sqlite_default=True)
    sections = syntax.read_ini(source, text, {"database": _DB_KEYS})
    if "database" not in sections:
        raise ConfigError(source, "missing [DATABASE] section")
    entries = sections["database"]

    def get(key: str, parse: Callable[[str], Any] = str) -> Any:
        return syntax.ini_value(source, entries, key, parse)

    url = get("url")
    dialect = get("url", _dialect_of_url) or get("database_dialect", _dialect)
    if dialect is None:
        raise ConfigError(source, "missing: use mysql (or mariadb) or sqlite",
                          field="database_dialect")
    username = get("database_username")
    if dialect == "mysql" and url is None and username is None:
        raise ConfigError(source, "missing: mysql needs the account hq-server logs in as",
                          field="database_username")
    socket = get("database_socket", inst.root.joinpath)  # relative to the installation
    sqlite_path = get("database_path", inst.root.joinpath) if dialect == "sqlite" else None
    return DatabaseConfig(
        dialect=dialect,
        name=get("database_name") or "hq",
        host=get("database_host") or "localhost",
        port=get("database_port", syntax.port) or 3306,
        username=username,
        password=get("database_password"),
        socket=None if socket is None else str(socket),
        sqlite_path=sqlite_path or (inst.sqlite_path if dialect == "sqlite" else None),
        sqlite_default=dialect == "sqlite" and sqlite_path is None and url is None,
        url=url,
        source=source,
    )


# ---------------------------------------------------------------------------- hq-server.cfg

@dataclass(frozen=True)
class ServerConfig:
    """Daemon paths, timeouts and scheduler knobs from etc/hq-server.cfg (seconds throughout)."""

    socket_path: Path                    # where hq-server listens
    pid_file: Path
    log_file: Path
    server_user: str | None = None       # account hq-server runs as; None = owner of the root
    ssh_address: str | None = None       # how other hosts reach hq-server's host; None: hostname
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 10.0    # no heartbeat this long: host "heartbeat lost"
    lease_s: float = 30.0                # an exec-server unreached this long kills its jobs
    lease_grace_s: float = 5.0           # extra wait before hq-server requeues them
    retry_unreachable_s: float = 30.0    # an unreachable host gets a new try after this long
    monitor_timeout_s: float = 30.0      # no host monitor report this long: facts unknown
    user_server_idle_s: float = 300.0
    exec_server_idle_s: float = 300.0
    db_flush_interval_s: float = 0.001   # longest wait for more work to batch with
    db_batch_max: int = 5000
    load_factor: float = 1.1             # no new job while load1 + busy > factor * cores
    max_running_per_user: int = 0        # 0 = unlimited
    max_queued_per_user: int = 1_000_000     # unfinished jobs a user may have
    max_jobs_per_submission: int = 1_000_000
    requests_per_second: float = 100.0   # each user's sustained request rate ...
    request_burst: int = 500             # ... and how many may come at once
    max_connections_per_user: int = 64   # open connections of one account to hq-server
    fair_share: bool = True
    fairshare_half_life_s: float = 7 * 86400.0   # past usage halves in this time
    host_key_policy: str = "reject"      # or "accept-new"
    memory_enforce: str = "kill"         # [execd]: a job over --memory: kill, warn or off
    pin_cpus: bool = False               # [execd]: bind each job to CPUs of its own
    connect_timeout_s: float = 5.0

    @classmethod
    def defaults(cls, inst: Installation) -> ServerConfig:
        """The configuration used when etc/hq-server.cfg does not exist."""
        return cls(socket_path=inst.var / "run" / "hq-server.sock",
                   pid_file=inst.var / "run" / "hq-server.pid",
                   log_file=inst.var / "log" / "hq-server.log")


def _memory_enforce(text: str) -> str:
    if text not in ("kill", "warn", "off"):
        raise ValueError(f"unknown mode {quote(text)} (use kill, warn or off)")
    return text


def _host_key_policy(text: str) -> str:
    if text not in ("reject", "accept-new"):
        raise ValueError(f"unknown policy {quote(text)} (use reject or accept-new)")
    return text


# field -> (section, key, parse); paths are resolved against the installation root
_SERVER_KEYS: dict[str, tuple[str, str, Callable[[str], object]]] = {
    "socket_path": ("server", "socket", Path),
    "pid_file": ("server", "pid_file", Path),
    "log_file": ("server", "log_file", Path),
    "server_user": ("server", "server_user", syntax.user_name),
    "ssh_address": ("server", "ssh_address", syntax.address),
    "heartbeat_interval_s": ("server", "heartbeat_interval", syntax.positive_number),
    "heartbeat_timeout_s": ("server", "heartbeat_timeout", syntax.positive_number),
    "lease_s": ("server", "lease", syntax.positive_number),
    "lease_grace_s": ("server", "lease_grace", syntax.positive_number),
    "retry_unreachable_s": ("server", "retry_unreachable", syntax.positive_number),
    "monitor_timeout_s": ("server", "monitor_timeout", syntax.positive_number),
    "user_server_idle_s": ("server", "user_server_idle_timeout", syntax.positive_number),
    "exec_server_idle_s": ("server", "exec_server_idle_timeout", syntax.positive_number),
    "db_flush_interval_s": ("server", "db_flush_interval", syntax.positive_number),
    "db_batch_max": ("server", "db_batch_max", syntax.positive_int),
    "load_factor": ("scheduler", "load_factor", syntax.positive_number),
    "max_running_per_user": ("scheduler", "max_running_per_user", syntax.non_negative_int),
    "max_queued_per_user": ("scheduler", "max_queued_per_user", syntax.positive_int),
    "max_jobs_per_submission": ("scheduler", "max_jobs_per_submission", syntax.positive_int),
    "requests_per_second": ("server", "requests_per_second", syntax.positive_number),
    "request_burst": ("server", "request_burst", syntax.positive_int),
    "max_connections_per_user": ("server", "max_connections_per_user", syntax.positive_int),
    "fair_share": ("scheduler", "fair_share", parse_bool),
    "fairshare_half_life_s": ("scheduler", "fairshare_half_life", syntax.duration_s),
    "host_key_policy": ("ssh", "host_key_policy", _host_key_policy),
    "memory_enforce": ("execd", "memory_enforce", _memory_enforce),
    "pin_cpus": ("execd", "pin_cpus", parse_bool),
    "connect_timeout_s": ("ssh", "connect_timeout", syntax.positive_number),
}
class _AnyKey(frozenset[str]):
    """Keys of a section named after users and groups; their own loader checks them."""

    def __contains__(self, key: object) -> bool:
        return True


OPEN_SECTIONS: Mapping[str, frozenset[str]] = MappingProxyType({"limits": _AnyKey()})
"""Sections of etc/hq-server.cfg read by another loader ([limits]: ``hq.limits_config``)."""

SERVER_KEYS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {name: (section, key) for name, (section, key, _) in _SERVER_KEYS.items()})
"""ServerConfig field -> (section, key) of etc/hq-server.cfg that sets it."""


def load_server(inst: Installation) -> ServerConfig:
    """Read etc/hq-server.cfg over the defaults; no file means all defaults.

    An empty value also means the default. Relative paths are relative to the installation.
    """
    path = inst.server_cfg
    config = ServerConfig.defaults(inst)
    if not path.exists():
        return config
    source = str(path)
    known: dict[str, set[str]] = {}
    for section, key, _ in _SERVER_KEYS.values():
        known.setdefault(section, set()).add(key)
    sections = syntax.read_ini(source, read_text(path),
                               {**{name: frozenset(keys) for name, keys in known.items()},
                                **OPEN_SECTIONS})
    changes: dict[str, object] = {}
    for name, (section, key, parse) in _SERVER_KEYS.items():
        entries = sections.get(section, {})
        value = syntax.ini_value(source, entries, key, parse)
        if value is not None:
            changes[name] = inst.root / value if parse is Path else value
    config = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    if config.heartbeat_timeout_s <= config.heartbeat_interval_s:
        entry = sections.get("server", {}).get("heartbeat_timeout")
        raise ConfigError(source, f"must be longer than heartbeat_interval "
                          f"({config.heartbeat_interval_s:g} s), or every host is lost",
                          line=entry.line if entry else None, field="heartbeat_timeout")
    return config

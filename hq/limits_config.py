"""Limits per user, per Unix group and by default, from etc/users and etc/hq-server.cfg.

Two places say the same things (doc/configuration.md, "Limits"):

- ``etc/users``: a user's ``max_running=``/``max_cores=`` after the roles (``hq.config``,
  into the database by ``hq-dbadmin -a``), and group lines ``@physics max_cores=128``;
- ``etc/hq-server.cfg`` ``[limits]``: ``user.alice = max_cores=64 max_running=100``,
  ``group.physics = max_cores=128``, ``default = max_running=50``.

One precedence rule, key by key: [limits] over etc/users, and a named user or group over
``default``, which is over ``[scheduler] max_running_per_user``. A user's own limits and
those of every group they are in all hold; the tightest binds. A group's limits cap what its
members hold together. Members are the accounts of etc/users whose primary group it is or
that the group lists (``grp``), resolved each time the limits are loaded (start, reload).

Every problem is a ``ConfigError`` naming file and line. This module reads files and the group
database only; hq-server turns the result into the scheduler's limits.
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hq import config_syntax as syntax
from hq.config import GROUP_LINE_MARK, OPEN_SECTIONS, SERVER_KEYS, Installation
from hq.config_syntax import quote, read_text
from hq.errors import ConfigError

_KEYS: Mapping[str, Callable[[str], int]] = MappingProxyType({
    "max_running": syntax.positive_int, "max_cores": syntax.positive_int})
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class Limit:
    """Most jobs and most cores at once (None: not set here)."""

    max_running: int | None = None
    max_cores: int | None = None

    def over(self, other: Limit) -> Limit:
        """This limit, with ``other``'s values where this one sets none."""
        return Limit(self.max_running if self.max_running is not None else other.max_running,
                     self.max_cores if self.max_cores is not None else other.max_cores)


@dataclass(frozen=True)
class GroupLimit:
    """A Unix group's limit and who is in it."""

    name: str
    limit: Limit
    members: frozenset[str]      # accounts of etc/users in the group
    source: str                  # file:line it was (last) set on, for messages


@dataclass(frozen=True)
class Limits:
    """Everything the scheduler's limits are made of, besides etc/users' user lines."""

    users: Mapping[str, Limit] = field(default_factory=dict)     # [limits] user.NAME
    groups: Mapping[str, GroupLimit] = field(default_factory=dict)
    default: Limit = Limit()                                     # [limits] default

    def of_user(self, name: str, from_users_file: Limit) -> Limit:
        """``name``'s own limit by the precedence rule (the module docstring)."""
        return self.users.get(name, Limit()).over(from_users_file).over(self.default)

    def groups_of(self, name: str) -> tuple[str, ...]:
        """The limited groups ``name`` is in, by name."""
        return tuple(sorted(g.name for g in self.groups.values() if name in g.members))


def parse_limit(source: str, line: int | None, text: str, what: str) -> Limit:
    """``max_running=N max_cores=N`` words (spaces or commas between) -> Limit."""
    values: dict[str, int] = {}
    for word in (w for w in re.split(r"[\s,]+", text) if w):
        key, sep, value = word.partition("=")
        key = key.lower()
        if not sep or key not in _KEYS:
            raise ConfigError(source, f"unknown limit {quote(key)} for {what} (known: "
                              f"{', '.join(_KEYS)}, as key=value)", line=line, field=key)
        if key in values:
            raise ConfigError(source, f"{key} given twice for {what}", line=line, field=key)
        try:
            values[key] = _KEYS[key](value)
        except ValueError as exc:
            raise ConfigError(source, str(exc), line=line, field=key) from None
    if not values:
        raise ConfigError(source, f"no limit for {what} (use max_running=N, max_cores=N)",
                          line=line)
    return Limit(**values)


def _group_lines(path_text: str, source: str) -> list[tuple[str, int, Limit]]:
    """The ``@group key=value...`` lines of etc/users."""
    found = []
    for number, text in enumerate(path_text.splitlines(), 1):
        content = text.split("#", 1)[0].strip()
        if not content.startswith(GROUP_LINE_MARK):
            continue
        name, *more = content[len(GROUP_LINE_MARK):].split(None, 1) or [""]
        rest = more[0] if more else ""
        if not _GROUP_NAME.fullmatch(name):
            raise ConfigError(source, f"invalid group name {quote(name)} after "
                              f"{GROUP_LINE_MARK}", line=number, field="group")
        found.append((name, number, parse_limit(source, number, rest, f"group {name}")))
    return found


def _members(group: str, accounts: Iterable[str]) -> frozenset[str] | None:
    """Accounts in ``group`` (primary or listed), or None when there is no such group."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return None
    listed = set(entry.gr_mem)
    members = set()
    for name in accounts:
        if name in listed:
            members.add(name)
            continue
        try:
            if pwd.getpwnam(name).pw_gid == entry.gr_gid:
                members.add(name)
        except KeyError:
            continue   # an account of etc/users this host does not know: in no group
    return frozenset(members)


def load_limits(inst: Installation, accounts: Iterable[str]) -> Limits:
    """Read the group lines of etc/users and [limits] of etc/hq-server.cfg (both optional);
    ``accounts`` are the users whose group memberships count."""
    accounts = tuple(accounts)
    groups: dict[str, tuple[Limit, str, int]] = {}   # name -> limit, file, line
    users: dict[str, Limit] = {}
    default = Limit()
    if inst.users_file.exists():
        source = str(inst.users_file)
        seen: dict[str, int] = {}
        for name, number, limit in _group_lines(read_text(inst.users_file), source):
            if name in seen:
                raise ConfigError(source, f"duplicate group {quote(name)} (first on line "
                                  f"{seen[name]})", line=number, field="group")
            seen[name] = number
            groups[name] = (limit, source, number)
    if inst.server_cfg.exists():
        source = str(inst.server_cfg)
        known: dict[str, frozenset[str]] = {}
        for section, key in SERVER_KEYS.values():
            known[section] = known.get(section, frozenset()) | {key}
        sections = syntax.read_ini(source, read_text(inst.server_cfg),
                                   {**known, **OPEN_SECTIONS})
        for key, entry in sections.get("limits", {}).items():
            kind, dot, name = key.partition(".")
            if key == "default":
                default = parse_limit(source, entry.line, entry.text, "default")
            elif dot and kind == "user":
                try:
                    syntax.user_name(name)
                except ValueError as exc:
                    raise ConfigError(source, str(exc), line=entry.line, field=key) from None
                users[name] = parse_limit(source, entry.line, entry.text, f"user {name}")
            elif dot and kind == "group" and _GROUP_NAME.fullmatch(name):
                limit = parse_limit(source, entry.line, entry.text, f"group {name}")
                earlier = groups.get(name)
                groups[name] = (limit.over(earlier[0]) if earlier else limit, source,
                                entry.line or 0)
            else:
                raise ConfigError(source, "unknown key in [limits] (use user.NAME, "
                                  "group.NAME or default)", line=entry.line, field=key)
    resolved = {}
    for name, (limit, source, number) in groups.items():
        members = _members(name, accounts)
        if members is None:
            raise ConfigError(source, f"unknown Unix group {quote(name)}", line=number,
                              field="group" if source == str(inst.users_file) else
                              f"group.{name}")
        resolved[name] = GroupLimit(name, limit, members, f"{source}:{number}")
    return Limits(users=users, groups=resolved, default=default)

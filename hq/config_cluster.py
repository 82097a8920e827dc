"""etc/cluster.tab: the hosts hq may use, as ``HostConfig`` objects (``load_cluster``).

Two formats: the original hQ's 8 tab-separated columns in their fixed order, and an extended
one whose first line names the columns (any order; unknown columns are errors unless they
start with ``x_``). Every error names the file, line and column. Part of the one place that
maps config files to objects: ``hq.config`` offers these names too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from hq import config_syntax as syntax
from hq.config_syntax import parse_bool, parse_memory_mb, quote, read_text
from hq.errors import ConfigError


@dataclass(frozen=True)
class HostConfig:
    """One host from etc/cluster.tab: what hq may run there and how to reach it."""

    name: str                      # short name, unique; how people and the database name it
    full_name: str                 # FQDN, or the same as name
    address: str                   # what ssh connects to; defaults to full_name
    ssh_port: int = 22
    cores: int = 1                 # total slots
    max_jobs: int | None = None    # most slots occupied at once; None = cores
    memory_mb: int | None = None   # None = not managed
    os: str | None = None
    features: frozenset[str] = frozenset()
    gpus: tuple[str, ...] = ()     # device ids (a count n is 0..n-1)
    info: str = ""
    active: bool = True            # an inactive host gets no new jobs
    idle_timeout_s: float | None = None  # its exec-servers' idle timeout; None = the server's
    line: int = 0                  # where it was defined, for later messages


ORIGINAL_CLUSTER_COLUMNS = (
    "short_name", "full_name", "total_number_slots", "max_number_occupied_slots",
    "additional_info", "allow_info_server", "info_server_port", "active")
"""The header of the original hQ cluster.tab, in its fixed order."""

_ORIGINAL_RENAMES = {"short_name": "host", "total_number_slots": "cores",
                     "max_number_occupied_slots": "max_jobs", "additional_info": "info"}

# Keyed by extended column name; the original format's obsolete info-server columns are still
# checked so that a row shifted by a missing tab fails instead of loading wrong numbers.
_CELL_PARSERS: dict[str, Callable[[str], object]] = {
    "host": syntax.host_name, "full_name": syntax.host_name, "address": syntax.address,
    "ssh_port": syntax.port, "cores": syntax.core_count, "max_jobs": syntax.positive_int,
    "memory": parse_memory_mb, "os": str, "features": syntax.feature_set,
    "gpus": syntax.gpu_list, "info": str,
    "active": parse_bool, "idle_timeout": syntax.duration_s,
    "allow_info_server": parse_bool, "info_server_port": syntax.port,
}
_OBSOLETE_COLUMNS = frozenset({"allow_info_server", "info_server_port"})
EXTENDED_CLUSTER_COLUMNS = tuple(c for c in _CELL_PARSERS if c not in _OBSOLETE_COLUMNS)
"""Column names of the extended cluster.tab format; ``host`` and ``cores`` are required."""
_REQUIRED_COLUMNS = ("host", "cores")
_HOST_FIELD_NAMES = {"host": "name", "memory": "memory_mb", "idle_timeout": "idle_timeout_s"}
# The original hQ read every empty cell as False or 0. Its active column keeps that meaning,
# so that a host an admin left blank stays switched off; other empty cells take our defaults.
_ORIGINAL_EMPTY_CELLS: Mapping[str, object] = MappingProxyType({"active": False})

_Columns = tuple[list[tuple[str, str | None]], Mapping[str, object]]


def _header_cells(line: str) -> list[str] | None:
    """The column names if ``line`` can be the header, else None (a comment)."""
    text = line.strip()
    if not text.startswith("#"):
        return [cell.strip() for cell in text.split("\t")]
    cells = [cell.strip().lower() for cell in text[1:].split("\t")]
    # a commented header is told from a comment by its tab-separated column names
    if len(cells) > 1 and ("host" in cells or "short_name" in cells):
        return [cell.strip() for cell in text[1:].split("\t")]
    return None


def _cluster_columns(source: str, line: int, names: list[str]) -> _Columns:
    """Header names -> [(name as written, column key or None for an x_ column)], and the
    values of empty cells that differ from the defaults of HostConfig."""
    lower = [name.lower() for name in names]

    def error(message: str, column: str | None = None) -> ConfigError:
        return ConfigError(source, message, line=line, field=column)

    if tuple(lower) == ORIGINAL_CLUSTER_COLUMNS:
        return [(name, _ORIGINAL_RENAMES.get(low, low))
                for name, low in zip(names, lower, strict=True)], _ORIGINAL_EMPTY_CELLS
    if "host" not in lower:
        if "short_name" in lower:
            raise error("an original hQ header must be exactly these tab-separated columns: "
                        + " ".join(ORIGINAL_CLUSTER_COLUMNS))
        if len(names) == 1 and len(names[0].split()) > 1:
            raise error("the header line is not tab-separated: separate column names by tabs")
        raise error(f"missing header line: expected column names (at least host and cores), "
                    f"found {quote(names[0])}")
    columns: list[tuple[str, str | None]] = []
    for position, (name, low) in enumerate(zip(names, lower, strict=True), 1):
        if not low:
            raise error(f"column {position} of the header has no name")
        if low in lower[:position - 1]:
            raise error("duplicate column", name)
        if low.startswith("x_"):
            columns.append((name, None))
        elif low in EXTENDED_CLUSTER_COLUMNS:
            columns.append((name, low))
        else:
            raise error(f"unknown column (known: {', '.join(EXTENDED_CLUSTER_COLUMNS)}; "
                        f"start local columns with x_)", name)
    for required in _REQUIRED_COLUMNS:
        if required not in lower:
            raise error(f"missing required column {quote(required)}")
    return columns, {}


def _host_from_row(source: str, line: int, text: str, header: _Columns) -> HostConfig:
    columns, empty_cells = header
    cells = text.split("\t")
    if len(cells) != len(columns):
        hint = ""
        if len(cells) < len(columns) and len(text.split()) >= len(columns):
            hint = " (the line seems to be separated by spaces; use tabs)"
        raise ConfigError(source, f"expected {len(columns)} tab-separated columns, "
                          f"found {len(cells)}{hint}", line=line)
    values: dict[str, object] = {}
    for (name, key), cell in zip(columns, cells, strict=True):
        cell = cell.strip()
        if key is None:
            continue
        if cell in ("", "-"):
            if key in _REQUIRED_COLUMNS:
                raise ConfigError(source, "missing value", line=line, field=name)
            if key in empty_cells:
                values[key] = empty_cells[key]
            continue
        try:
            values[key] = _CELL_PARSERS[key](cell)
        except ValueError as exc:
            raise ConfigError(source, str(exc), line=line, field=name) from None
    kwargs = {_HOST_FIELD_NAMES.get(key, key): value for key, value in values.items()
              if key not in _OBSOLETE_COLUMNS}
    kwargs.setdefault("full_name", kwargs["name"])
    kwargs.setdefault("address", kwargs["full_name"])
    return HostConfig(line=line, **kwargs)  # type: ignore[arg-type]


def load_cluster(path: Path) -> tuple[HostConfig, ...]:
    """Read etc/cluster.tab (either format) into hosts in file order; at least one host."""
    source = str(path)
    header: _Columns | None = None
    hosts: list[HostConfig] = []
    first_seen: dict[str, int] = {}
    for number, text in enumerate(read_text(path).splitlines(), 1):
        if header is None:
            names = _header_cells(text) if text.strip() else None
            if names is not None:
                header = _cluster_columns(source, number, names)
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        host = _host_from_row(source, number, text, header)
        if host.name in first_seen:
            host_column = next(name for name, key in header[0] if key == "host")
            raise ConfigError(source, f"duplicate host name {quote(host.name)} (first defined on "
                              f"line {first_seen[host.name]})", line=number, field=host_column)
        first_seen[host.name] = number
        hosts.append(host)
    if not hosts:
        raise ConfigError(source, "no hosts defined: add one tab-separated line per host "
                          "below the header")
    return tuple(hosts)

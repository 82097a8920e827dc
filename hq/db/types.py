"""Column types shared by the models and the migrations.

Kept apart from model.py so a migration can import them without importing today's schema.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

UTC = dt.UTC


class UtcDateTime(sa.types.TypeDecorator):
    """A point in time stored as naive UTC (DATETIME(6) on MariaDB, text on SQLite).

    Python code only ever sees aware datetimes; a naive one is refused on the way in, because
    guessing its zone is how report queries end up an hour off.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: hq stores aware UTC times only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        return None if value is None else value.replace(tzinfo=UTC)


class JsonText(sa.types.TypeDecorator):
    """A JSON document in a text column (MEDIUMTEXT on MariaDB: environments exceed 64 KiB).

    Not the JSON type: MariaDB reflects JSON as LONGTEXT, which would make every autogenerate
    comparison report a change.
    """

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.MEDIUMTEXT())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"),
                                                     sort_keys=True)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


def word_enum(enum_class: type[enum.Enum], name: str) -> sa.Enum:
    """An enum stored as its readable word in a VARCHAR, checked by a named constraint."""
    return sa.Enum(enum_class, name=name, native_enum=False, create_constraint=True,
                   length=16, validate_strings=True,
                   values_callable=lambda members: [m.value for m in members])


# Integer primary keys that may outgrow 2**31 (jobs, events); SQLite only autoincrements a
# column declared exactly INTEGER.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

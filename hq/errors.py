"""The HqError family: every error a user can see, with its one-line message and exit code.

CLIs print ``<program>: error: <message>`` on stderr and exit with ``exit_code``; daemons send
``code`` over the wire so a client can raise the same class on its side.

Exit codes (documented in doc/exit-codes.md):
  1 an error not covered below      4 permission denied (role, ownership)
  2 bad input: options, files       5 hq-server or user-server unreachable
  3 no such object (job, host)      6 database unusable (unreachable, schema not at head)
"""

from __future__ import annotations


class HqError(Exception):
    """Base of every error hq reports to a person; ``str(err)`` is one line."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(HqError):
    """Bad input on a command line or in a request."""

    exit_code = 2
    code = "bad_request"


class ConfigError(UsageError):
    """A configuration file is wrong; the message names file, line and field."""

    code = "bad_config"

    def __init__(self, source: str, message: str, line: int | None = None,
                 field: str | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")
        self.source, self.line, self.field = source, line, field


class NotFound(HqError):
    """No such object, or not the caller's: both get this same answer."""

    exit_code = 3
    code = "not_found"


class PermissionDenied(HqError):
    """The caller lacks the role or the ownership the request needs."""

    exit_code = 4
    code = "permission_denied"


class Unavailable(HqError):
    """A daemon hq needs is not running or not reachable."""

    exit_code = 5
    code = "unavailable"


class Busy(Unavailable):
    """A daemon refuses a request for now (a user's request rate or a limit of the moment);
    the same request may succeed a moment later, and the command line programs retry it."""

    code = "busy"


class DatabaseError(HqError):
    """The database cannot be used: unreachable, wrong credentials, schema not at head."""

    exit_code = 6
    code = "database"


class ProtocolError(HqError):
    """A peer broke the protocol (bad frame, bad JSON, a wrong or ill-typed field, a version
    this side does not speak); it gets this error and its link is dropped."""

    code = "protocol"


ERRORS_BY_CODE: dict[str, type[HqError]] = {
    cls.code: cls
    for cls in (HqError, UsageError, ConfigError, NotFound, PermissionDenied, Unavailable,
                Busy, DatabaseError, ProtocolError)
}

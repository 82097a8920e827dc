"""The local sendmail, which ``--mail-user`` mails through: hq-submit checks for it at submit
(and says so when there is none), the user-server uses it when a submission has ended."""

from __future__ import annotations

import os
import shutil

SENDMAIL_PATHS = ("/usr/sbin/sendmail", "/usr/lib/sendmail")
MAIL_TYPES = frozenset({"END", "FAIL", "ALL", "NONE"})


def sendmail_path() -> str | None:
    """The local sendmail, if there is one."""
    found = shutil.which("sendmail")
    if found:
        return found
    return next((p for p in SENDMAIL_PATHS if os.access(p, os.X_OK)), None)

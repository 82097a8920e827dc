"""The connected user-servers, one per user: where hq-server sends each user's work.

Each user has at most one link (the newest connection wins, the older one is closed). A send
is isolated: a message that cannot be encoded or a link that breaks affects only that user,
never the round or the other users' sends.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from hq.errors import HqError
from hq.protocol import Channel
from hq.protocol.messages import Message

log = logging.getLogger(__name__)


@dataclass(eq=False)
class UserLink:
    """The connection of one user's user-server."""

    user: str
    user_id: int
    pid: int
    channel: Channel
    since: dt.datetime

    @property
    def version(self) -> int:
        """The protocol version the user-server speaks (1: an older hq left it running)."""
        return self.channel.version


class Links:
    """user name -> the link of their user-server."""

    def __init__(self) -> None:
        self._links: dict[str, UserLink] = {}

    def __contains__(self, user: object) -> bool:
        return user in self._links

    def __len__(self) -> int:
        return len(self._links)

    def get(self, user: str) -> UserLink | None:
        return self._links.get(user)

    def all(self) -> list[UserLink]:
        return sorted(self._links.values(), key=lambda link: link.user)

    def register(self, link: UserLink) -> UserLink | None:
        """Make ``link`` the user's link; returns the one it replaces (already closed)."""
        old = self._links.get(link.user)
        self._links[link.user] = link
        if old is not None:
            old.channel.close()
        return old

    def unregister(self, link: UserLink) -> bool:
        """Forget ``link`` if it is still the user's link (not already replaced)."""
        if self._links.get(link.user) is link:
            del self._links[link.user]
            return True
        return False

    def is_current(self, link: UserLink) -> bool:
        return self._links.get(link.user) is link

    def send(self, user: str, message: Message) -> bool:
        """Send ``message`` to ``user``'s user-server; False when there is none or it failed."""
        link = self._links.get(user)
        if link is None:
            return False
        try:
            link.channel.send(message)
        except (HqError, OSError, ValueError) as err:
            log.error("user-server of %s: cannot send %s: %s", user, type(message).__name__,
                      err)
            return False
        return True

    def close_all(self) -> None:
        for link in list(self._links.values()):
            link.channel.close()

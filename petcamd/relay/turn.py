"""Short-lived TURN credentials for devices and viewers, in coturn's REST-API scheme.

The relay and the TURN server (coturn with ``use-auth-secret``) share one secret; the relay hands
each authenticated device, and each viewer connection, a username ``<expiry>:<label>`` and the
password ``base64(HMAC-SHA1(secret, username))``. coturn checks the HMAC and the expiry itself, so
the two servers never talk and nothing is stored. Media relayed by TURN stays SRTP end to end:
TURN sees ciphertext and addresses, like any router on the path.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable

from petcamd.protocol.relay import IceServerEntry, IceServers

__all__ = ["TurnIssuer", "rest_password"]


def rest_password(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.digest(secret, username.encode("ascii"), "sha1")).decode("ascii")


class TurnIssuer:
    """Makes the ICE_SERVERS envelope each client gets; STUN URLs are passed on as they are."""

    def __init__(
        self, urls: tuple[str, ...], secret: bytes, ttl_s: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._urls = urls
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock

    def issue(self, label: str) -> IceServers:
        expires_at = int(self._clock()) + self._ttl_s
        username = f"{expires_at}:{label}"
        password = rest_password(self._secret, username)
        entries = tuple(
            IceServerEntry(url, username, password) if url.startswith("turn") else IceServerEntry(url)
            for url in self._urls
        )
        return IceServers(entries, expires_at)

    def stale(self, issued: IceServers) -> bool:
        """Past half their life: hand out fresh ones before the next session."""
        return issued.expires_at - self._clock() < self._ttl_s / 2

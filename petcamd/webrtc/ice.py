"""ICE configuration and offer hygiene, using aiortc's public API only.

Two aiortc defaults would slow down or leak a viewer's setup, so both are overridden here:
`RTCConfiguration()` without `iceServers` silently uses a public STUN server, and a browser's
`.local` (mDNS) candidates are resolved inside `setRemoteDescription`, up to a second each.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCIceServer

from petcamd.protocol.relay import is_ice_url

log = logging.getLogger(__name__)

_MDNS_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+\.local) \d+ ", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN or TURN server as the viewer-facing config names it."""

    url: str
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if not is_ice_url(self.url):
            raise ValueError(f"not a STUN/TURN URL: {self.url!r}")
        if self.is_turn and (self.username is None or self.credential is None):
            raise ValueError(f"TURN server {self.url!r} needs a username and a credential")

    @property
    def is_turn(self) -> bool:
        return self.url.startswith("turn")


def rtc_configuration(servers: tuple[IceServer, ...], *, local_network_mode: bool) -> RTCConfiguration:
    """Local Network Mode uses no STUN/TURN at all; the list is always explicit, never aiortc's default."""
    if local_network_mode:
        return RTCConfiguration(iceServers=[])
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=server.url, username=server.username, credential=server.credential)
            for server in servers
        ]
    )


@dataclass(frozen=True, slots=True)
class CleanOffer:
    sdp: str
    mdns_candidates: tuple[str, ...]


def strip_mdns_candidates(sdp: str) -> CleanOffer:
    """Drop `.local` candidates so applying the offer never waits on mDNS resolution.

    The viewer still reaches us: it checks our host candidates from the answer, and the agent learns
    its address as a peer-reflexive candidate. `a=end-of-candidates` is dropped along with them, or
    an agent left with no remote candidate would give up before the viewer's first check arrives.
    """
    lines = sdp.splitlines()
    hosts = tuple(m.group(1) for line in lines if (m := _MDNS_CANDIDATE.match(line)))
    if not hosts:
        return CleanOffer(sdp, ())
    kept = [
        line for line in lines if not _MDNS_CANDIDATE.match(line) and line.strip() != "a=end-of-candidates"
    ]
    log.debug("ignoring %d mDNS candidate(s) in the offer; relying on peer-reflexive discovery", len(hosts))
    return CleanOffer("\r\n".join(kept) + "\r\n", hosts)

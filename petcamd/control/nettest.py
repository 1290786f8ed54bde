"""The connection test behind ``petcamctl nettest``: what stands between outside viewers and the camera.

:func:`run_nettest` runs the probes of petcamd.control.netprobe at once (the relay, every STUN
server, every TURN server), each within its own timeout, and never raises: every failure becomes
a field of the report. :func:`classify_mapping` names the router's NAT behaviour from the STUN
answers, and :func:`assess` turns everything into plain-language findings; both are pure
functions so each case is tested on its own. docs/control.md documents the JSON form.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from petcamd.config import NetworkConfig
from petcamd.control.netprobe import (
    Endpoint,
    IceUrl,
    Observation,
    RelayResult,
    StunResult,
    TurnResult,
    format_endpoint,
    parse_ice_url,
    probe_relay,
    probe_stun,
    probe_turn,
)

__all__ = [
    "Finding",
    "NatMapping",
    "NatResult",
    "NettestReport",
    "NettestSettings",
    "assess",
    "classify_mapping",
    "run_nettest",
]

log = logging.getLogger(__name__)

Level = Literal["ok", "warning", "error"]
_LEVELS: dict[Level, int] = {"ok": 0, "warning": 1, "error": 2}
_GRACE_S = 2.0
"""Each probe keeps its own timeout; this much more bounds one that would not."""


@dataclass(frozen=True, slots=True)
class NettestSettings:
    """What to test. ``ssl_context`` of None trusts the system's certificate store."""

    relay_url: str = ""
    ice_servers: tuple[str, ...] = ()
    turn_username: str | None = None
    turn_password: str | None = field(default=None, repr=False)
    relay_timeout_s: float = 5.0
    stun_timeout_s: float = 3.0
    turn_timeout_s: float = 5.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls, network: NetworkConfig, *, turn_username: str | None = None, turn_password: str | None = None
    ) -> NettestSettings:
        return cls(
            relay_url=network.relay_url,
            ice_servers=network.ice_servers,
            turn_username=turn_username,
            turn_password=turn_password,
        )


# ---------------------------------------------------------------------------------------------
# Results


class NatMapping(enum.StrEnum):
    """How the router maps one local UDP port to public ones (RFC 5780 section 4.3 terms)."""

    UNKNOWN = "unknown"
    """No STUN server answered."""
    NO_NAT = "no_nat"
    """The servers see the local address and port: nothing translates them."""
    UNDETERMINED = "undetermined"
    """Behind NAT, but too few destinations answered to tell how it maps ports."""
    ENDPOINT_INDEPENDENT = "endpoint_independent"
    """The same public address and port towards every destination."""
    ADDRESS_DEPENDENT = "address_dependent"
    """A new public port per destination address (the same one for two ports of one address)."""
    ADDRESS_AND_PORT_DEPENDENT = "address_and_port_dependent"
    """A new public port per destination address and port: the classic symmetric NAT."""
    DESTINATION_DEPENDENT = "destination_dependent"
    """A new public port per destination; whether the port alone matters was not tested."""

    @property
    def varies(self) -> bool:
        """The public port changes with the destination: a viewer cannot predict it (symmetric NAT)."""
        return self in _VARYING


_VARYING = frozenset(
    {
        NatMapping.ADDRESS_DEPENDENT,
        NatMapping.ADDRESS_AND_PORT_DEPENDENT,
        NatMapping.DESTINATION_DEPENDENT,
    }
)

_MAPPING_TEXT = {
    NatMapping.UNKNOWN: "unknown (no STUN answer)",
    NatMapping.NO_NAT: "no NAT (the servers see the camera's own address)",
    NatMapping.UNDETERMINED: "behind NAT, port behaviour not determined",
    NatMapping.ENDPOINT_INDEPENDENT: "endpoint-independent mapping (the same public port to every server)",
    NatMapping.ADDRESS_DEPENDENT: "address-dependent mapping (symmetric NAT)",
    NatMapping.ADDRESS_AND_PORT_DEPENDENT: "address- and port-dependent mapping (symmetric NAT)",
    NatMapping.DESTINATION_DEPENDENT: "the public port changes per destination (symmetric NAT)",
}


@dataclass(frozen=True, slots=True)
class NatResult:
    mapping: NatMapping = NatMapping.UNKNOWN
    observations: tuple[Observation, ...] = ()

    @property
    def local(self) -> Endpoint | None:
        return self.observations[0].local if self.observations else None

    @property
    def public(self) -> tuple[Endpoint, ...]:
        return tuple(dict.fromkeys(o.mapped for o in self.observations))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mapping": self.mapping.value,
            "local": format_endpoint(self.local),
            "public": [format_endpoint(p) for p in self.public],
            "observations": [
                {"destination": format_endpoint(o.destination), "mapped": format_endpoint(o.mapped)}
                for o in self.observations
            ],
        }


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    text: str


@dataclass(frozen=True, slots=True)
class NettestReport:
    relay: RelayResult | None
    """None when no relay URL is configured."""
    stun: tuple[StunResult, ...]
    nat: NatResult
    turn: tuple[TurnResult, ...]
    duration_ms: float = 0.0
    findings: tuple[Finding, ...] = ()

    @property
    def status(self) -> Level:
        worst = max((_LEVELS[f.level] for f in self.findings), default=0)
        return next(level for level, rank in _LEVELS.items() if rank == worst)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verdict": [{"level": f.level, "text": f.text} for f in self.findings],
            "duration_ms": round(self.duration_ms, 1),
            "relay": None if self.relay is None else self.relay.to_dict(),
            "stun": [s.to_dict() for s in self.stun],
            "nat": self.nat.to_dict(),
            "turn": [t.to_dict() for t in self.turn],
        }

    def human(self) -> str:
        """The report as the CLI prints it: probe lines, then the verdict."""
        lines: list[str] = []
        relay = self.relay
        if relay is None:
            lines.append("Relay  not configured")
        else:
            lines.append(f"Relay  {relay.url}")
            lines.append(f"       {_relay_line(relay)}")
        if not self.stun:
            lines.append("STUN   no STUN server configured")
        for i, stun in enumerate(self.stun):
            lines.append(f"{'STUN' if i == 0 else '':7}{stun.url}: {_stun_line(stun)}")
        if self.stun:
            local = f" (local {format_endpoint(self.nat.local)})" if self.nat.local else ""
            lines.append(f"NAT    {_MAPPING_TEXT[self.nat.mapping]}{local}")
        if not self.turn:
            lines.append("TURN   no TURN server configured")
        for i, turn in enumerate(self.turn):
            lines.append(f"{'TURN' if i == 0 else '':7}{turn.url}: {_turn_line(turn)}")
        lines.append("")
        lines.append("Verdict")
        marks = {"ok": "  ok  ", "warning": "  !!  ", "error": "  XX  "}
        lines.extend(marks[f.level] + f.text for f in self.findings)
        return "\n".join(lines)


def _ms_text(value: float | None) -> str:
    if value is None:
        return "? ms"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _relay_line(relay: RelayResult) -> str:
    tls = {None: "", True: ", TLS ok", False: f", TLS failed: {relay.tls_error}"}[relay.tls]
    if not relay.reachable:
        return f"unreachable: {relay.error}{tls if relay.tls is not False else ''}"
    rtt = f", round trip {_ms_text(relay.rtt_ms)}" if relay.rtt_ms is not None else ""
    origin = (
        f", origin {relay.origin} ok"
        if relay.origin_ok
        else f", ORIGIN MISMATCH: relay says {relay.origin}, expected {relay.expected_origin}"
    )
    return f"reachable, CHALLENGE after {_ms_text(relay.connect_ms)}{rtt}{tls}{origin}"


def _stun_line(stun: StunResult) -> str:
    if stun.mapped is None:
        return f"failed: {stun.error}"
    other = f", alternate address {format_endpoint(stun.other_address)}" if stun.other_address else ""
    return f"mapped {format_endpoint(stun.mapped)} in {_ms_text(stun.rtt_ms)}{other}"


def _turn_line(turn: TurnResult) -> str:
    if not turn.tested:
        return f"not tested: {turn.error}"
    if not turn.allocated:
        return f"failed ({turn.transport}): {turn.error}"
    released = "released" if turn.released else f"not released: {turn.error}"
    return f"allocated over {turn.transport}, relayed {format_endpoint(turn.relayed)}, {released}"


# ---------------------------------------------------------------------------------------------
# The verdict


def classify_mapping(observations: Sequence[Observation]) -> NatMapping:
    """RFC 5780's mapping behaviour from Binding answers to one local socket.

    The same public endpoint towards two destination addresses is endpoint-independent mapping;
    a different one is address-dependent, or address-and-port-dependent when two ports of one
    address already see different ones. With answers from one destination only, NAT can be
    detected but not classified.
    """
    if not observations:
        return NatMapping.UNKNOWN
    if all(o.mapped == o.local for o in observations):
        return NatMapping.NO_NAT
    seen: dict[Endpoint, Endpoint] = {}
    for o in observations:
        seen.setdefault(o.destination, o.mapped)
    if len(seen) < 2:
        return NatMapping.UNDETERMINED
    by_address: dict[str, set[Endpoint]] = {}
    ports: dict[str, int] = {}
    for destination, mapped in seen.items():
        by_address.setdefault(destination[0], set()).add(mapped)
        ports[destination[0]] = ports.get(destination[0], 0) + 1
    if len(set(seen.values())) == 1:
        # Answers from ports of one address only leave the address's part untested.
        return NatMapping.ENDPOINT_INDEPENDENT if len(by_address) >= 2 else NatMapping.UNDETERMINED
    if any(len(mapped) > 1 for mapped in by_address.values()):
        return NatMapping.ADDRESS_AND_PORT_DEPENDENT
    if any(count > 1 for count in ports.values()):
        return NatMapping.ADDRESS_DEPENDENT
    return NatMapping.DESTINATION_DEPENDENT


def _first_error(results: Sequence[StunResult]) -> str:
    return next((r.error for r in results if r.error), "no answer")


def assess(
    relay: RelayResult | None,
    stun: Sequence[StunResult],
    nat: NatResult,
    turn: Sequence[TurnResult],
) -> tuple[Finding, ...]:
    """What the results mean for viewers, in the owner's words, worst problems included."""
    findings = [Finding("ok", "Viewers on your Wi-Fi can connect directly.")]
    findings.append(_relay_finding(relay))

    tested_turn = [t for t in turn if t.tested]
    working_turn = [t for t in tested_turn if t.allocated]
    if working_turn:
        transports = ", ".join(dict.fromkeys(t.transport for t in working_turn))
        turn_state = f", and it works ({transports})."
    elif tested_turn:
        turn_state = ", but the TURN relay failed (see below)."
    elif turn:
        turn_state = ", but it could not be tested without TURN credentials."
    else:
        turn_state = ", and none is configured."
    turn_level: Level = "warning" if working_turn else "error"

    answered = [s for s in stun if s.mapped is not None]
    if not stun:
        findings.append(
            Finding(
                "warning",
                "No STUN server is configured: the camera cannot learn its public address, "
                "so viewers outside your network may not get a direct connection.",
            )
        )
    elif not answered:
        findings.append(
            Finding(
                turn_level,
                f"No STUN server answered ({_first_error(stun)}): outgoing UDP may be blocked, "
                f"so outside viewers will need the TURN relay{turn_state}",
            )
        )
    elif nat.mapping is NatMapping.NO_NAT:
        findings.append(
            Finding("ok", "The camera has a public address (no NAT): outside viewers can connect directly.")
        )
    elif nat.mapping is NatMapping.ENDPOINT_INDEPENDENT:
        findings.append(
            Finding(
                "ok",
                "From outside, direct connections should work (your router keeps the same public port).",
            )
        )
    elif nat.mapping.varies:
        findings.append(
            Finding(
                turn_level,
                "Your router changes ports per destination (symmetric NAT): "
                f"outside viewers will need the TURN relay{turn_state}",
            )
        )
    else:
        public = ", ".join(format_endpoint(p) or "" for p in nat.public)
        findings.append(
            Finding(
                "warning",
                f"The camera is behind NAT (public address {public}). One STUN server cannot tell "
                "whether your router keeps the same public port; configure a second one to find out.",
            )
        )

    findings.extend(
        Finding("error", f"The TURN server {t.url} failed: {t.error}.")
        for t in tested_turn
        if not t.allocated
    )
    untested = [t for t in turn if not t.tested]
    if untested:
        findings.append(
            Finding("warning", f"TURN server {untested[0].url} was not tested: {untested[0].error}")
        )
    return tuple(findings)


def _relay_finding(relay: RelayResult | None) -> Finding:
    if relay is None:
        return Finding(
            "warning", "No relay is configured: only viewers on your own network can reach the camera."
        )
    if not relay.reachable:
        return Finding(
            "error",
            f"The relay at {relay.url} is unreachable: {relay.error}. "
            "Viewers outside your network cannot reach the camera.",
        )
    if not relay.origin_ok:
        return Finding(
            "error",
            f"The relay at {relay.url} says it is {relay.origin}, but the camera connects to it as "
            f"{relay.expected_origin}: the relay's public_origin is misconfigured (or relay_url is "
            "wrong), and the camera cannot register there.",
        )
    rtt = f" ({_ms_text(relay.rtt_ms)} round trip)" if relay.rtt_ms is not None else ""
    return Finding("ok", f"The relay at {relay.url} is reachable{rtt}.")


# ---------------------------------------------------------------------------------------------
# Running it all


async def _guarded(probe: Awaitable[Any], fallback: Callable[[str], Any], limit_s: float) -> Any:
    """Run one probe; a bug, or a probe overrunning its own timeout, becomes an error field."""
    try:
        async with asyncio.timeout(limit_s):
            return await probe
    except TimeoutError:
        return fallback(f"no result within {limit_s:g} s")
    except Exception as exc:
        log.exception("nettest probe failed")
        return fallback(f"internal error: {exc}")


async def _relay(settings: NettestSettings) -> RelayResult | None:
    if not settings.relay_url:
        return None
    result: RelayResult = await _guarded(
        probe_relay(settings.relay_url, timeout_s=settings.relay_timeout_s, ssl_context=settings.ssl_context),
        lambda error: RelayResult(settings.relay_url, error=error),
        settings.relay_timeout_s + _GRACE_S,
    )
    return result


async def _stun(urls: Sequence[IceUrl], settings: NettestSettings) -> tuple[list[StunResult], NatResult]:
    results: list[StunResult]
    observations: list[Observation]
    results, observations = await _guarded(
        probe_stun(urls, timeout_s=settings.stun_timeout_s, ssl_context=settings.ssl_context),
        lambda error: ([StunResult(url.url, error=error) for url in urls], []),
        settings.stun_timeout_s + _GRACE_S,
    )
    return results, NatResult(classify_mapping(observations), tuple(observations))


async def _turn(url: IceUrl, settings: NettestSettings) -> TurnResult:
    username, password = settings.turn_username, settings.turn_password
    if username is None or password is None:
        return TurnResult(url.url, url.transport, tested=False, error="no TURN credentials were given")
    result: TurnResult = await _guarded(
        probe_turn(
            url, username, password, timeout_s=settings.turn_timeout_s, ssl_context=settings.ssl_context
        ),
        lambda error: TurnResult(url.url, url.transport, error=error),
        settings.turn_timeout_s + _GRACE_S,
    )
    return result


async def run_nettest(settings: NettestSettings) -> NettestReport:
    """Test the relay, STUN and TURN servers at once; never raises (errors become report fields)."""
    started = time.monotonic()
    stun_urls: list[IceUrl] = []
    turn_urls: list[IceUrl] = []
    unusable: list[StunResult] = []
    for text in settings.ice_servers:
        try:
            url = parse_ice_url(text)
        except ValueError as exc:
            unusable.append(StunResult(text, error=str(exc)))
            continue
        (turn_urls if url.is_turn else stun_urls).append(url)
    relay, (stun, nat), turn = await asyncio.gather(
        _relay(settings),
        _stun(stun_urls, settings),
        asyncio.gather(*(_turn(url, settings) for url in turn_urls)),
    )
    stun_results = (*stun, *unusable)
    report = NettestReport(
        relay,
        stun_results,
        nat,
        tuple(turn),
        (time.monotonic() - started) * 1000,
        assess(relay, stun_results, nat, turn),
    )
    log.info("nettest finished: %s", report.status)
    return report

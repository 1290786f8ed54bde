"""Rate and connection limits: token buckets per connection and per client address.

Per-address state lives only while the address has a connection open or its buckets are still
refilling (at most burst / rate seconds); :meth:`AddressTable.sweep` forgets the rest, so the
relay keeps no lasting record of who connected.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; starts full."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are that many; a refusal takes nothing."""
        self._refill()
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]
) -> IPAddress | None:
    """The client's address: the TCP peer, or the nearest untrusted hop that trusted proxies report.

    X-Forwarded-For is read right to left and believed only while each hop is a trusted proxy, so
    a client cannot choose its own address by sending the header itself.
    """
    address = _parse_ip(peer)
    if address is None or not _within(address, trusted):
        return address
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        parsed = _parse_ip(hop)
        if parsed is None:
            break
        address = parsed
        if not _within(parsed, trusted):
            break
    return address


def address_key(address: IPAddress | None) -> str:
    """What per-address limits count by: an IPv4 address, or an IPv6 /64 (one subscriber's prefix)."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _parse_ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: IPAddress, networks: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def allowed(address: IPAddress | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and _within(address, networks)


@dataclass(frozen=True, slots=True)
class AddressLimits:
    max_connections: int
    connections_per_address: int
    connects_per_s: float
    connect_burst: int
    messages_per_s: float
    message_burst: int


class Refusal(enum.Enum):
    """Why a new connection is refused before the WebSocket upgrade (a metrics label too)."""

    SERVER_FULL = "server_full"
    ADDRESS_CONNECTIONS = "address_connections"
    ADDRESS_CONNECT_RATE = "address_connect_rate"


@dataclass(slots=True)
class AddressEntry:
    key: str
    connects: TokenBucket
    messages: TokenBucket
    connections: int = 0

    def idle(self) -> bool:
        return self.connections == 0 and self.connects.full and self.messages.full


class AddressTable:
    """Connection counts and shared message buckets per client address, in memory only."""

    def __init__(self, limits: AddressLimits, clock: Clock = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._entries: dict[str, AddressEntry] = {}
        self.connections = 0

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, key: str) -> AddressEntry | Refusal:
        """Count a new connection from ``key``, or say why it may not open."""
        limits = self._limits
        if self.connections >= limits.max_connections:
            return Refusal.SERVER_FULL
        entry = self._entries.get(key)
        if entry is None:
            entry = AddressEntry(
                key,
                TokenBucket(limits.connects_per_s, limits.connect_burst, self._clock),
                TokenBucket(limits.messages_per_s, limits.message_burst, self._clock),
            )
            self._entries[key] = entry
        if entry.connections >= limits.connections_per_address:
            return Refusal.ADDRESS_CONNECTIONS
        if not entry.connects.take():
            return Refusal.ADDRESS_CONNECT_RATE
        entry.connections += 1
        self.connections += 1
        return entry

    def release(self, entry: AddressEntry) -> None:
        entry.connections -= 1
        self.connections -= 1
        if entry.idle():
            self._entries.pop(entry.key, None)

    def sweep(self) -> None:
        """Forget addresses with no connection whose buckets have refilled."""
        for key in [key for key, entry in self._entries.items() if entry.idle()]:
            del self._entries[key]

"""The device's own LAN addresses (pairing URL, mDNS), read from the kernel with no extra packages."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915
_IPV6_GLOBAL_SCOPE = 0x00


def lan_addresses(bind_address: str = "0.0.0.0") -> list[str]:  # noqa: S104 - the wildcard is what "all" means here
    """Addresses viewers can reach: the bound one if specific, else every non-loopback address.

    Loopback is returned only when there is nothing else (a development machine with no network).
    """
    if bind_address not in ("0.0.0.0", "::"):  # noqa: S104
        return [bind_address]
    found = [*_ipv4_addresses(), *_ipv6_addresses()]
    usable = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return usable or ["127.0.0.1"]


def _ipv4_addresses() -> list[str]:
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # interface without an IPv4 address
            out.append(socket.inet_ntoa(packed[20:24]))
    return out


def _ipv6_addresses(proc: Path = Path("/proc/net/if_inet6")) -> list[str]:
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    out: list[str] = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and int(parts[3], 16) == _IPV6_GLOBAL_SCOPE:
            out.append(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))))
    return out

"""Network namespaces, veth links and NAT routers that a test builds, and always takes down again.

Everything a test sends stays inside namespaces made here: nothing touches the host's interfaces,
routes or firewall. A :class:`Topology` owns every namespace it creates; closing it first kills the
processes still running inside them (a namespace lives on while a process is in it), then deletes
the namespaces, which takes their veth ends, bridges and nftables tables with them. Veth pairs are
created with both ends directly in their namespaces, so interface names only need to be unique
inside one namespace (``eth0`` on every host) and never collide in the host's.

Names: ``pcm-<label>-<pid>-<n>-<role>``, unique per test process and topology, so parallel runs
never collide; a run that was killed before its teardown ran leaves namespaces named after a pid
that no longer exists, and the next topology deletes those first.

Addresses come from test ranges only: 198.18.0.0/15 (benchmarking, RFC 2544) stands for the
public internet, 10.0.0.0/8 and 172.16.0.0/12 for private LANs.

NAT is nftables ``masquerade`` in a router namespace. Linux's default keeps the source port when it
is free, so a host gets the same public port towards every destination (endpoint-independent
mapping, what most home routers do); ``random,fully-random`` picks a new port per destination
address and port (address-and-port-dependent mapping, "symmetric NAT"). Both filter as conntrack
does: only answers to what a LAN host sent get in.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import functools
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
PUBLIC_SUBNET = "198.18.0.0/24"
_T = TypeVar("_T")
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^(pcm-[a-z0-9]+-(\d+)-\d+-[a-z0-9]+)\b", re.MULTILINE)
_sequence = itertools.count(1)


def require_netns() -> None:
    """Namespaces need root, iproute2 and nftables (installed here when missing).

    Without root the test is skipped, except in CI (``PETCAMD_REQUIRE_SYSTEM_SUITE=1``), where a
    skip would hide that the NAT tests never ran.
    """
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("PETCAMD_REQUIRE_SYSTEM_SUITE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    if shutil.which("ip") is None or shutil.which("nft") is None:
        subprocess.run([str(REPO / "scripts" / "ensure-system-deps"), "iproute2", "nftables"], check=True)
    problem = _nat_problem()
    if problem is not None:
        message = (
            f"nftables NAT does not work in a network namespace on Linux {os.uname().release}: {problem}"
        )
        if os.environ.get("PETCAMD_REQUIRE_SYSTEM_SUITE") == "1":
            pytest.fail(message)
        pytest.skip(message)


@functools.cache
def _nat_problem() -> str | None:
    """None when this kernel runs both kinds of masquerade in a fresh namespace; else nft's error.

    Checked once, up front, so a kernel without nf_tables NAT says so instead of failing deep in a test.
    """
    with Topology("check") as topo:
        ns = topo.namespace("nat")
        try:
            for flags in ("", " random,fully-random"):
                ns.run("nft", "-f", "-", stdin=NAT_RULES.format(masquerade_flags=flags, block_udp=""))
                ns.run("nft", "flush", "ruleset")
        except RuntimeError as exc:
            return str(exc)
    return None


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the enclosed (synchronous) code with this thread in namespace ``name``.

    Sockets keep the namespace they were created in, and children forked meanwhile start in it.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
    finally:
        os.close(own)
        os.close(target)


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


@dataclass(frozen=True)
class Namespace:
    name: str

    @property
    def prefix(self) -> tuple[str, ...]:
        """Runs a command inside: ``[*ns.prefix, "turnserver", ...]``."""
        return ("ip", "netns", "exec", self.name)

    def ip(self, *args: str) -> None:
        ip("-n", self.name, *args)

    def run(self, *command: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [*self.prefix, *command], input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} in {self.name}: {result.stderr.strip()}")
        return result.stdout

    def call(self, function: Callable[[], _T]) -> _T:
        """``function()`` with this thread in the namespace (sockets it opens stay there)."""
        with in_netns(self.name):
            return function()

    def pids(self) -> list[int]:
        listing = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in listing.split()]


@dataclass
class Network:
    """One IPv4 subnet on a bridge: the public network, or a LAN whose bridge is in its router."""

    namespace: Namespace
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: str | None
    """The router's address for hosts' default route; None on the public network."""
    _hosts: Iterator[ipaddress.IPv4Address] = field(init=False)
    _ports: Iterator[int] = field(init=False, default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._hosts = self.subnet.hosts()

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def next_address(self) -> str:
        return str(next(self._hosts))

    def next_port(self) -> str:
        return f"p{next(self._ports)}"


@dataclass(frozen=True)
class Host:
    namespace: Namespace
    address: str
    interface: str = "eth0"

    @property
    def name(self) -> str:
        return self.namespace.name

    @property
    def prefix(self) -> tuple[str, ...]:
        return self.namespace.prefix


class Nat(enum.Enum):
    ENDPOINT_INDEPENDENT = "endpoint_independent"
    """Port-preserving masquerade (Linux's default): one public port for every destination."""
    SYMMETRIC = "symmetric"
    """``masquerade random,fully-random``: a new public port per destination address and port."""


@dataclass(frozen=True)
class Router:
    namespace: Namespace
    wan: Host
    """The router on the upstream network: its public address is the one behind-NAT hosts share."""
    lan: Network


NAT_RULES = """
table ip petcam_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade{masquerade_flags}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
{block_udp}    }}
    chain input {{
        # Unsolicited packets to the router's public address die unconfirmed, as on a home router:
        # a conntrack entry for them would hold the very public port an outgoing flow (a peer's
        # hole punch) needs, and masquerade would then pick another port.
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }}
}}
"""


class Topology:
    """Namespaces and links of one test; use as a context manager so teardown always runs."""

    def __init__(self, label: str) -> None:
        if not re.fullmatch(r"[a-z0-9]+", label):
            raise ValueError("label: lowercase letters and digits only")
        remove_stale_namespaces()
        self.prefix = f"pcm-{label}-{os.getpid()}-{next(_sequence)}"
        self._created: list[Namespace] = []

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """A new namespace with loopback up; ``role`` names it (``device``, ``router-a``)."""
        name = f"{self.prefix}-{role.replace('-', '')}"
        ip("netns", "add", name)
        ns = Namespace(name)
        self._created.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(self, a: Namespace, a_dev: str, b: Namespace, b_dev: str) -> None:
        """A veth pair with one end in each namespace, both up."""
        ip("link", "add", a_dev, "netns", a.name, "type", "veth", "peer", "name", b_dev, "netns", b.name)
        a.ip("link", "set", a_dev, "up")
        b.ip("link", "set", b_dev, "up")

    def network(self, namespace: Namespace, subnet: str, *, gateway: bool) -> tuple[Network, str]:
        """A bridge in ``namespace`` holding its first address; returns the network and that address."""
        net = Network(namespace, "br0", ipaddress.IPv4Network(subnet), None)
        namespace.ip("link", "add", net.bridge, "type", "bridge")
        namespace.ip("link", "set", net.bridge, "up")
        address = net.next_address()
        namespace.ip("addr", "add", f"{address}/{net.prefixlen}", "dev", net.bridge)
        if gateway:
            net.gateway = address
        return net, address

    def public(self, subnet: str = PUBLIC_SUBNET) -> tuple[Network, Host]:
        """The "internet": a bridge in a namespace that also serves (relay, STUN/TURN) at its first address.

        It forwards nothing: a packet for a private address ends there, as it would on the internet.
        """
        ns = self.namespace("public")
        net, address = self.network(ns, subnet, gateway=False)
        return net, Host(ns, address, net.bridge)

    def attach(self, namespace: Namespace, network: Network, *, interface: str = "eth0") -> Host:
        """Plug ``namespace`` into ``network`` with the next free address and a default route."""
        port = network.next_port()
        self.link(namespace, interface, network.namespace, port)
        network.namespace.ip("link", "set", port, "master", network.bridge)
        address = network.next_address()
        namespace.ip("addr", "add", f"{address}/{network.prefixlen}", "dev", interface)
        if network.gateway is not None:
            namespace.ip("route", "add", "default", "via", network.gateway)
        return Host(namespace, address, interface)

    def host(self, role: str, network: Network) -> Host:
        return self.attach(self.namespace(role), network)

    def router(
        self, role: str, upstream: Network, lan_subnet: str, nat: Nat, *, block_udp: bool = False
    ) -> Router:
        """A home router: ``wan`` on ``upstream``, a LAN bridge on ``lan_subnet`` (its first
        address is the LAN's gateway), forwarding with NAT; nothing from outside gets in unasked.

        ``block_udp`` drops every UDP packet towards the upstream network, as some corporate and
        guest networks do: only TCP (and TURN over TCP) leaves.
        """
        ns = self.namespace(role)
        wan = self.attach(ns, upstream, interface="wan")
        lan, _gateway = self.network(ns, lan_subnet, gateway=True)
        ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        rules = NAT_RULES.format(
            masquerade_flags=" random,fully-random" if nat is Nat.SYMMETRIC else "",
            block_udp='        oifname "wan" meta l4proto udp drop\n' if block_udp else "",
        )
        ns.run("nft", "-f", "-", stdin=rules)
        return Router(ns, wan, lan)

    def close(self) -> None:
        """Kill what still runs inside, then delete every namespace (and with it its links and rules)."""
        for ns in self._created:
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        errors = [ns.name for ns in reversed(self._created) if not _delete_namespace(ns.name)]
        self._created.clear()
        if errors:
            raise RuntimeError(f"could not delete network namespaces {errors}")


def _delete_namespace(name: str) -> bool:
    """``ip netns del``, retried while a killed process inside is still exiting."""
    deadline = time.monotonic() + 5
    while True:
        result = subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False, timeout=10)
        if result.returncode == 0 or name not in namespaces():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def remove_stale_namespaces() -> None:
    """Delete namespaces of test runs that were killed before their teardown (their pid is gone)."""
    for match in _NAME.finditer("\n".join(namespaces())):
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            _delete_namespace(match.group(1))
        except PermissionError:
            pass  # alive, another user's

"""NAT traversal for real: the daemon, petcam-view, petcam-relay and coturn in network namespaces behind
Linux NAT routers (tests/netns.py), each as the process it is in production.

The "internet" is one namespace holding a bridge: the relay and coturn serve there at 198.18.0.1,
routers and public hosts plug into it. Each private LAN is a bridge inside its router, which
masquerades towards the internet: endpoint-independent (Linux's port-preserving default) or
symmetric (``random,fully-random``), optionally dropping all UDP. ICE in each namespace gathers that
namespace's veth address only (aioice lists non-loopback interfaces), so nothing is pinned.

Each path scenario pairs a viewer through the relay and watches; the viewer's ``--json`` result
names the selected candidate pair's type (host, srflx, relay), which the test prints and checks.
The nettest scenarios run ``run_nettest`` inside a namespace and check the NAT it classifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH
from tests.coturn import Coturn, rest_credentials, running_coturn
from tests.dbus_daemon import private_bus
from tests.netns import PUBLIC_SUBNET, Host, Nat, Network, Router, Topology, namespaces, require_netns
from tests.test_relay_mode import RelayProcess

ROOT = Path(__file__).resolve().parent.parent
RELAY_PORT = 8080
TURN_SECRET = "petcam-nat-test-secret"  # noqa: S105 - the test coturn's REST secret
PRIVATE_A = "10.1.0.0/24"
PRIVATE_B = "172.16.2.0/24"

pytestmark = pytest.mark.usefixtures("netns_available")


@pytest.fixture
def netns_available() -> None:
    require_netns()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


# -- the network ---------------------------------------------------------------------------------


@dataclass
class Internet:
    topo: Topology
    network: Network
    server: Host
    """Where the relay and coturn run."""

    def behind(self, role: str, nat: Nat, subnet: str, *, block_udp: bool = False) -> Router:
        return self.topo.router(f"router{role}", self.network, subnet, nat, block_udp=block_udp)

    def alternate_address(self) -> str:
        """A second address for the server (RFC 5780's alternate address)."""
        address = self.network.next_address()
        self.server.namespace.ip(
            "addr", "add", f"{address}/{self.network.prefixlen}", "dev", self.server.interface
        )
        return address


@contextlib.contextmanager
def internet(label: str) -> Iterator[Internet]:
    with Topology(label) as topo:
        network, server = topo.public()
        # Like a server on the internet: packets to addresses nobody routes vanish upstream, they
        # do not fail at once (a send error, "network unreachable" or a blackhole route's
        # "invalid argument", makes coturn drop the whole allocation). An "upstream router" that
        # is only a permanent neighbour entry: frames to its MAC address are dropped on the bridge.
        upstream = str(ipaddress.ip_network(PUBLIC_SUBNET)[-2])
        server.namespace.run(
            "ip",
            "neigh",
            "add",
            upstream,
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            server.interface,
            "nud",
            "permanent",
        )
        server.namespace.run("ip", "route", "add", "default", "via", upstream, "dev", server.interface)
        yield Internet(topo, network, server)


@contextlib.contextmanager
def coturn_at(host: Host, directory: Path, addresses: Sequence[str] = (), **kwargs: Any) -> Iterator[Coturn]:
    """coturn inside ``host``'s namespace; its free ports are picked and checked from there too."""
    with contextlib.ExitStack() as stack:

        def start() -> Coturn:
            return stack.enter_context(
                running_coturn(
                    directory,
                    addresses=addresses or (host.address,),
                    prefix=host.prefix,
                    **kwargs,
                )
            )

        yield host.namespace.call(start)


@contextlib.asynccontextmanager
async def relay_at(host: Host, directory: Path, extra_config: str = "") -> AsyncIterator[RelayProcess]:
    origin = f"http://{host.address}:{RELAY_PORT}"
    relay = RelayProcess(directory, RELAY_PORT, origin, address=host.address, prefix=host.prefix)
    if extra_config:
        relay.config.write_text(relay.config.read_text() + extra_config)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


# -- the daemon and the viewer, each in its namespace ----------------------------------------------

DAEMON_CONFIG = """
[camera]
source = "test"
[stream]
width = 320
height = 240
fps = 15
bitrate = 300000
[network]
mode = "internet"
relay_url = "{relay_url}"
ice_servers = {ice_servers}
mdns = false
[pairing]
display = "none"
[state]
directory = "state"
[control]
bus = "session"
"""


class NamespacedDaemon:
    """``python -m petcamd --config FILE`` inside a namespace, controlled over a private session bus
    (a unix socket path, which reaches across network namespaces)."""

    def __init__(self, host: Host, directory: Path, bus_address: str, relay_url: str, ice: Sequence[str]):
        directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.directory = directory
        self.bus_address = bus_address
        self.config = directory / "petcamd.toml"
        self.config.write_text(DAEMON_CONFIG.format(relay_url=relay_url, ice_servers=json.dumps(list(ice))))
        self.log_path = directory / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._bus: MessageBus | None = None
        self._iface: Any = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, within: float = 30.0) -> None:
        """Returns once the daemon is on the bus and registered at the relay."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.host.prefix,
                sys.executable,
                "-m",
                "petcamd",
                "--config",
                str(self.config),
                env=_env(DBUS_SESSION_BUS_ADDRESS=self.bus_address),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.directory,
            )
        self._bus = await MessageBus(bus_address=self.bus_address).connect()
        deadline = time.monotonic() + within
        while self._iface is None:
            try:
                introspection = await self._bus.introspect(BUS_NAME, OBJECT_PATH)
            except DBusError:  # not on the bus yet
                self._check_alive(deadline)
                await asyncio.sleep(0.1)
                continue
            proxy = self._bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection)
            self._iface = proxy.get_interface(INTERFACE)
        while ((await self.status()).get("relay") or {}).get("state") != "registered":
            self._check_alive(deadline)
            await asyncio.sleep(0.1)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"the daemon exited ({self.proc.returncode}):\n{self.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the daemon did not register at the relay:\n{self.log()}")

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self._iface.call_get_status())
        return result

    async def pairing_url(self) -> str:
        url, _expires = await self._iface.call_start_pairing()
        return str(url)

    async def stop(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def daemon_at(
    host: Host, directory: Path, bus_address: str, relay_url: str, ice: Sequence[str]
) -> AsyncIterator[NamespacedDaemon]:
    daemon = NamespacedDaemon(host, directory, bus_address, relay_url, ice)
    try:
        await daemon.start()
        yield daemon
    except BaseException:
        print(f"daemon log:\n{daemon.log()[-4000:]}")  # shown with the failure
        raise
    finally:
        await daemon.stop()


async def petcam_view(host: Host, state_dir: Path, *args: str, timeout_s: float = 45.0) -> dict[str, Any]:
    """``petcam-view --state-dir DIR ARGS --json`` inside ``host``'s namespace; its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        *host.prefix,
        sys.executable,
        "-m",
        "petcamd.viewer.cli",
        "--state-dir",
        str(state_dir),
        *args,
        "--json",
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"petcam-view {args[0]} exited {proc.returncode}:\n{err.decode()}"
    result: dict[str, Any] = json.loads(out)
    return result


# -- media path scenarios ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    device_nat: Nat
    viewer: str
    """``same-lan`` (the device's LAN), ``public`` (no NAT) or ``nat`` (its own LAN behind ``viewer_nat``)."""
    expected_path: str
    viewer_nat: Nat = Nat.ENDPOINT_INDEPENDENT
    block_udp: bool = False
    """The device's router drops all UDP."""
    turn: str | None = None
    """``udp`` or ``tcp``: the TURN transport the device is told to use."""


PRODUCTION_TURN = [
    # As docs/deploy-relay.md configures coturn: never relay into private networks.
    "--denied-peer-ip=10.0.0.0-10.255.255.255",
    "--denied-peer-ip=172.16.0.0-172.31.255.255",
    "--denied-peer-ip=192.168.0.0-192.168.255.255",
    "--verbose",  # allocations and refusals in the log shown when a scenario fails
]


def ice_and_turn(coturn: Coturn, scenario: Scenario, directory: Path) -> tuple[tuple[str, ...], str]:
    """The device's ``ice_servers`` and the relay's ``[turn]`` section.

    The device is configured with STUN only; the relay offers STUN to everyone (a viewer behind NAT
    needs it to tell the device its public address) and, in the TURN scenarios, a TURN URL with
    short-lived REST credentials for coturn's shared secret (docs/deploy-relay.md, "TURN").
    """
    urls = [coturn.url("stun")]
    secret = ""
    if scenario.turn is not None:
        urls.append(coturn.url("turn", transport=scenario.turn))
        secret_file = directory / "turn-secret"
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(TURN_SECRET)
        secret = f'secret_file = "{secret_file}"\n'
    listed = ", ".join(f'"{url}"' for url in urls)
    return (coturn.url("stun"),), f"[turn]\nurls = [{listed}]\n{secret}ttl_s = 3600\n"


EIM, SYMMETRIC = Nat.ENDPOINT_INDEPENDENT, Nat.SYMMETRIC
CASES: list[tuple[Scenario, tuple[pytest.MarkDecorator, ...]]] = [
    (Scenario("same-lan", EIM, "same-lan", "host"), ()),
    (Scenario("device-behind-nat-viewer-public", EIM, "public", "srflx"), ()),
    (Scenario("both-behind-nat", EIM, "nat", "srflx"), ()),
    (Scenario("symmetric-nat-turn", SYMMETRIC, "nat", "relay", turn="udp"), ()),
    (Scenario("udp-blocked-turn-tcp", EIM, "nat", "relay", block_udp=True, turn="tcp"), ()),
]
SCENARIOS = [pytest.param(scenario, id=scenario.name, marks=marks) for scenario, marks in CASES]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_media_path(tmp_path: Path, scenario: Scenario, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    with internet("nat") as net, private_bus(tmp_path) as bus_address:
        device_lan = net.behind("a", scenario.device_nat, PRIVATE_A, block_udp=scenario.block_udp).lan
        device_host = net.topo.host("device", device_lan)
        viewer_network = {
            "same-lan": lambda: device_lan,
            "public": lambda: net.network,
            "nat": lambda: net.behind("b", scenario.viewer_nat, PRIVATE_B).lan,
        }[scenario.viewer]()
        viewer_host = net.topo.host("viewer", viewer_network)
        with coturn_at(
            net.server, tmp_path / "coturn", auth_secret=TURN_SECRET, extra_args=["--verbose"]
        ) as stun:
            ice, relay_config = ice_and_turn(stun, scenario, tmp_path / "secrets")
            async with (
                relay_at(net.server, tmp_path / "relay", relay_config),
                daemon_at(
                    device_host,
                    tmp_path / "device",
                    bus_address,
                    f"ws://{net.server.address}:{RELAY_PORT}/",
                    ice,
                ) as daemon,
            ):
                url = await daemon.pairing_url()
                state = tmp_path / "viewer"
                await petcam_view(viewer_host, state, "pair", url, "--via", "relay", "--name", "NAT viewer")
                result = await petcam_view(viewer_host, state, "watch", "--frames", "10", "--via", "relay")
    with capsys.disabled():  # the selected pair of every scenario, in CI's output too
        print(
            f"\n{scenario.name}: path={result['path']} signaling={result['signaling']} "
            f"first frame {result['first_frame_s']} s, {time.monotonic() - started:.1f} s in all"
        )
    assert result["signaling"] == "relay"
    assert result["frames_decoded"] >= 10
    assert result["path"] == scenario.expected_path


# -- nettest inside the namespaces -------------------------------------------------------------

NETTEST = """
import asyncio, json, sys
from petcamd.control.nettest import NettestSettings, run_nettest

args = json.loads(sys.argv[1])
args["ice_servers"] = tuple(args["ice_servers"])
print(json.dumps(asyncio.run(run_nettest(NettestSettings(**args))).to_dict()))
"""


def nettest_at(host: Host, **settings: Any) -> dict[str, Any]:
    """``run_nettest`` (with these NettestSettings) in a process inside ``host``'s namespace: its report."""
    result = subprocess.run(
        [*host.prefix, sys.executable, "-c", NETTEST, json.dumps(settings)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("nat", "expected", "verdict"),
    [
        (Nat.ENDPOINT_INDEPENDENT, "endpoint_independent", "direct connections should work"),
        (Nat.SYMMETRIC, "address_and_port_dependent", "(symmetric NAT): outside viewers will need the TURN"),
        (None, "no_nat", "The camera has a public address (no NAT)"),
    ],
    ids=["endpoint-independent", "symmetric", "no-nat"],
)
async def test_nettest_classifies_the_nat(
    tmp_path: Path, nat: Nat | None, expected: str, verdict: str
) -> None:
    """One coturn with an alternate address (RFC 5780): three destinations, two addresses, two ports."""
    with internet("nettest") as net:
        alternate = net.alternate_address()
        router = None if nat is None else net.behind("a", nat, PRIVATE_A)
        host = net.topo.host("device", net.network if router is None else router.lan)
        with coturn_at(net.server, tmp_path / "coturn", addresses=(net.server.address, alternate)) as stun:
            async with relay_at(net.server, tmp_path / "relay"):
                report = await asyncio.to_thread(
                    nettest_at,
                    host,
                    relay_url=f"ws://{net.server.address}:{RELAY_PORT}/",
                    ice_servers=[stun.url("stun")],
                )
    mapping = report["nat"]
    print(f"\n{nat}: mapping={mapping['mapping']} local={mapping['local']} public={mapping['public']}")
    print("\n".join(f"  {o['destination']} saw {o['mapped']}" for o in mapping["observations"]))
    assert mapping["mapping"] == expected
    assert report["relay"]["reachable"] is True  # through the NAT, too
    assert report["relay"]["origin_ok"] is True
    assert any(verdict in finding["text"] for finding in report["verdict"]), report["verdict"]
    destinations = {o["destination"] for o in mapping["observations"]}
    assert destinations == {
        f"{net.server.address}:{stun.port}",
        f"{alternate}:{stun.port}",
        f"{alternate}:{stun.port + 1}",
    }
    public = {o["mapped"].rsplit(":", 1)[0] for o in mapping["observations"]}
    assert public == {host.address if router is None else router.wan.address}
    mapped = {o["mapped"] for o in mapping["observations"]}
    assert len(mapped) == (3 if nat is Nat.SYMMETRIC else 1)  # a new port per destination, or one


@pytest.mark.timeout(60)
async def test_nettest_with_udp_blocked_finds_turn_over_tcp_only(tmp_path: Path) -> None:
    """The router drops UDP: no STUN answer, no TURN over UDP, but a TURN allocation over TCP."""
    with internet("nettest") as net:
        router = net.behind("a", Nat.ENDPOINT_INDEPENDENT, PRIVATE_A, block_udp=True)
        host = net.topo.host("device", router.lan)
        with coturn_at(net.server, tmp_path / "coturn", auth_secret=TURN_SECRET) as turn:
            username, password = rest_credentials(TURN_SECRET)
            report = await asyncio.to_thread(
                nettest_at,
                host,
                relay_url="",
                ice_servers=[turn.url("stun"), turn.url("turn"), turn.url("turn", transport="tcp")],
                turn_username=username,
                turn_password=password,
                stun_timeout_s=1.0,
                turn_timeout_s=1.0,
            )
    print(f"\nUDP blocked: {[(t['transport'], t['allocated'], t['error']) for t in report['turn']]}")
    assert report["nat"]["mapping"] == "unknown"
    assert report["stun"][0]["error"] == "no answer within 1 s"
    by_transport = {t["transport"]: t for t in report["turn"]}
    assert by_transport["udp"]["allocated"] is False
    assert by_transport["tcp"]["allocated"] is True
    assert by_transport["tcp"]["mapped"].startswith(f"{router.wan.address}:")  # through the NAT
    assert by_transport["tcp"]["released"] is True
    assert any("outgoing UDP may be blocked" in f["text"] for f in report["verdict"]), report["verdict"]


# -- the topology itself ---------------------------------------------------------------------------


def _host_state() -> tuple[list[str], str]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in links.splitlines()), tables


def test_teardown_leaves_nothing_behind_when_the_test_fails() -> None:
    before = _host_state()
    left: list[tuple[str, subprocess.Popen[bytes]]] = []

    def failing_test() -> None:
        with Topology("teardown") as topo:
            network, _server = topo.public()
            router = topo.router("router", network, PRIVATE_A, Nat.SYMMETRIC, block_udp=True)
            host = topo.host("device", router.lan)
            left.append((topo.prefix, subprocess.Popen([*host.prefix, "sleep", "60"])))
            assert len([n for n in namespaces() if n.startswith(topo.prefix)]) == 3
            assert "petcam_nat" in router.namespace.run("nft", "list", "tables")
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        failing_test()
    [(prefix, sleeper)] = left
    assert sleeper.wait(5) == -signal.SIGKILL  # a process left inside is killed, not waited for
    assert not [n for n in namespaces() if n.startswith(prefix)]
    assert _host_state() == before  # no veth, bridge or nft table in the host's namespace


def test_namespaces_of_a_killed_run_are_removed_by_the_next() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"pcm-crashed-{dead.pid}-1-device"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Topology("next") as topo:
            assert stale not in namespaces()
            assert topo.prefix.startswith(f"pcm-next-{os.getpid()}-")
    finally:
        subprocess.run(["ip", "netns", "del", stale], check=False, capture_output=True)

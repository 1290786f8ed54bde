"""mDNS advertisement, seen by a real python-zeroconf browser on a network the test builds.

Network: every multicast packet stays inside two network namespaces this module creates and
deletes (A: the advertiser, B: the browser), joined by a veth pair with 10.231.1.1/24 (A) and
10.231.1.2/24 (B). Nothing is sent on the host's own interfaces. Loopback was not used because the
host's `lo` has no MULTICAST flag and flipping it would change the host; a veth pair carries
multicast like a LAN does, with no sysctl or flag to set.

The zeroconf advertiser runs as a child process inside namespace A (`ip netns exec`), so it sees A's
interfaces and addresses exactly as the daemon would see a Pi's. The browser runs in this process: its
sockets are created while this thread is switched into namespace B with setns(2), and sockets keep
their namespace for life; the thread switches back at once.

avahi: a real avahi-daemon runs in namespace A on a private, system-like dbus-daemon. avahi-daemon
connects with libdbus's `dbus_bus_get_private(DBUS_BUS_SYSTEM)`, which honours
DBUS_SYSTEM_BUS_ADDRESS, so no bind mount over /run/dbus/system_bus_socket is needed; it gets its
own tmpfs on /run inside the mount namespace `ip netns exec` creates, so its pid file and socket never
touch the host's /run/avahi-daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from petcamd.signaling import mdns
from petcamd.signaling.mdns import SERVICE_TYPE_FQDN, TXT_KEYS, MdnsAdvertiser, instance_name, txt_record
from tests.dbus_daemon import private_bus, system_bus
from tests.netns import Topology, in_netns, ip

ROOT = Path(__file__).resolve().parent.parent
DEVICE_ID = "abcdefghijklmnop"
SECRET_LOOKING = re.compile(r"key|secret|psk|token|pass|pair|priv|seed", re.IGNORECASE)
ADDRESS_A = "10.231.1.1"
ADDRESS_B = "10.231.1.2"

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)


# -- pure functions ---------------------------------------------------------------------------


def test_txt_record_is_public_identification_only() -> None:
    txt = txt_record(DEVICE_ID, "Küche")
    assert tuple(txt) == TXT_KEYS
    assert txt == {"txtvers": "1", "proto": "1", "id": DEVICE_ID, "name": "Küche"}
    assert not [k for k in txt if SECRET_LOOKING.search(k)]


def test_txt_name_entry_fits_one_txt_string() -> None:
    txt = txt_record(DEVICE_ID, "ü" * 300)
    assert len(f"name={txt['name']}".encode()) <= 255
    assert set(txt["name"]) == {"ü"}  # cut between characters, never inside one


@pytest.mark.parametrize(
    ("device_name", "expected"),
    [
        ("Küche", "Küche"),
        ("Mr. Whiskers", "Mr Whiskers"),  # a dot would split the DNS label for zeroconf peers
        ("tab\there\nnewline", "tab here newline"),
        ("back\\slash", "back slash"),
        ("  \u200b ", "petcam abcdef"),  # nothing printable left
        ("Pet\u202ecam", "Petcam"),  # no bidi override to disguise the name
        ("👩\u200d💻 desk", "👩\u200d💻 desk"),  # the joiner inside an emoji stays
        ("📷" * 40, "📷" * 14),  # 56 bytes: room for the suffix a collision adds
    ],
)
def test_instance_name(device_name: str, expected: str) -> None:
    assert instance_name(device_name, DEVICE_ID) == expected
    assert len(instance_name(device_name, DEVICE_ID).encode()) <= 56


# -- lifecycle without any network ----------------------------------------------------------


async def test_loopback_bind_advertises_nothing_and_stop_is_idempotent() -> None:
    adv = MdnsAdvertiser(DEVICE_ID, "cam", 8080, bind_address="127.0.0.1")
    await adv.stop()  # before start
    adv = MdnsAdvertiser(DEVICE_ID, "cam", 8080, bind_address="127.0.0.1")
    await adv.start()
    assert adv.status == mdns.MdnsStatus(None, None)
    await adv.stop()
    await adv.stop()


async def test_no_bus_and_no_lan_address_is_logged_once_and_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No system bus and no LAN address: one warning, one note, no socket opened, a prompt stop."""
    caplog.set_level(logging.DEBUG, logger="petcamd.signaling.mdns")
    adv = MdnsAdvertiser(
        DEVICE_ID,
        "cam",
        8080,
        bus_address=f"unix:path={tmp_path / 'no-such-bus'}",
        addresses=list,  # nothing but loopback: zeroconf must not bind at all
        poll_interval_s=0.02,
        bus_retry_s=0.0,
    )
    await adv.start()
    await asyncio.sleep(0.3)
    assert adv.status.backend is None
    started = time.monotonic()
    await adv.stop()
    assert time.monotonic() - started < 0.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no D-Bus system bus" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos.count("mDNS: waiting for a LAN address") == 1


async def test_forced_avahi_backend_without_avahi_waits_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="petcamd.signaling.mdns")
    with private_bus(tmp_path) as address:
        adv = MdnsAdvertiser(
            DEVICE_ID, "cam", 8080, backend="avahi", bus_address=address, poll_interval_s=0.02
        )
        await adv.start()
        await asyncio.sleep(0.3)
        assert adv.status.backend is None
        await adv.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["mDNS: avahi-daemon is not on the bus; waiting for it"]


async def test_non_ascii_strings_cross_a_real_bus(tmp_path: Path) -> None:
    """`dbus_string` keeps the connection alive where dbus-fast < 2.11.1 alone gets it dropped.

    The bus daemon echoes the name it could not find in its error text, so the round trip shows the
    bytes arrived intact; the control call shows the library bug is real on this version.
    """
    name = "org.example.Küche"

    async def get_name_owner(bus: MessageBus, value: str) -> Message | None:
        msg = Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetNameOwner",
            signature="s",
            body=[value],
        )
        return await asyncio.wait_for(bus.call(msg), 2)

    with private_bus(tmp_path) as address:
        bus = await MessageBus(bus_address=address).connect()
        try:
            reply = await get_name_owner(bus, mdns.dbus_string(name))
            assert reply is not None
            assert reply.message_type == MessageType.ERROR
            assert "Küche" in str(reply.body[0])
            assert bus.connected
        finally:
            bus.disconnect()
        if mdns._UTF8_LENGTHS_OK:
            return
        bus = await MessageBus(bus_address=address).connect()
        try:
            with pytest.raises((EOFError, ConnectionError, asyncio.TimeoutError)):
                await get_name_owner(bus, name)  # plain str: the daemon drops the connection
            # Retrieve the bus's own record of the drop, or asyncio logs it as never retrieved
            # whenever it is collected: in some later test, which then sees an ERROR record.
            with pytest.raises((EOFError, ConnectionError)):
                await asyncio.wait_for(bus.wait_for_disconnect(), 2)  # type: ignore[no-untyped-call]
        finally:
            bus.disconnect()


# -- namespaces, browser, child advertiser --------------------------------------------------

VETH_A = "veth-a"
VETH_B = "veth-b"


@contextlib.contextmanager
def netns_pair() -> Iterator[tuple[str, str]]:
    """Namespaces A and B joined by a veth pair (tests/netns.py takes them down again)."""
    with Topology("mdns") as topo:
        ns_a, ns_b = topo.namespace("a"), topo.namespace("b")
        topo.link(ns_a, VETH_A, ns_b, VETH_B)
        ns_a.ip("addr", "add", f"{ADDRESS_A}/24", "dev", VETH_A)
        ns_b.ip("addr", "add", f"{ADDRESS_B}/24", "dev", VETH_B)
        yield ns_a.name, ns_b.name


class Browser:
    """A python-zeroconf browser whose sockets live in namespace `netns`, bound to `address`."""

    def __init__(self, netns: str, address: str) -> None:
        with in_netns(netns):
            self.zc = AsyncZeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
        self.events: list[tuple[ServiceStateChange, str]] = []
        self._changed = asyncio.Event()
        self._browser = AsyncServiceBrowser(self.zc.zeroconf, SERVICE_TYPE_FQDN, handlers=[self._on_change])

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        self.events.append((state_change, name))
        self._changed.set()

    async def wait_for(self, state: ServiceStateChange, name: str, within: float, since: int = 0) -> int:
        """Index of the first such event at or after `since`."""
        deadline = time.monotonic() + within
        while True:
            for i, event in enumerate(self.events[since:], start=since):
                if event == (state, name):
                    return i
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {state.name} for {name!r} in {within} s; events: {self.events}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def resolve(self, name: str) -> AsyncServiceInfo:
        info = AsyncServiceInfo(SERVICE_TYPE_FQDN, name)
        assert await info.async_request(self.zc.zeroconf, 3000), f"{name} did not resolve"
        return info

    async def addresses_become(self, name: str, expected: set[str], within: float) -> None:
        deadline = time.monotonic() + within
        seen: set[str] = set()
        while time.monotonic() < deadline:
            info = AsyncServiceInfo(SERVICE_TYPE_FQDN, name)
            if await info.async_request(self.zc.zeroconf, 500):
                seen = set(info.parsed_addresses())
                if seen == expected:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"addresses of {name}: {seen}, expected {expected}")

    async def close(self) -> None:
        await self._browser.async_cancel()
        await self.zc.async_close()


def assert_txt(info: AsyncServiceInfo, name: str) -> None:
    properties = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    assert properties == {"txtvers": "1", "proto": "1", "id": DEVICE_ID, "name": name}
    assert not [k for k in properties if SECRET_LOOKING.search(k)]
    assert not [v for v in properties.values() if len(v) >= 32]  # nothing key-sized either


CHILD = """
import asyncio, json, logging, sys
from petcamd.signaling.mdns import MdnsAdvertiser

async def report_status(adv: MdnsAdvertiser) -> None:
    last = None
    while True:
        if adv.status != last:
            last = adv.status
            print(json.dumps({"backend": last.backend, "name": last.name}), flush=True)
        await asyncio.sleep(0.02)

async def main() -> None:
    args = json.loads(sys.argv[1])
    adv = MdnsAdvertiser(**args)
    await adv.start()
    reporter = asyncio.create_task(report_status(adv))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes it
    reporter.cancel()
    started = asyncio.get_running_loop().time()
    await adv.stop()
    print(json.dumps({"stop_s": asyncio.get_running_loop().time() - started}), flush=True)

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
logging.getLogger("asyncio").setLevel(logging.WARNING)
asyncio.run(main())
"""


@contextlib.contextmanager
def advertiser_in(netns: str, **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, json.dumps(kwargs)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


async def wait_for_status(proc: subprocess.Popen[str], backend: str, name: str, within: float) -> None:
    """Read the child's status lines until it reports `name` published through `backend`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), deadline - time.monotonic())
        if not line:
            break
        if json.loads(line) == {"backend": backend, "name": name}:
            return
    raise AssertionError(f"the advertiser never reported {name!r} through {backend}")


def finish(proc: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """Close the child's stdin (its signal to stop), and return its report and its log."""
    out, err = proc.communicate(input="", timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return json.loads(out.strip().splitlines()[-1]), err


# -- zeroconf backend, for real ----------------------------------------------------------------


@needs_netns
@pytest.mark.timeout(30)
async def test_zeroconf_advertisement_is_discovered_reannounced_and_withdrawn(tmp_path: Path) -> None:
    name = "Küche Cam"
    full = f"{name}.{SERVICE_TYPE_FQDN}"
    with netns_pair() as (ns_a, ns_b), private_bus(tmp_path) as bus_address:
        browser = Browser(ns_b, ADDRESS_B)
        try:
            # auto: a system bus without avahi on it, so python-zeroconf is chosen
            with advertiser_in(
                ns_a,
                device_id=DEVICE_ID,
                device_name=name,
                port=8123,
                bus_address=bus_address,
                poll_interval_s=0.2,
            ) as child:
                await browser.wait_for(ServiceStateChange.Added, full, within=8)
                info = await browser.resolve(full)
                assert info.port == 8123
                assert info.server == f"petcam-{DEVICE_ID}.local."
                assert info.parsed_addresses() == [ADDRESS_A]  # the LAN address only: no loopback
                assert_txt(info, name)

                # a second link comes up with an IPv4 address: zeroconf is rebound and re-announces
                second = "veth-c"
                ip(*f"link add {second} netns {ns_a} type veth peer name veth-d netns {ns_b}".split())
                ip("-n", ns_a, "addr", "add", "10.231.2.1/24", "dev", second)
                ip("-n", ns_a, "link", "set", second, "up")
                ip("-n", ns_b, "link", "set", "veth-d", "up")
                await browser.addresses_become(full, {ADDRESS_A, "10.231.2.1"}, within=8)

                # a new IPv6 address on an existing interface: announced by updating the service
                mark = len(browser.events)
                ip("-n", ns_a, "addr", "add", "fd42:231::1/64", "dev", second, "nodad")
                await browser.addresses_become(full, {ADDRESS_A, "10.231.2.1", "fd42:231::1"}, within=8)
                assert (ServiceStateChange.Removed, full) not in browser.events[mark:]

                mark = len(browser.events)
                report, log_text = await asyncio.to_thread(finish, child)
            await browser.wait_for(ServiceStateChange.Removed, full, within=3, since=mark)
            assert report["stop_s"] < 1.0, report
            assert "avahi-daemon is not running; using python-zeroconf" in log_text
            assert "is taken" not in log_text, log_text  # nobody else has the name
            assert "WARNING" not in log_text, log_text
        finally:
            await browser.close()


@needs_netns
@pytest.mark.timeout(30)
async def test_zeroconf_that_cannot_bind_is_logged_once_and_retried() -> None:
    name = "Porch"
    full = f"{name}.{SERVICE_TYPE_FQDN}"
    with netns_pair() as (ns_a, ns_b):
        with in_netns(ns_a):
            blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEADDR/PORT
            blocker.bind(("0.0.0.0", 5353))  # noqa: S104 - inside namespace A only
        browser = Browser(ns_b, ADDRESS_B)
        try:
            with advertiser_in(
                ns_a,
                device_id=DEVICE_ID,
                device_name=name,
                port=8124,
                backend="zeroconf",
                poll_interval_s=0.1,
            ) as child:
                await asyncio.sleep(1.5)  # about a dozen failed attempts
                blocker.close()
                await browser.wait_for(ServiceStateChange.Added, full, within=8)
                assert_txt(await browser.resolve(full), name)
                await wait_for_status(child, "zeroconf", name, within=5)
                _report, log_text = await asyncio.to_thread(finish, child)
        finally:
            blocker.close()
            await browser.close()
    warnings = [line for line in log_text.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, log_text
    assert "cannot advertise through zeroconf" in warnings[0]
    assert "Address already in use" in warnings[0]
    assert "ERROR" not in log_text  # zeroconf's own error at every retry is kept out of the log
    assert f"advertising {name!r} through zeroconf again" in log_text


# -- avahi backend, for real -------------------------------------------------------------------

AVAHI_CONFIG = """[server]
host-name=petcamtest
use-ipv4=yes
use-ipv6=no
allow-interfaces={interface}
enable-dbus=yes
ratelimit-interval-usec=0
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
[reflector]
enable-reflector=no
"""

AVAHI_POLICY = next(
    (
        p
        for p in (
            Path("/usr/share/dbus-1/system.d/avahi-dbus.conf"),
            Path("/etc/dbus-1/system.d/avahi-dbus.conf"),
        )
        if p.exists()
    ),
    None,
)


def require_avahi() -> None:
    """Skip without avahi-daemon, except in CI, where a missing package must not pass as a skip."""
    if shutil.which("avahi-daemon") is not None and AVAHI_POLICY is not None:
        return
    message = "avahi-daemon is not installed (apt-get install avahi-daemon)"
    if os.environ.get("PETCAMD_REQUIRE_SYSTEM_SUITE") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def system_like_bus(directory: Path) -> Iterator[str]:
    """A system-type bus with avahi's own policy, as installed by the avahi-daemon package."""
    assert AVAHI_POLICY is not None, "call require_avahi() first"
    with system_bus(directory, AVAHI_POLICY) as address:
        yield address


class AvahiDaemon:
    """avahi-daemon in namespace `netns`, on the bus at `bus_address`, with a private /run."""

    def __init__(self, netns: str, bus_address: str, directory: Path) -> None:
        self._netns = netns
        self._env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus_address}
        self._config = directory / "avahi-daemon.conf"
        self._config.write_text(AVAHI_CONFIG.format(interface=VETH_A))
        self._log = directory / "avahi.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = (
            "mount -t tmpfs tmpfs /run && mkdir /run/avahi-daemon && exec avahi-daemon "
            f"--no-drop-root --no-chroot --no-rlimits --no-proc-title -f {self._config}"
        )
        with self._log.open("ab") as log_file:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self._netns, "sh", "-c", script],
                env=self._env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def log(self) -> str:
        return self._log.read_text(errors="replace")


async def wait_for_bus_name(bus_address: str, name: str, within: float) -> None:
    bus = await MessageBus(bus_address=bus_address).connect()
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=[name],
                )
            )
            if reply is not None and reply.body == [True]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name} not on the bus after {within} s")
    finally:
        bus.disconnect()


@needs_netns
@pytest.mark.timeout(40)
async def test_avahi_backend_with_a_real_avahi_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Selection, non-ASCII name, TXT, collision rename, avahi restart and withdrawal, all through
    avahi-daemon's real D-Bus API, seen by a python-zeroconf browser on the other side of the veth.

    The advertisers run in this process, outside namespace A: they talk to avahi only over D-Bus.
    `addresses=list` keeps their zeroconf fallback silent, so any packet the browser sees was sent
    by avahi-daemon.
    """
    require_avahi()
    caplog.set_level(logging.INFO, logger="petcamd.signaling.mdns")
    name = "Küche"
    full = f"{name}.{SERVICE_TYPE_FQDN}"
    port: list[int | None] = [None]  # the LAN server's port is known only once it is bound
    with netns_pair() as (ns_a, ns_b), system_like_bus(tmp_path) as bus_address:
        avahi = AvahiDaemon(ns_a, bus_address, tmp_path)
        browser: Browser | None = None
        advertisers: list[MdnsAdvertiser] = []
        try:
            browser = Browser(ns_b, ADDRESS_B)
            # petcamd may start before avahi-daemon does at boot
            first = MdnsAdvertiser(
                DEVICE_ID, name, lambda: port[0], bus_address=bus_address, addresses=list, poll_interval_s=0.1
            )
            advertisers.append(first)
            await first.start()
            await asyncio.sleep(0.3)
            assert "mDNS: avahi-daemon is not running; using python-zeroconf" in caplog.messages
            avahi.start()
            await wait_for_bus_name(bus_address, mdns.AVAHI_BUS_NAME, within=5)
            await asyncio.sleep(0.3)
            assert "mDNS: avahi-daemon is on the bus" in caplog.messages
            assert first.status.backend is None  # no port yet
            port[0] = 8125
            await browser.wait_for(ServiceStateChange.Added, full, within=8)
            info = await browser.resolve(full)
            assert info.port == 8125
            assert info.server == "petcamtest.local."  # avahi's host name: avahi published it
            assert info.parsed_addresses(IPVersion.V4Only) == [ADDRESS_A]
            assert_txt(info, name)  # and no avahi cookie in the TXT record
            assert first.status == mdns.MdnsStatus("avahi", name)

            # the same name from another advertiser: renamed as avahi proposes
            second = MdnsAdvertiser(
                DEVICE_ID, name, 8126, bus_address=bus_address, addresses=list, poll_interval_s=0.1
            )
            advertisers.append(second)
            await second.start()
            await browser.wait_for(ServiceStateChange.Added, f"{name} #2.{SERVICE_TYPE_FQDN}", within=8)
            assert (await browser.resolve(f"{name} #2.{SERVICE_TYPE_FQDN}")).port == 8126
            assert second.status == mdns.MdnsStatus("avahi", f"{name} #2")
            await second.stop()
            await browser.wait_for(ServiceStateChange.Removed, f"{name} #2.{SERVICE_TYPE_FQDN}", within=5)

            # avahi-daemon restarts (an upgrade): the service comes back through it
            mark = len(browser.events)
            avahi.stop()
            await browser.wait_for(ServiceStateChange.Removed, full, within=5, since=mark)
            avahi.start()
            await browser.wait_for(ServiceStateChange.Added, full, within=8, since=mark)
            assert (await browser.resolve(full)).server == "petcamtest.local."
            assert first.status == mdns.MdnsStatus("avahi", name)

            mark = len(browser.events)
            started = time.monotonic()
            await first.stop()
            assert time.monotonic() - started < 1.0
            await browser.wait_for(ServiceStateChange.Removed, full, within=5, since=mark)
        finally:
            for adv in advertisers:
                await adv.stop()
            if browser is not None:
                await browser.close()
            avahi.stop()
    assert "dbus_bus_get_private" not in avahi.log(), avahi.log()  # it did reach the private bus
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "mDNS: waiting for a LAN address" not in caplog.messages  # zeroconf never took over

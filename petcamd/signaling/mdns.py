"""Advertises the LAN server as `_petcam._tcp` over mDNS / DNS-SD, so viewers on the LAN find it.

Raspberry Pi OS runs avahi-daemon, which owns the host's mDNS responder: when its D-Bus name
`org.freedesktop.Avahi` has an owner on the system bus, the service is published through it (avahi
then answers for the host name and its addresses, re-announces on address changes and resolves name
collisions with us). Otherwise python-zeroconf is the responder, and this module re-announces when
the host's addresses change.

What is published is public by design (see docs/mdns.md): the device id, the device name and the
protocol version. No key, no secret, no pairing state.

mDNS is a convenience, never a reason to stop: every failure is logged once and retried quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import ipaddress
import logging
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from petcamd.netaddr import lan_addresses
from petcamd.protocol.messages import PROTOCOL_VERSION

log = logging.getLogger(__name__)

SERVICE_TYPE = "_petcam._tcp"
SERVICE_TYPE_FQDN = SERVICE_TYPE + ".local."
TXT_VERSION = "1"
# The keys of the TXT record, in the order they are published; docs/mdns.md describes each.
TXT_KEYS = ("txtvers", "proto", "id", "name")

Backend = Literal["auto", "avahi", "zeroconf"]

_MAX_LABEL_BYTES = 63  # one DNS label
_INSTANCE_BYTES = _MAX_LABEL_BYTES - 7  # room for the " #NNN" / "-NNN" a collision appends
_MAX_TXT_ENTRY_BYTES = 255
_GOODBYE_TIMEOUT_S = 0.75
_AVAHI_RETURN_GRACE_S = 3.0  # avahi restarting (an upgrade) should not flip us to zeroconf and back
_MAX_RENAMES = 20

# org.freedesktop.Avahi D-Bus API (avahi-daemon/org.freedesktop.Avahi.{Server,EntryGroup}.xml and
# avahi-common/defs.h, address.h).
AVAHI_BUS_NAME = "org.freedesktop.Avahi"
_AVAHI_SERVER = "org.freedesktop.Avahi.Server"
_AVAHI_GROUP = "org.freedesktop.Avahi.EntryGroup"
_AVAHI_COLLISION_ERROR = "org.freedesktop.Avahi.CollisionError"
_AVAHI_IF_UNSPEC = -1
_AVAHI_PROTO_UNSPEC = -1
_AVAHI_PUBLISH_NO_COOKIE = 32
_SERVER_RUNNING = 2
_GROUP_UNCOMMITED, _GROUP_REGISTERING, _GROUP_ESTABLISHED, _GROUP_COLLISION, _GROUP_FAILURE = range(5)

_DBUS = "org.freedesktop.DBus"
_DBUS_PATH = "/org/freedesktop/DBus"


def _dbus_fast_marshals_utf8_lengths() -> bool:
    """dbus-fast before 2.11.1 (Debian bookworm ships 1.84) writes a non-ASCII `s` with its character
    count as the length, and the bus then drops the connection (fixed upstream in 2.11.1, PR #261)."""
    try:
        version = importlib.metadata.version("dbus-fast")
    except importlib.metadata.PackageNotFoundError:
        return False
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= (2, 11, 1)


class _Utf8LengthStr(str):
    """A str whose len() is its UTF-8 size: what a buggy dbus-fast writes as the length prefix.

    The affected marshaller (pure Python and Cython alike) takes `len(value)` of an untyped object and
    appends `value.encode()`, so with this subclass the bytes on the wire are exactly those of a
    correct marshaller. tests/test_mdns.py proves it against a real dbus-daemon and avahi-daemon.
    """

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.encode())


_UTF8_LENGTHS_OK = _dbus_fast_marshals_utf8_lengths()


def dbus_string(value: str) -> str:
    """A string argument that crosses the bus intact on every supported dbus-fast."""
    if _UTF8_LENGTHS_OK or value.isascii():
        return value
    return _Utf8LengthStr(value)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _truncate_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def _name_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if ch in ".\\" or category == "Cc" or category.startswith("Z"):
        return " "
    if category.startswith("C") and ch != "\u200d":  # invisible or bidi controls; ZWJ joins emoji
        return ""
    return ch


def instance_name(device_name: str, device_id: str) -> str:
    """The DNS-SD instance name: the device name as a person reads it, fit for one DNS label.

    Dots and backslashes become spaces: avahi would escape them, but python-zeroconf (as browser or
    responder) splits names on dots and cannot resolve such an instance.
    """
    cleaned = "".join(_name_char(ch) for ch in device_name)
    name = _truncate_utf8(" ".join(cleaned.split()), _INSTANCE_BYTES).strip()
    return name or f"petcam {device_id[:6]}"


def txt_record(device_id: str, device_name: str) -> dict[str, str]:
    """The TXT key/values: public identification only (the device id is a hash of its public key)."""
    name_room = _MAX_TXT_ENTRY_BYTES - len(b"name=")
    return {
        "txtvers": TXT_VERSION,
        "proto": str(PROTOCOL_VERSION),
        "id": device_id,
        "name": _truncate_utf8(device_name, name_room),
    }


@dataclass(frozen=True, slots=True)
class Announcement:
    """What should be on the network; a backend compares it with what it last published."""

    instance: str
    port: int
    txt: tuple[tuple[str, str], ...]

    def txt_entries(self) -> list[bytes]:
        return [f"{key}={value}".encode() for key, value in self.txt]


@dataclass(frozen=True, slots=True)
class MdnsStatus:
    backend: str | None  # "avahi", "zeroconf", or None while nothing is published
    name: str | None  # the instance name in use (it differs from the wanted one after a collision)


class _Reporter:
    """Each distinct problem is logged once as a warning, and one line says when publishing works again.

    Notes (waiting for a port, for a LAN address) are logged once per episode at info level.
    """

    def __init__(self) -> None:
        self._problems: set[str] = set()
        self._notes: set[str] = set()

    def problem(self, key: str, message: str, *args: object) -> None:
        level = logging.DEBUG if key in self._problems else logging.WARNING
        self._problems.add(key)
        log.log(level, message, *args)

    def note(self, key: str, message: str, *args: object) -> None:
        if key not in self._notes:
            self._notes.add(key)
            log.info(message, *args)

    def published(self, status: MdnsStatus) -> None:
        if self._problems:
            log.info("mDNS: advertising %r through %s again", status.name, status.backend)
        self._problems.clear()
        self._notes.clear()


class _AvahiError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


async def _call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
) -> list[Any]:
    reply: Message | None = await bus.call(  # None only for calls flagged NO_REPLY_EXPECTED on 1.84
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    if reply is None:
        return []
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise _AvahiError(reply.error_name or "unknown error", text)
    return list(reply.body)


class _AvahiPublisher:
    """One entry group on avahi-daemon, kept equal to the wanted announcement.

    Follows avahi's documented algorithm (avahi-common/defs.h): publish only while the server is
    RUNNING, withdraw when it is not, and on a collision re-add the same group under
    GetAlternativeServiceName (never free and recreate it).
    """

    def __init__(self, bus: MessageBus, reporter: _Reporter) -> None:
        self._bus = bus
        self._reporter = reporter
        self.server_state: int | None = None
        self.group: str | None = None
        self.group_state = _GROUP_UNCOMMITED
        self.published: Announcement | None = None
        self.name: str | None = None  # in use; an alternative after a collision
        self._base_name: str | None = None  # the one wanted

    def on_signal(self, msg: Message) -> bool:
        if msg.member != "StateChanged" or not msg.body:
            return False
        if msg.interface == _AVAHI_SERVER and msg.path == "/":
            self.server_state = int(msg.body[0])
            if self.group_state == _GROUP_FAILURE:
                self.group_state, self.published = _GROUP_UNCOMMITED, None  # worth another try
            return True
        if msg.interface == _AVAHI_GROUP and self.group is not None and msg.path == self.group:
            self.group_state = int(msg.body[0])
            if self.group_state == _GROUP_ESTABLISHED:
                log.info("mDNS: advertising %r (%s) through avahi-daemon", self.name, SERVICE_TYPE)
            elif self.group_state == _GROUP_COLLISION:
                log.info("mDNS: avahi-daemon reports that the name %r collides", self.name)
            return True
        return False

    async def _server(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> list[Any]:
        return await _call(self._bus, AVAHI_BUS_NAME, "/", _AVAHI_SERVER, member, signature, body)

    async def _group(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> list[Any]:
        if self.group is None:
            raise _AvahiError("no entry group", "")
        return await _call(self._bus, AVAHI_BUS_NAME, self.group, _AVAHI_GROUP, member, signature, body)

    async def _alternative(self, name: str) -> str:
        [alternative] = await self._server("GetAlternativeServiceName", "s", [dbus_string(name)])
        log.info("mDNS: the name %r is taken on the network; using %r", name, alternative)
        return str(alternative)

    async def reconcile(self, wanted: Announcement) -> None:
        if self.server_state is None:
            [state] = await self._server("GetState")
            self.server_state = int(state)
        if self.server_state != _SERVER_RUNNING:
            if self.group is not None and self.published is not None:
                await self._group("Reset")  # the host name is being (re)established
                self.published = None
            return
        if self.group is None:
            [path] = await self._server("EntryGroupNew")
            self.group, self.group_state, self.published = str(path), _GROUP_UNCOMMITED, None
        if self.group_state == _GROUP_FAILURE:
            self._reporter.problem("avahi-failure", "mDNS: avahi-daemon failed to publish %r", self.name)
            return
        if self.name is None or self._base_name != wanted.instance:
            self.name = self._base_name = wanted.instance
            self.published = None
        if self.group_state == _GROUP_COLLISION:  # avahi has withdrawn the group's entries
            self.name = await self._alternative(self.name)
            self.published = None
        if self.published == wanted:
            return
        await self._group("Reset")
        for _attempt in range(_MAX_RENAMES):
            try:
                await self._group(
                    "AddService",
                    "iiussssqaay",
                    [
                        _AVAHI_IF_UNSPEC,
                        _AVAHI_PROTO_UNSPEC,
                        _AVAHI_PUBLISH_NO_COOKIE,
                        dbus_string(self.name),
                        SERVICE_TYPE,
                        "",  # the default domain (.local)
                        "",  # avahi's own host name, with every address it manages
                        wanted.port,
                        wanted.txt_entries(),
                    ],
                )
                break
            except _AvahiError as exc:
                if exc.name != _AVAHI_COLLISION_ERROR:
                    raise
                self.name = await self._alternative(self.name)
        else:
            raise _AvahiError(_AVAHI_COLLISION_ERROR, f"no free name after {_MAX_RENAMES} tries")
        await self._group("Commit")
        self.group_state = _GROUP_REGISTERING
        self.published = wanted

    async def withdraw(self) -> None:
        """Free the group: avahi sends the goodbye packets."""
        group, self.group, self.published = self.group, None, None
        if group is not None:
            await _call(self._bus, AVAHI_BUS_NAME, group, _AVAHI_GROUP, "Free")


@contextlib.contextmanager
def _silenced(logger: logging.Logger) -> Iterator[None]:
    def drop(_record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _ZeroconfPublisher:
    """python-zeroconf as the host's responder, bound to the interfaces that carry LAN addresses.

    zeroconf joins the multicast group per interface address when it is created, so a new set of IPv4
    addresses means a new instance (an interface that comes up after boot, a new DHCP lease); other
    changes are re-announced on the running one with `async_update_service`.
    """

    def __init__(self, device_id: str, interfaces: Sequence[str] | None) -> None:
        self._server = f"petcam-{device_id}.local."
        self._interfaces_override = tuple(interfaces) if interfaces is not None else None
        self._zc: AsyncZeroconf | None = None
        self._bound: tuple[str, ...] | None = None
        self._info: AsyncServiceInfo | None = None
        self._published: tuple[Announcement, tuple[str, ...]] | None = None

    @property
    def name(self) -> str | None:
        if self._info is None:
            return None
        return str(self._info.name).removesuffix("." + SERVICE_TYPE_FQDN)

    def _service_info(self, name: str, wanted: Announcement, addresses: tuple[str, ...]) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE_FQDN,
            name,
            port=wanted.port,
            properties=dict(wanted.txt),
            server=self._server,
            parsed_addresses=list(addresses),
        )

    async def reconcile(self, wanted: Announcement, addresses: tuple[str, ...]) -> None:
        interfaces = self._interfaces_override
        if interfaces is None:
            interfaces = tuple(a for a in addresses if ipaddress.ip_address(a).version == 4)
        if self._zc is None or interfaces != self._bound:
            await self.withdraw()
            # zeroconf logs an error of its own before raising (port 5353 taken, say); the caller
            # reports the exception once, where zeroconf would repeat itself at every retry.
            with _silenced(logging.getLogger("zeroconf")):
                if interfaces:
                    self._zc = AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
                else:  # an IPv6-only network
                    self._zc = AsyncZeroconf(ip_version=IPVersion.V6Only)
            self._bound = interfaces
        zc = self._zc
        if self._published == (wanted, addresses):
            return
        same_name = self._published is not None and self._published[0].instance == wanted.instance
        if self._info is not None and same_name:
            info = self._service_info(self._info.name, wanted, addresses)
            await (await zc.async_update_service(info))
        else:
            if self._info is not None:
                await (await zc.async_unregister_service(self._info))
                self._info = None
            info = self._service_info(f"{wanted.instance}.{SERVICE_TYPE_FQDN}", wanted, addresses)
            await (await zc.async_register_service(info, allow_name_change=True))
        self._info, self._published = info, (wanted, addresses)
        if self.name != wanted.instance:  # zeroconf renamed `info` in place
            log.info("mDNS: the name %r is taken on the network; using %r", wanted.instance, self.name)

    async def withdraw(self) -> None:
        """Goodbye packets (TTL 0) for the service, then the sockets are closed."""
        zc, info = self._zc, self._info
        self._zc = self._bound = self._info = self._published = None
        if zc is None:
            return
        try:
            if info is not None:
                goodbye = await zc.async_unregister_service(info)
                async with asyncio.timeout(_GOODBYE_TIMEOUT_S):
                    await goodbye
        except Exception as exc:  # an interface that went away, say: the TTL expires the records
            log.debug("mDNS: goodbye for %s not sent: %s", info.name if info else "-", exc)
        finally:
            try:
                await zc.async_close()
            except Exception as exc:
                log.debug("mDNS: closing python-zeroconf failed: %s", exc)


class MdnsAdvertiser:
    """Publishes `_petcam._tcp` for the LAN server while the daemon runs; a supervisor component.

    `start()` returns at once: publishing (probing takes about a second) and every retry happen in a
    background task, and nothing here can fail the daemon. `stop()` withdraws the service.

    `port` may be a callable, for a LAN server whose port is known only once it is bound.
    `bind_address` is the LAN server's: a loopback one means nothing on the LAN can reach it, so
    nothing is advertised. `addresses` (default: `lan_addresses(bind_address)`) is polled every
    `poll_interval_s` for the zeroconf backend. `bus_address` selects a D-Bus bus other than the
    system bus, `backend` forces one, and `zeroconf_interfaces` pins zeroconf's sockets.
    """

    def __init__(
        self,
        device_id: str,
        device_name: str,
        port: int | Callable[[], int | None],
        *,
        bind_address: str = "0.0.0.0",  # noqa: S104 - the wildcard the LAN server binds by default
        addresses: Callable[[], Sequence[str]] | None = None,
        backend: Backend = "auto",
        bus_address: str | None = None,
        zeroconf_interfaces: Sequence[str] | None = None,
        poll_interval_s: float = 5.0,
        bus_retry_s: float = 30.0,
    ) -> None:
        self._device_id = device_id
        self._device_name = device_name
        self._port = port
        self._bind_address = bind_address
        self._addresses = addresses or (lambda: lan_addresses(bind_address))
        self._backend = backend
        self._bus_address = bus_address
        self._poll_interval_s = poll_interval_s
        self._bus_retry_s = bus_retry_s
        self._reporter = _Reporter()
        self._zeroconf = _ZeroconfPublisher(device_id, zeroconf_interfaces)
        self._avahi: _AvahiPublisher | None = None  # set while avahi-daemon owns its bus name
        self._avahi_lost_at: float | None = None
        self._bus: MessageBus | None = None
        self._bus_retry_at = 0.0
        self._bus_failure_logged = False
        self._active: Literal["avahi", "zeroconf"] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            return
        if _is_loopback(self._bind_address):
            log.info("mDNS: not advertising: the LAN server listens on %s only", self._bind_address)
            return
        self._task = asyncio.create_task(self._run(), name="mdns-advertiser")

    async def stop(self) -> None:
        """Withdraw the service (goodbye packets) and release the bus and sockets. Idempotent."""
        self._stopped = True
        task, self._task = self._task, None
        if task is None:
            return
        self._wake.set()
        task.cancel()
        await asyncio.wait([task])  # unlike `await task`, a cancelled caller is not held up by it
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS: the advertiser failed", exc_info=task.exception())

    @property
    def status(self) -> MdnsStatus:
        if self._active == "avahi" and self._avahi is not None and self._avahi.published is not None:
            return MdnsStatus("avahi", self._avahi.name)
        if self._active == "zeroconf" and self._zeroconf.name is not None:
            return MdnsStatus("zeroconf", self._zeroconf.name)
        return MdnsStatus(None, None)

    # -- the loop -------------------------------------------------------------------------------

    def _announcement(self) -> Announcement | None:
        port = self._port() if callable(self._port) else self._port
        if not port:
            return None
        txt = txt_record(self._device_id, self._device_name)
        return Announcement(instance_name(self._device_name, self._device_id), port, tuple(txt.items()))

    async def _run(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the awaited event fires, and stop() would then wait forever.
        try:
            while not self._stopped:
                self._wake.clear()
                await self._step()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval_s):
                        await self._wake.wait()
        finally:
            await self._shut_down()

    async def _step(self) -> None:
        if self._backend != "zeroconf":
            await self._ensure_bus()
        backend = self._choose()
        if backend != self._active:
            await self._withdraw_active()
            self._active = backend
        wanted = self._announcement()
        if wanted is None:
            self._reporter.note("no-port", "mDNS: waiting for the LAN server's port")
            return
        try:
            if backend == "avahi" and self._avahi is not None:
                await self._avahi.reconcile(wanted)
            elif backend == "zeroconf":
                await self._reconcile_zeroconf(wanted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._reporter.problem(
                f"{backend}:{type(exc).__name__}",
                "mDNS: cannot advertise through %s (retrying every %g s): %s",
                backend,
                self._poll_interval_s,
                exc,
            )
            if backend == "zeroconf":
                await self._zeroconf.withdraw()
            return
        status = self.status
        if status.backend is not None:
            self._reporter.published(status)

    async def _reconcile_zeroconf(self, wanted: Announcement) -> None:
        addresses: list[str] = []
        for address in self._addresses():
            with contextlib.suppress(ValueError):
                if not ipaddress.ip_address(address).is_loopback and address not in addresses:
                    addresses.append(address)
        if not addresses:
            if self._zeroconf.name is not None:
                log.info("mDNS: no LAN address left; withdrawn until one appears")
            await self._zeroconf.withdraw()
            self._reporter.note("no-address", "mDNS: waiting for a LAN address")
            return
        before = self._zeroconf.name
        await self._zeroconf.reconcile(wanted, tuple(sorted(addresses)))
        if before is None and self._zeroconf.name is not None:
            log.info(
                "mDNS: advertising %r (%s) with python-zeroconf on %s",
                self._zeroconf.name,
                SERVICE_TYPE,
                ", ".join(sorted(addresses)),
            )

    def _choose(self) -> Literal["avahi", "zeroconf"] | None:
        if self._backend == "zeroconf":
            return "zeroconf"
        if self._avahi is not None:
            return "avahi"
        if self._backend == "avahi":
            self._reporter.problem("no-avahi", "mDNS: avahi-daemon is not on the bus; waiting for it")
            return None
        lost_at = self._avahi_lost_at
        if lost_at is not None and time.monotonic() - lost_at < _AVAHI_RETURN_GRACE_S:
            return None  # it usually comes back at once (a restart, an upgrade)
        return "zeroconf"

    # -- D-Bus ----------------------------------------------------------------------------------

    async def _ensure_bus(self) -> None:
        if self._bus is not None:
            if self._bus.connected:
                return
            log.warning("mDNS: lost the D-Bus connection; reconnecting")
            self._forget_avahi()
            self._bus = None
        now = time.monotonic()
        if now < self._bus_retry_at:
            return
        self._bus_retry_at = now + self._bus_retry_s
        bus: MessageBus | None = None
        try:
            bus = MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM)  # 1.84 connects here
            await bus.connect()
            bus.add_message_handler(self._on_message)
            for rule in (
                f"type='signal',sender='{AVAHI_BUS_NAME}'",
                f"type='signal',sender='{_DBUS}',member='NameOwnerChanged',arg0='{AVAHI_BUS_NAME}'",
            ):
                await _call(bus, _DBUS, _DBUS_PATH, _DBUS, "AddMatch", "s", [rule])
            [has_owner] = await _call(bus, _DBUS, _DBUS_PATH, _DBUS, "NameHasOwner", "s", [AVAHI_BUS_NAME])
        except asyncio.CancelledError:
            if bus is not None:
                bus.disconnect()
            raise
        except Exception as exc:
            if bus is not None:
                bus.disconnect()
            if not self._bus_failure_logged:
                self._bus_failure_logged = True
                fallback = "waiting for it" if self._backend == "avahi" else "using python-zeroconf"
                log.warning("mDNS: cannot reach avahi-daemon: no D-Bus system bus (%s); %s", exc, fallback)
            return
        self._bus = bus
        self._bus_failure_logged = False
        if has_owner:
            self._avahi_found(bus)
        elif self._backend == "auto":
            log.info("mDNS: avahi-daemon is not running; using python-zeroconf")

    def _avahi_found(self, bus: MessageBus) -> None:
        self._avahi = _AvahiPublisher(bus, self._reporter)
        self._avahi_lost_at = None

    def _forget_avahi(self) -> None:
        """avahi-daemon frees a client's entry groups when either side leaves the bus."""
        if self._avahi is not None:
            self._avahi_lost_at = time.monotonic()
        self._avahi = None
        if self._active == "avahi":
            self._active = None

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.interface == _DBUS and msg.member == "NameOwnerChanged":
            name, _old, new = (str(part) for part in msg.body)
            if name != AVAHI_BUS_NAME or self._bus is None:
                return
            if new:
                log.info("mDNS: avahi-daemon is on the bus")
                self._avahi_found(self._bus)
            else:
                log.info("mDNS: avahi-daemon left the bus")
                self._forget_avahi()
            self._wake.set()
        elif self._avahi is not None and self._avahi.on_signal(msg):
            self._wake.set()

    # -- withdrawal -----------------------------------------------------------------------------

    async def _withdraw_active(self) -> None:
        active, self._active = self._active, None
        avahi, bus = self._avahi, self._bus
        try:
            if active == "avahi" and avahi is not None and bus is not None and bus.connected:
                async with asyncio.timeout(_GOODBYE_TIMEOUT_S):
                    await avahi.withdraw()
            elif active == "zeroconf":
                await self._zeroconf.withdraw()
        except Exception as exc:  # best effort: avahi frees the groups of a client that leaves the bus
            log.debug("mDNS: withdrawing from %s failed: %s", active, exc)

    async def _shut_down(self) -> None:
        await self._withdraw_active()
        await self._zeroconf.withdraw()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_GOODBYE_TIMEOUT_S):
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

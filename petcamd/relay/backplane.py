"""Several relay instances routing as one, over Redis pub/sub (docs/relay.md, "Scaling out").

:class:`RedisRouter` implements the :class:`~petcamd.relay.router.Router` interface for a relay
instance that shares its routing with others through one Redis server:

- **Registrations** are keys ``petcam-relay:v1:device:<device id>`` holding ``<instance id> <token>
  <milliseconds>``, with a short expiry that the owning instance refreshes while the device is
  connected. A registration writes its key with ``SET … GET``: the previous value names the
  instance that held the id, which is told over pub/sub to close that connection (4003). A killed
  instance's keys simply expire; until they do, publishing to its channel reaches no subscriber,
  which is how a viewer learns at once that the device is unavailable.
- **Sessions** between a viewer on one instance and a device on another travel as messages on
  the instances' own channels (``petcam-relay:v1:instance:<instance id>``): one subscriber
  connection per instance, and one writer task that publishes everything the instance sends, in
  order, everything queued for one instance in one ``PUBLISH``. Redis keeps the order of one
  connection's commands and of one channel's messages, so frames of a session arrive in the order
  they were forwarded.
- **Nothing else**: frames pass through Redis only as transient pub/sub messages; no key, list or
  stream ever holds one.

Same-instance routes never touch Redis, so when Redis is unreachable an instance keeps serving
the devices connected to it, refuses the rest with ``DEVICE_UNAVAILABLE``, ends sessions that
crossed instances, logs one error, and reconnects with backoff; once back it re-announces its
devices (where a device registered on two instances during the outage, the newer registration
wins and the older connection is closed with 4003).

The ``redis`` package (Debian: python3-redis) is imported only when a router is made: a relay
without a backplane never loads it. Both redis-py 4.3 (Debian bookworm) and the newest releases
are supported, and the tests run on both. What differs between them is handled here: ``aclose()``
(5.0.1 and later) versus ``close()``; newer releases retry a failed command with backoff by
default (4.3 does not), so an explicit no-retry policy makes a dead Redis show at once on both;
newer releases may speak RESP3, where pub/sub messages arrive as push messages, which
``PubSub.get_message`` hides on both.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import enum
import itertools
import logging
import secrets
import struct
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from petcamd.protocol.relay import DEVICE_ID_LEN, CloseReason
from petcamd.relay.metrics import Metrics
from petcamd.relay.router import DeviceHost, Endpoint

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

PREFIX = "petcam-relay:v1"
"""Names of keys and channels. The version changes with the message format, so that instances of
two incompatible versions sharing a Redis during an upgrade ignore each other instead of
misreading each other (their devices are then reachable only from instances of the same version)."""
ID_LEN = 16
"""Instance ids and registration tokens: 16 lowercase base32 characters (80 random bits)."""
MAX_QUEUED_BYTES = 64 * 1024 * 1024
"""Most bytes waiting to be published, all sessions together; beyond, sessions end OVERLOADED."""
MAX_BATCH_BYTES = 1024 * 1024
"""Most bytes the publisher takes from its queue at once (well under Redis's pub/sub buffer limits)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """How often and how long; the defaults suit production and the tests alike."""

    registration_ttl_s: float = 30.0
    """Expiry of a registration key; the owner refreshes it every ``refresh_s``."""
    refresh_s: float = 10.0
    presence_s: float = 1.0
    """How often the instances this one has sessions with are checked for a live subscriber."""
    open_timeout_s: float = 3.0
    """How long a viewer waits for the device's instance to open a session."""
    command_timeout_s: float = 3.0
    reconnect_min_s: float = 0.25
    reconnect_max_s: float = 2.0


class BackplaneError(Exception):
    """The backplane cannot be used at all."""


def load_redis() -> ModuleType:
    """The ``redis`` package, or BackplaneError saying how to install it."""
    try:
        import redis.asyncio
        import redis.backoff
    except ImportError:
        raise BackplaneError(
            "[backplane] redis_url is set, but the Python package 'redis' (4.3 or newer; Debian: "
            "python3-redis) is not installed"
        ) from None
    return redis


def check_redis_url(url: str) -> list[str]:
    """Problems with a ``redis_url`` setting; the messages never quote it (it may hold a password)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return ["[backplane] redis_url: not a valid URL (check the host and port)"]
    scheme = parts.scheme.lower()
    problems: list[str] = []
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            problems.append("[backplane] redis_url: needs a host, as in 'redis://127.0.0.1:6379/0'")
        elif port == 0:
            problems.append("[backplane] redis_url: the port must be 1 to 65535")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            problems.append("[backplane] redis_url: the path must be a database number, as in '/0'")
    elif scheme == "unix":
        if not parts.path:
            problems.append(
                "[backplane] redis_url: needs a socket path, as in 'unix:///run/redis/redis.sock'"
            )
    else:
        problems.append("[backplane] redis_url: must start with redis://, rediss:// or unix://")
    if not problems:
        try:
            load_redis()
        except BackplaneError as exc:
            problems.append(str(exc))
    return problems


def redacted_url(url: str) -> str:
    """``url`` for logs: no user name, password or query (which may carry a password either)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "unix":
        return f"unix://{parts.path}"
    credentials = "***@" if parts.username is not None or parts.password is not None else ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{credentials}{host}{port}{parts.path}"


def _random_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def _key(device_id: str) -> str:
    return f"{PREFIX}:device:{device_id}"


def _channel(instance: str) -> str:
    return f"{PREFIX}:instance:{instance}"


@dataclass(frozen=True, slots=True)
class _Owner:
    instance: str
    token: str


def _parse_value(value: bytes | None) -> _Owner | None:
    if not value:
        return None
    fields = value.split(b" ")
    if len(fields) != 3 or len(fields[0]) != ID_LEN or len(fields[1]) != ID_LEN:
        return None
    return _Owner(fields[0].decode("ascii", "replace"), fields[1].decode("ascii", "replace"))


# Keep the key only while it is ours; take it when it is missing or stale from this instance; a
# registration made while Redis was unreachable (ARGV[3] = "0") also takes it from an older one.
# Returns 1 (ours now), 0 (another instance holds a newer registration), or the value replaced.
_REFRESH = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
if (not cur) or string.sub(cur, 1, 16) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
  return 1
end
if ARGV[3] == '0' then
  local ms = tonumber(string.match(cur, '(%d+)$'))
  if ms and ms < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
    return cur
  end
end
return 0
"""
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Kind(enum.IntEnum):
    """Backplane message types. Every message: kind, sender instance id, session id, body."""

    OPEN = 1
    """Viewer's instance to device's: open a session with the device id in the body."""
    OPENED = 2
    REFUSED = 3
    """Body: the close reason (2 bytes)."""
    TO_DEVICE = 4
    """A frame from the viewer, for the device."""
    TO_VIEWER = 5
    END_DEVICE = 6
    """The viewer's side ended (body: reason); for the device's instance."""
    END_VIEWER = 7
    EVICT = 8
    """Body: device id and registration token: close that registration (4003)."""


_HEADER = struct.Struct(f"!B{ID_LEN}sQ")
_LENGTH = struct.Struct("!I")
"""Each PUBLISH carries one or more messages, each after its length."""
_EVICTED = "device %s registered on another relay instance; closing its connection here"
_REASON = struct.Struct("!H")


@dataclass(slots=True, eq=False)
class _Registration:
    host: DeviceHost
    token: str
    registered_ms: int
    written: bool = False
    """Whether this registration reached Redis (False when made while Redis was unreachable)."""

    def value(self, instance: str) -> str:
        return f"{instance} {self.token} {self.registered_ms}"


@dataclass(slots=True, eq=False)
class _Lane:
    """Bytes of one session side waiting to be published: bounded like a connection's outbox."""

    queued: int = 0


@dataclass(slots=True, eq=False)
class _Outgoing:
    channel: str
    data: bytes
    peer: str
    lane: _Lane | None
    counted: Callable[[int], None] | None


class _ViewerSession:
    """A session on the viewer's instance with a device on ``peer``.

    Until the viewer's connection has taken the session (one loop turn after ``connect``
    returns), what arrives for it is kept in ``pending`` and replayed in order.
    """

    __slots__ = ("lane", "opened", "peer", "pending", "pending_bytes", "sid", "viewer")

    def __init__(
        self, sid: int, peer: str, viewer: Endpoint, opened: asyncio.Future[CloseReason | None]
    ) -> None:
        self.sid = sid
        self.peer = peer
        self.viewer = viewer
        self.opened = opened
        self.lane = _Lane()
        self.pending: list[bytes | CloseReason] | None = []
        self.pending_bytes = 0


class _DeviceSession:
    """A session on the device's instance with a viewer on ``peer``."""

    __slots__ = ("device", "lane", "peer", "sid")

    def __init__(self, peer: str, sid: int) -> None:
        self.peer = peer
        self.sid = sid
        self.device: Endpoint | None = None
        self.lane = _Lane()


class RedisRouter:
    """Routing over Redis for one of several relay instances; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        queue_bytes: int,
        metrics: Metrics | None = None,
        timing: Timing | None = None,
    ) -> None:
        self._redis = load_redis()
        self._errors: tuple[type[BaseException], ...] = (self._redis.exceptions.RedisError, OSError)
        self._url = url
        self._where = redacted_url(url)
        self._lane_limit = queue_bytes
        self._metrics = metrics
        self._timing = timing if timing is not None else Timing()
        self.instance_id = _random_id()
        self._instance = self.instance_id.encode("ascii")
        self._local: dict[str, _Registration] = {}
        self._viewer_sessions: dict[int, _ViewerSession] = {}
        self._device_sessions: dict[tuple[str, int], _DeviceSession] = {}
        self._sids = itertools.count(1)
        self._queue: collections.deque[_Outgoing] = collections.deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._broken = asyncio.Event()
        self._maintain = asyncio.Event()
        self._lock = asyncio.Lock()
        self._up = False
        self._reported_down = False
        self._closing = False
        self._connected = asyncio.Event()
        self._client: Redis | None = None
        self._subscriber: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    # --- Router ----------------------------------------------------------------------------

    @property
    def devices(self) -> int:
        return len(self._local)

    @property
    def backplane_up(self) -> bool | None:
        return self._up

    async def start(self) -> None:
        """Connect (waiting a moment for Redis); an unreachable Redis is retried in the background."""
        retry = self._redis.asyncio.retry.Retry(self._redis.backoff.NoBackoff(), 0)
        timeout = self._timing.command_timeout_s
        common: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_keepalive": True, "retry": retry}
        client = self._redis.asyncio.Redis.from_url(self._url, socket_timeout=timeout, **common)
        # No read timeout on the subscriber: it waits for messages; a PING now and then notices a
        # silent server.
        subscriber = self._redis.asyncio.Redis.from_url(self._url, health_check_interval=10, **common)
        self._client, self._subscriber = client, subscriber
        self._tasks = [
            asyncio.create_task(self._connection_loop(client, subscriber), name="relay-backplane-subscriber"),
            asyncio.create_task(self._publisher(), name="relay-backplane-publisher"),
            asyncio.create_task(self._maintenance(), name="relay-backplane-maintenance"),
        ]
        log.info("routing through the Redis backplane at %s as instance %s", self._where, self.instance_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout + 1.0)

    async def close(self) -> None:
        """Publish what is queued (the last CLOSEs of sessions, key deletions), then disconnect."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        if self._up:
            self._drained.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 2.0)
        self._closing = True
        tasks = self._tasks + list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        for client in (self._client, self._subscriber):
            if client is not None:
                await _aclose(client)
                await client.connection_pool.disconnect()
        self._client = self._subscriber = None
        self._up = False

    async def register(self, device_id: str, host: DeviceHost) -> None:
        reg = _Registration(host, _random_id(), int(time.time() * 1000))
        previous = self._local.get(device_id)
        self._local[device_id] = reg
        if previous is not None and previous.host is not host:
            log.info("device %s registered again; closing its previous connection", device_id)
            previous.host.evict()
        if not self._up or self._client is None:
            return  # announced when Redis is back
        async with self._lock:  # one instance's registration writes reach Redis in order
            if self._local.get(device_id) is not reg or not self._up:
                return
            try:
                old = await self._client.set(
                    _key(device_id), reg.value(self.instance_id), px=self._ttl_ms, get=True
                )
            except self._errors as exc:
                self._mark_down(exc)
                return
            reg.written = True
        owner = _parse_value(_as_bytes(old))
        if owner is not None and owner.instance != self.instance_id:
            self._evict_elsewhere(device_id, owner)

    async def unregister(self, device_id: str, host: DeviceHost) -> None:
        reg = self._local.get(device_id)
        if reg is None or reg.host is not host:
            return
        del self._local[device_id]
        if self._up:
            self._spawn(self._delete_if(device_id, reg.value(self.instance_id), locked=True))

    async def connect(self, device_id: str, viewer: Endpoint) -> Endpoint | CloseReason:
        reg = self._local.get(device_id)
        if reg is not None:
            return reg.host.accept(viewer)  # same instance: Redis is not involved
        if not self._up or self._client is None:
            return CloseReason.DEVICE_UNAVAILABLE
        try:
            value = await self._client.get(_key(device_id))
        except self._errors as exc:
            self._mark_down(exc)
            return CloseReason.DEVICE_UNAVAILABLE
        reg = self._local.get(device_id)
        if reg is not None:  # it registered here while we asked
            return reg.host.accept(viewer)
        current = _as_bytes(value)
        owner = _parse_value(current)
        if current is None or owner is None or owner.instance == self.instance_id or not self._up:
            return CloseReason.DEVICE_UNAVAILABLE
        loop = asyncio.get_running_loop()
        session = _ViewerSession(next(self._sids), owner.instance, viewer, loop.create_future())
        self._viewer_sessions[session.sid] = session

        def counted(receivers: int) -> None:
            if receivers == 0:  # nobody subscribes to that instance's channel: it is gone
                self._resolve(session, CloseReason.DEVICE_UNAVAILABLE)
                self._spawn(self._delete_if(device_id, current.decode("ascii", "replace"), locked=False))

        self._send(owner.instance, _Kind.OPEN, session.sid, device_id.encode("ascii"), counted=counted)
        try:
            outcome = await asyncio.wait_for(session.opened, self._timing.open_timeout_s)
        except BaseException as exc:
            # Timed out or cancelled: the device's instance may still open the session; undo it.
            self._viewer_sessions.pop(session.sid, None)
            self._send(owner.instance, _Kind.END_DEVICE, session.sid, _REASON.pack(CloseReason.CLOSED))
            if not isinstance(exc, TimeoutError):
                raise
            log.info("relay instance %s did not answer a session request in time", owner.instance)
            return CloseReason.DEVICE_UNAVAILABLE
        if outcome is not None:
            self._viewer_sessions.pop(session.sid, None)
            return outcome
        # The caller stores the endpoint before its task next yields; frames that arrived for the
        # session before that are replayed once it has.
        loop.call_soon(self._activate, session)
        return _ToDevice(self, session)

    # --- sending ---------------------------------------------------------------------------

    @property
    def _ttl_ms(self) -> int:
        return int(self._timing.registration_ttl_s * 1000)

    def _send(
        self,
        peer: str,
        kind: _Kind,
        sid: int,
        body: bytes = b"",
        *,
        lane: _Lane | None = None,
        counted: Callable[[int], None] | None = None,
    ) -> None:
        if not self._up:
            return  # every session through the backplane has ended or is ending
        data = _HEADER.pack(kind, self._instance, sid) + body
        if lane is not None:
            lane.queued += len(data)
        self._queued_bytes += len(data)
        self._queue.append(_Outgoing(_channel(peer), data, peer, lane, counted))
        self._wake.set()

    def _room(self, lane: _Lane, size: int) -> bool:
        return lane.queued + size <= self._lane_limit and self._queued_bytes + size <= MAX_QUEUED_BYTES

    async def _publisher(self) -> None:
        """The one writer: publishes everything this instance sends, in order, in batches."""
        while True:
            if not self._queue:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # Everything queued for one instance goes in one PUBLISH, in order: under load one
            # Redis command and one pub/sub message carry many frames.
            batch: dict[str, list[_Outgoing]] = {}
            size = 0
            while self._queue and size < MAX_BATCH_BYTES:
                item = self._queue.popleft()
                batch.setdefault(item.channel, []).append(item)
                size += len(item.data)
            counts: list[int] | None = None
            try:
                client = self._client
                if client is None or not self._up:
                    continue
                pipe = client.pipeline(transaction=False)
                for channel, items in batch.items():
                    pipe.publish(channel, b"".join(_LENGTH.pack(len(i.data)) + i.data for i in items))
                counts = await pipe.execute()
            except self._errors as exc:
                self._mark_down(exc)
            finally:
                self._queued_bytes -= size
                for items in batch.values():
                    for item in items:
                        if item.lane is not None:
                            item.lane.queued -= len(item.data)
            if counts is None:
                continue
            for items, receivers in zip(batch.values(), counts, strict=True):
                for item in items:
                    if item.counted is not None:
                        item.counted(receivers)
                if receivers == 0 and any(item.counted is None for item in items):
                    self._peer_gone(items[0].peer)

    # --- receiving -------------------------------------------------------------------------

    async def _connection_loop(self, client: Redis, subscriber: Redis) -> None:
        """Subscribe to this instance's channel and read it; after any failure, reconnect."""
        delay = self._timing.reconnect_min_s
        while True:
            pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(_channel(self.instance_id))
                await client.ping()
                self._broken.clear()
                self._set_up()
                delay = self._timing.reconnect_min_s
                await self._listen(pubsub)
            except self._errors as exc:
                self._mark_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await _aclose(pubsub)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._timing.reconnect_max_s)

    async def _listen(self, pubsub: PubSub) -> None:
        while not self._broken.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None or message.get("type") != "message":
                continue
            data: bytes = message["data"]
            view = memoryview(data)
            pos = 0
            while pos + _LENGTH.size <= len(data):
                (length,) = _LENGTH.unpack_from(data, pos)
                pos += _LENGTH.size
                try:
                    self._dispatch(bytes(view[pos : pos + length]))
                except Exception:
                    log.exception("a backplane message could not be handled")
                pos += length

    def _dispatch(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            return
        kind, sender_raw, sid = _HEADER.unpack_from(data)
        sender = sender_raw.decode("ascii", "replace")
        body = data[_HEADER.size :]
        if kind == _Kind.TO_VIEWER:
            viewer_session = self._viewer_sessions.get(sid)
            if viewer_session is None:
                self._send(sender, _Kind.END_DEVICE, sid, _REASON.pack(CloseReason.CLOSED))
            elif viewer_session.pending is not None:
                if viewer_session.pending and isinstance(viewer_session.pending[-1], CloseReason):
                    return  # it has ended; the viewer hears so once it has the session
                viewer_session.pending.append(body)
                viewer_session.pending_bytes += len(body)
                if viewer_session.pending_bytes > self._lane_limit:
                    viewer_session.pending = [CloseReason.OVERLOADED]
                    self._send(sender, _Kind.END_DEVICE, sid, _REASON.pack(CloseReason.OVERLOADED))
                    self._drop("queue_full")
            else:
                self._to_viewer(viewer_session, body)
        elif kind == _Kind.TO_DEVICE:
            device_session = self._device_sessions.get((sender, sid))
            if device_session is None or device_session.device is None:
                self._send(sender, _Kind.END_VIEWER, sid, _REASON.pack(CloseReason.CLOSED))
            elif not device_session.device.deliver(body):
                del self._device_sessions[sender, sid]
                self._drop("queue_full")
                device_session.device.end(CloseReason.OVERLOADED)
                self._send(sender, _Kind.END_VIEWER, sid, _REASON.pack(CloseReason.OVERLOADED))
        elif kind in (_Kind.OPENED, _Kind.REFUSED):
            viewer_session = self._viewer_sessions.get(sid)
            if viewer_session is not None and viewer_session.peer == sender:
                reason = None if kind == _Kind.OPENED else _reason(body)
                self._resolve(viewer_session, reason)
        elif kind == _Kind.END_VIEWER:
            viewer_session = self._viewer_sessions.get(sid)
            if viewer_session is not None and viewer_session.peer == sender:
                self._end_viewer_session(viewer_session, _reason(body))
        elif kind == _Kind.END_DEVICE:
            device_session = self._device_sessions.pop((sender, sid), None)
            if device_session is not None and device_session.device is not None:
                device_session.device.end(_reason(body))
        elif kind == _Kind.OPEN:
            self._open(sender, sid, body.decode("ascii", "replace"))
        elif kind == _Kind.EVICT:
            device_id = body[:DEVICE_ID_LEN].decode("ascii", "replace")
            reg = self._local.get(device_id)
            if reg is not None and reg.token == body[DEVICE_ID_LEN:].decode("ascii", "replace"):
                del self._local[device_id]
                log.info(_EVICTED, device_id)
                reg.host.evict()

    def _open(self, peer: str, sid: int, device_id: str) -> None:
        """A viewer on ``peer`` asks for a session with a device registered here."""
        reg = self._local.get(device_id)
        if reg is None or (peer, sid) in self._device_sessions:
            self._send(peer, _Kind.REFUSED, sid, _REASON.pack(CloseReason.DEVICE_UNAVAILABLE))
            return
        session = _DeviceSession(peer, sid)
        self._device_sessions[peer, sid] = session
        result = reg.host.accept(_ToViewer(self, session))
        if isinstance(result, CloseReason):
            del self._device_sessions[peer, sid]
            self._send(peer, _Kind.REFUSED, sid, _REASON.pack(result))
            return
        session.device = result
        # Queued before anything the device sends in this session, so it arrives first.
        self._send(peer, _Kind.OPENED, sid)

    def _resolve(self, session: _ViewerSession, outcome: CloseReason | None) -> None:
        if not session.opened.done():
            session.opened.set_result(outcome)

    def _activate(self, session: _ViewerSession) -> None:
        if self._viewer_sessions.get(session.sid) is not session or session.pending is None:
            return
        pending, session.pending = session.pending, None
        for item in pending:
            if isinstance(item, CloseReason):
                del self._viewer_sessions[session.sid]
                session.viewer.end(item)
                return
            if not self._to_viewer(session, item):
                return

    def _to_viewer(self, session: _ViewerSession, frame: bytes) -> bool:
        if session.viewer.deliver(frame):
            return True
        del self._viewer_sessions[session.sid]
        self._drop("queue_full")
        session.viewer.end(CloseReason.OVERLOADED)
        self._send(session.peer, _Kind.END_DEVICE, session.sid, _REASON.pack(CloseReason.OVERLOADED))
        return False

    def _end_viewer_session(self, session: _ViewerSession, reason: CloseReason) -> None:
        """The device side ended (or cannot be reached): tell the viewer, now or once it has the session."""
        if not session.opened.done():
            self._resolve(session, reason)
        elif session.pending is not None:
            session.pending.append(reason)
        elif self._viewer_sessions.pop(session.sid, None) is not None:
            session.viewer.end(reason)

    def _peer_gone(self, peer: str) -> None:
        viewers = [s for s in self._viewer_sessions.values() if s.peer == peer]
        devices = [key for key in self._device_sessions if key[0] == peer]
        if viewers or devices:
            count = len(viewers) + len(devices)
            log.info("relay instance %s is gone; ending the %d sessions through it", peer, count)
        for viewer_session in viewers:
            self._end_viewer_session(viewer_session, CloseReason.DEVICE_UNAVAILABLE)
        for key in devices:
            device_session = self._device_sessions.pop(key)
            if device_session.device is not None:
                device_session.device.end(CloseReason.CLOSED)

    # --- registrations, presence, failures -----------------------------------------------------

    def _evict_elsewhere(self, device_id: str, owner: _Owner) -> None:
        log.info("device %s moved here from relay instance %s; closing it there", device_id, owner.instance)
        self._send(owner.instance, _Kind.EVICT, 0, (device_id + owner.token).encode("ascii"))

    async def _delete_if(self, device_id: str, value: str, *, locked: bool) -> None:
        """Delete a registration key if it still holds ``value`` (never a newer registration)."""
        client = self._client
        if client is None:
            return
        try:
            if locked:
                async with self._lock:
                    await client.eval(_DELETE_IF, 1, _key(device_id), value)
            else:
                await client.eval(_DELETE_IF, 1, _key(device_id), value)
        except self._errors as exc:
            self._mark_down(exc)

    async def _maintenance(self) -> None:
        """Presence of the instances this one has sessions with; refreshing registrations."""
        last_refresh = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._maintain.wait(), self._timing.presence_s)
            forced = self._maintain.is_set()
            self._maintain.clear()
            if not self._up or self._client is None:
                continue
            try:
                await self._check_presence(self._client)
                if forced or loop.time() - last_refresh >= self._timing.refresh_s:
                    last_refresh = loop.time()
                    await self._refresh(self._client)
            except self._errors as exc:
                self._mark_down(exc)

    async def _check_presence(self, client: Redis) -> None:
        peers = {s.peer for s in self._viewer_sessions.values()} | {p for p, _ in self._device_sessions}
        if not peers:
            return
        ordered = sorted(peers)
        counts = await client.pubsub_numsub(*(_channel(peer) for peer in ordered))
        for peer, (_channel_name, receivers) in zip(ordered, counts, strict=True):
            if int(receivers) == 0:
                self._peer_gone(peer)

    async def _refresh(self, client: Redis) -> None:
        """Keep this instance's registrations alive, and take back the ones Redis lost."""
        async with self._lock:
            regs = list(self._local.items())
            if not regs:
                return
            pipe = client.pipeline(transaction=False)
            for device_id, reg in regs:
                pipe.eval(
                    _REFRESH,
                    1,
                    _key(device_id),
                    reg.value(self.instance_id),
                    self.instance_id,
                    "1" if reg.written else "0",
                    reg.registered_ms,
                    self._ttl_ms,
                )
            results = await pipe.execute()
        for (device_id, reg), result in zip(regs, results, strict=True):
            if self._local.get(device_id) is not reg:
                continue
            if result == 0:
                del self._local[device_id]
                log.info(_EVICTED, device_id)
                reg.host.evict()
                continue
            reg.written = True
            if isinstance(result, bytes):
                owner = _parse_value(result)
                if owner is not None:
                    self._evict_elsewhere(device_id, owner)

    def _set_up(self) -> None:
        if self._reported_down:
            count = len(self._local)
            log.warning("Redis backplane at %s is reachable again; announcing %d devices", self._where, count)
        else:
            log.info("connected to the Redis backplane at %s", self._where)
        self._reported_down = False
        self._up = True
        self._connected.set()
        self._maintain.set()  # refresh (re-announce) registrations now

    def _mark_down(self, exc: BaseException) -> None:
        """Redis failed: end what crossed instances, keep serving local routes, reconnect."""
        if self._closing:
            return
        self._broken.set()
        if not self._reported_down:
            self._reported_down = True
            log.error(
                "Redis backplane at %s is unavailable (%s: %s); only devices connected to this instance "
                "are reachable until it is back",
                self._where,
                type(exc).__name__,
                exc,
            )
        was_up, self._up = self._up, False
        self._connected.set()
        for item in self._queue:
            self._queued_bytes -= len(item.data)
            if item.lane is not None:
                item.lane.queued -= len(item.data)
        self._queue.clear()
        if not was_up:
            return
        for viewer_session in list(self._viewer_sessions.values()):
            self._end_viewer_session(viewer_session, CloseReason.DEVICE_UNAVAILABLE)
        device_sessions, self._device_sessions = self._device_sessions, {}
        for device_session in device_sessions.values():
            if device_session.device is not None:
                device_session.device.end(CloseReason.CLOSED)

    def _drop(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.drops[reason] += 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _ToDevice:
    """The device end of a session, as the viewer's connection holds it, on another instance."""

    __slots__ = ("_router", "_session")

    def __init__(self, router: RedisRouter, session: _ViewerSession) -> None:
        self._router = router
        self._session = session

    def deliver(self, frame: bytes) -> bool:
        router, session = self._router, self._session
        if router._viewer_sessions.get(session.sid) is not session:
            return True  # the session ended while the frame was on its way
        size = _HEADER.size + len(frame)
        if not router._room(session.lane, size):
            return False
        router._send(session.peer, _Kind.TO_DEVICE, session.sid, frame, lane=session.lane)
        return True

    def end(self, reason: CloseReason) -> None:
        router, session = self._router, self._session
        if router._viewer_sessions.get(session.sid) is session:
            del router._viewer_sessions[session.sid]
            router._send(session.peer, _Kind.END_DEVICE, session.sid, _REASON.pack(reason))


class _ToViewer:
    """The viewer end of a session, as the device's connection holds it, on another instance."""

    __slots__ = ("_router", "_session")

    def __init__(self, router: RedisRouter, session: _DeviceSession) -> None:
        self._router = router
        self._session = session

    def deliver(self, frame: bytes) -> bool:
        router, session = self._router, self._session
        if router._device_sessions.get((session.peer, session.sid)) is not session:
            return True
        size = _HEADER.size + len(frame)
        if not router._room(session.lane, size):
            return False
        router._send(session.peer, _Kind.TO_VIEWER, session.sid, frame, lane=session.lane)
        return True

    def end(self, reason: CloseReason) -> None:
        router, session = self._router, self._session
        key = (session.peer, session.sid)
        if router._device_sessions.get(key) is session:
            del router._device_sessions[key]
            router._send(session.peer, _Kind.END_VIEWER, session.sid, _REASON.pack(reason))


def _as_bytes(value: object) -> bytes | None:
    return value if isinstance(value, bytes) else None


def _reason(body: bytes) -> CloseReason:
    if len(body) < _REASON.size:
        return CloseReason.CLOSED
    return CloseReason.from_wire(_REASON.unpack_from(body)[0])


async def _aclose(closable: Any) -> None:
    """``aclose()`` where redis-py has it (5.0.1 and later), ``close()`` before (bookworm's 4.3)."""
    method = getattr(closable, "aclose", None) or closable.close
    await method()

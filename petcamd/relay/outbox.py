"""The send side of one WebSocket: a bounded queue drained by a single writer task.

Forwarding only queues, so a peer that reads slowly (or not at all) fills its own queue and loses
its own sessions, never stalls the connection that forwards to it. One writer also means sends
and the final close never interleave.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from aiohttp import web

from petcamd.protocol.relay import CloseCode

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, ws: web.WebSocketResponse, limit_bytes: int) -> None:
        self._ws = ws
        self._limit = limit_bytes
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._close: tuple[CloseCode, str] | None = None
        self._dead = False

    @property
    def closing(self) -> bool:
        return self._close is not None or self._dead

    @property
    def close_code(self) -> CloseCode | None:
        return None if self._close is None else self._close[0]

    def put_data(self, data: bytes) -> bool:
        """Queue a DATA envelope; False (nothing queued) when the queue is over its byte limit."""
        if self.closing:
            return True  # the connection is ending: its sessions end with it
        if self._queued_bytes + len(data) > self._limit:
            return False
        self._push(data)
        return True

    def put_control(self, data: bytes) -> None:
        """Queue a small control envelope; these are bounded by the session count, not the limit."""
        if not self.closing:
            self._push(data)

    def _push(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._wake.set()

    def close(self, code: CloseCode, reason: str) -> None:
        """Close the WebSocket after what is queued; the first reason given wins."""
        if self._close is None:
            self._close = (code, reason)
            self._wake.set()

    async def run(self) -> None:
        """The writer task: runs until the connection is closed."""
        ws = self._ws
        try:
            while True:
                while self._queue:
                    data = self._queue.popleft()
                    self._queued_bytes -= len(data)
                    await ws.send_bytes(data)
                if self._close is not None:
                    break
                self._wake.clear()
                await self._wake.wait()
            code, reason = self._close
            await ws.close(code=code, message=reason.encode("ascii"))
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            # The peer went away mid-send; the receive loop sees the same and cleans up.
            log.debug("send failed: %s", type(exc).__name__)
            with contextlib.suppress(Exception):
                await ws.close(code=CloseCode.GOING_AWAY)
        finally:
            self._dead = True
            self._queue.clear()
            self._queued_bytes = 0

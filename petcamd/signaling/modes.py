"""Local Network Mode and internet mode, switchable at runtime, and the owner's choice kept on disk.

Local Network Mode: the LAN server only; no relay connection, no STUN/TURN, nothing leaves the
LAN. Internet mode: the relay client runs too and new WebRTC sessions use the configured ICE
servers (media still goes directly over the LAN when both ends are on it). A switch applies to new
sessions at once; sessions negotiated through the relay end when it is switched off.

`network.mode` in the config file is the initial choice; `petcamctl mode` saves the owner's later
choice in the state directory, which wins from then on (the service cannot, and should not,
rewrite /etc).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from petcamd.atomic_file import write_atomic
from petcamd.signaling.relay_client import RelayClient
from petcamd.webrtc.ice import IceServer
from petcamd.webrtc.sessions import WebRtcSettings

log = logging.getLogger(__name__)

__all__ = ["MODES", "MODE_FILE", "ModeError", "NetworkModes", "load_saved_mode", "save_mode"]

MODES = ("local", "internet")
MODE_FILE = "network-mode.json"


class ModeError(ValueError):
    """A mode that cannot be used (unknown, or internet mode with no relay configured)."""


class Reconfigurable(Protocol):
    """The WebRTC session manager as a mode switch needs it."""

    def reconfigure(self, settings: WebRtcSettings) -> None: ...


def load_saved_mode(state_dir: Path) -> str | None:
    """The owner's saved choice, or None (never chosen, or the file is unreadable: logged)."""
    path = state_dir / MODE_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
        log.error("ignoring %s (using the config file's mode): %s", path, exc)  # noqa: TRY400
        return None
    mode = document.get("mode") if isinstance(document, dict) else None
    if mode not in MODES:
        log.error("ignoring %s (using the config file's mode): no valid mode in it", path)
        return None
    return str(mode)


def save_mode(state_dir: Path, mode: str) -> None:
    """Raises StateWriteError when the choice cannot be kept (nothing is switched then)."""
    document = {"mode": mode, "changed_at": int(time.time())}
    write_atomic(state_dir / MODE_FILE, json.dumps(document).encode() + b"\n", mode=0o600)


class NetworkModes:
    """Owns the relay client and the ICE settings of new sessions; the supervisor starts it after
    the LAN server (so relay sessions have somewhere to go) and stops it before the sessions."""

    def __init__(
        self,
        *,
        configured_mode: str,
        state_dir: Path,
        sessions: Reconfigurable,
        webrtc_settings: Callable[[str, tuple[IceServer, ...]], WebRtcSettings],
        relay_factory: Callable[[], RelayClient] | None,
    ) -> None:
        self._configured = configured_mode
        self._state_dir = state_dir
        self._sessions = sessions
        self._webrtc_settings = webrtc_settings
        self._relay_factory = relay_factory
        self.relay: RelayClient | None = None
        self.mode = configured_mode
        self.problem: str | None = None
        self._offered: tuple[IceServer, ...] = ()
        """STUN/TURN servers (with credentials) the relay offered; used only in internet mode."""

    def relay_offered(self, servers: tuple[IceServer, ...]) -> None:
        """The relay client got fresh ICE servers: new sessions use them (internet mode only)."""
        self._offered = servers
        if self.mode == "internet":
            self._sessions.reconfigure(self._webrtc_settings(self.mode, servers))

    async def start(self) -> None:
        saved = load_saved_mode(self._state_dir)
        mode = saved or self._configured
        if saved and saved != self._configured:
            log.info(
                "network mode %s (chosen with `petcamctl mode`; the config file says %s)",
                saved,
                self._configured,
            )
        if mode == "internet" and self._relay_factory is None:
            self.problem = "internet mode needs network.relay_url: running in Local Network Mode"
            log.error("%s", self.problem)
            mode = "local"
        await self._apply(mode)

    async def set_mode(self, mode: str) -> bool:
        """Switch and save; returns False when ``mode`` was already on. Raises ModeError or
        StateWriteError (and then nothing changed)."""
        if mode not in MODES:
            raise ModeError(f"unknown mode {mode!r}: choose local or internet")
        if mode == "internet" and self._relay_factory is None:
            raise ModeError("internet mode needs a relay: set network.relay_url in the config file first")
        save_mode(self._state_dir, mode)
        if mode == self.mode:
            return False
        self.problem = None
        await self._apply(mode)
        log.info("network mode switched to %s", mode)
        return True

    async def _apply(self, mode: str) -> None:
        self.mode = mode
        self._sessions.reconfigure(self._webrtc_settings(mode, self._offered if mode == "internet" else ()))
        if mode == "internet" and self._relay_factory is not None:
            if self.relay is None:
                self.relay = self._relay_factory()
                await self.relay.start()
        else:
            await self._stop_relay()

    async def _stop_relay(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            await relay.stop()

    async def stop(self) -> None:
        await self._stop_relay()

    def offered_ice_servers(self) -> tuple[IceServer, ...]:
        return self._offered

    def relay_status(self) -> dict[str, Any] | None:
        return self.relay.status() if self.relay is not None else None

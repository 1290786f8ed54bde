"""The pairing window: a one-time secret shown on the display, valid once, briefly, for a few tries.

The secret becomes the Noise IKpsk2 pre-shared key, proving the viewer saw the device's screen. It
is 128 random bits (not a password), so deriving the 32-byte psk with one hash is sound.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SECRET_BYTES = 16
_PSK_LABEL = b"petcamd pairing psk v1"


def psk_from_secret(secret: bytes) -> bytes:
    return hashlib.sha256(_PSK_LABEL + secret).digest()


class WindowState(enum.Enum):
    OPEN = "open"
    PAIRED = "paired"
    EXPIRED = "expired"
    LOCKED = "locked"  # too many failed attempts
    CANCELLED = "cancelled"


class PairingClosedError(Exception):
    """The window no longer accepts attempts; the message says why, for the owner."""


@dataclass
class PairingWindow:
    """One window. Expiry runs on the monotonic clock; `expires_at_wall` is only for display."""

    lifetime_s: float
    max_failures: int
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(SECRET_BYTES), repr=False)
    failures: int = 0
    _state: WindowState = WindowState.OPEN
    opened_at: float = field(init=False)
    expires_at_wall: int = field(init=False)

    def __post_init__(self) -> None:
        self.opened_at = self.clock()
        self.expires_at_wall = int(self.wall_clock() + self.lifetime_s)

    @property
    def state(self) -> WindowState:
        if self._state is WindowState.OPEN and self.remaining_s <= 0:
            self._state = WindowState.EXPIRED
        return self._state

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.opened_at + self.lifetime_s - self.clock())

    @property
    def psk(self) -> bytes:
        return psk_from_secret(self.secret)

    def check_open(self) -> None:
        state = self.state
        if state is not WindowState.OPEN:
            raise PairingClosedError(_CLOSED_REASONS[state])

    def record_failure(self) -> None:
        if self.state is WindowState.OPEN:
            self.failures += 1
            if self.failures >= self.max_failures:
                self._state = WindowState.LOCKED

    def complete(self) -> None:
        """Single use: the first successful pairing closes the window."""
        self.check_open()
        self._state = WindowState.PAIRED

    def cancel(self) -> None:
        if self.state is WindowState.OPEN:
            self._state = WindowState.CANCELLED


_CLOSED_REASONS = {
    WindowState.PAIRED: "this pairing code was already used",
    WindowState.EXPIRED: "this pairing code has expired",
    WindowState.LOCKED: "too many failed pairing attempts; open a new pairing window",
    WindowState.CANCELLED: "pairing was cancelled",
}

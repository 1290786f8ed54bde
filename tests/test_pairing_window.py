"""Pairing window: single use, expiry on the monotonic clock, lock after N failures."""

from __future__ import annotations

import pytest

from petcamd.secure.pairing import PairingClosedError, PairingWindow, WindowState, psk_from_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_secret_is_128_bits_and_fresh() -> None:
    a, b = PairingWindow(60, 3), PairingWindow(60, 3)
    assert len(a.secret) == 16
    assert a.secret != b.secret
    assert len(a.psk) == 32
    assert a.psk == psk_from_secret(a.secret)
    assert a.secret.hex() not in repr(a)


def test_single_use() -> None:
    window = PairingWindow(60, 3)
    window.complete()
    assert window.state is WindowState.PAIRED
    with pytest.raises(PairingClosedError, match="already used"):
        window.complete()


def test_expires_on_monotonic_clock_regardless_of_wall_clock() -> None:
    clock = Clock()
    wall = [5.0]
    window = PairingWindow(600, 3, clock=clock, wall_clock=lambda: wall[0])
    wall[0] = 1e12  # a wall-clock jump (NTP sync on a Pi without RTC) changes nothing
    clock.now += 599
    window.check_open()
    clock.now += 2
    assert window.state is WindowState.EXPIRED
    with pytest.raises(PairingClosedError, match="expired"):
        window.check_open()


def test_locks_after_max_failures() -> None:
    window = PairingWindow(60, 3)
    window.record_failure()
    window.record_failure()
    window.check_open()
    window.record_failure()
    assert window.state is WindowState.LOCKED
    with pytest.raises(PairingClosedError, match="too many failed"):
        window.complete()

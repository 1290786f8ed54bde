"""The daemon and petcam-view as processes of their own, for tests that measure a process from
outside (memory, file descriptors) or signal it (SIGTERM, SIGKILL). This module holds no tests.

`python -m tests.processes daemon --config FILE --probe FILE` runs what `petcamd --config FILE`
runs (the same config loading, logging and `Daemon` with default options) plus test-only things:
aioice's host addresses are pinned to 127.0.0.1, as the in-process tests' `loopback_ice` fixture
does; SIGUSR1 writes a JSON snapshot of the event loop (tasks, sessions, connections) to the probe
file, since the product exposes no task counts; `--lan-limits` overrides the LAN server's
connection limits (as `RunOptions.lan_limits` does in process) for tests whose viewers all come
from one address. `python -m tests.processes view
ARGS` is `petcam-view ARGS` with the same pinning.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from tests.notify_socket import NotifySocket

ROOT = Path(__file__).resolve().parents[1]


def pin_loopback_ice() -> None:
    """What conftest's `loopback_ice` fixture does, for a whole process."""
    import aioice.ice

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only


# --- inside the daemon process --------------------------------------------------------------------


def _task_name(task: asyncio.Task[Any]) -> str:
    """The task's own name, or its coroutine's for the unnamed ones (aiortc's)."""
    name = task.get_name()
    if re.fullmatch(r"Task-\d+", name):
        coro = task.get_coro()
        return f"({getattr(coro, '__qualname__', type(coro).__name__)})"
    return re.sub(r"\d+", "N", name)


def _snapshot(daemon: Any, seq: int) -> dict[str, Any]:
    gc.collect()
    names = collections.Counter(_task_name(t) for t in asyncio.all_tasks())
    return {
        "seq": seq,
        "tasks": sum(names.values()),
        "task_names": dict(sorted(names.items())),
        # The default executor's idle workers (asyncio_N, up to min(32, CPUs + 4)): a pool, not a leak.
        "threads": sum(not t.name.startswith("asyncio_") for t in threading.enumerate()),
        "executor_threads": sum(t.name.startswith("asyncio_") for t in threading.enumerate()),
        "sessions": len(daemon.sessions.sessions) if daemon.sessions else None,
        "signaling_connections": daemon.signaling.connections if daemon.signaling else None,
        "lan_connections": daemon.lan.connections if daemon.lan else None,
        "hub_subscribers": len(daemon.hub.subscribers) if daemon.hub else None,
    }


async def _serve(config: Any, probe: Path, lan_limits: dict[str, Any]) -> int:
    from petcamd.notify import SystemdNotifier
    from petcamd.signaling.lan_server import ConnectionLimits
    from petcamd.supervisor import EXIT_FAILURE, Daemon, RunOptions

    limits = ConnectionLimits(**lan_limits) if lan_limits else None
    daemon = Daemon(config, SystemdNotifier(), RunOptions(lan_limits=limits))
    seq = itertools.count(1)

    def write_probe() -> None:
        data = json.dumps(_snapshot(daemon, next(seq))).encode()
        partial = probe.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(probe)  # the test never reads half a snapshot

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, write_probe)
    with contextlib.suppress(asyncio.CancelledError):
        return await daemon.run()
    return EXIT_FAILURE


def _daemon_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tests.processes daemon")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--probe", type=Path, required=True)
    parser.add_argument("--lan-limits", type=json.loads, default={}, help="ConnectionLimits fields, JSON")
    args = parser.parse_args(argv)
    from petcamd.__main__ import setup_logging
    from petcamd.config import load_config

    config = load_config(args.config)
    setup_logging(config.logging.level)
    pin_loopback_ice()
    return asyncio.run(_serve(config, args.probe, args.lan_limits))


def _view_main(argv: list[str]) -> int:
    from petcamd.viewer.cli import main

    pin_loopback_ice()
    return main(argv)


# --- the test's side ------------------------------------------------------------------------------


def daemon_config(
    directory: Path, *, max_viewers: int = 4, camera: str = "", network: str = "", extra: str = ""
) -> Path:
    """A small synthetic camera on loopback, on demand (as shipped), no display, no mDNS; `camera`
    and `network` add lines to their sections, `extra` whole sections."""
    path = directory / "petcamd.toml"
    path.write_text(
        f"""
[camera]
source = "test"
{camera}
[stream]
width = 320
height = 240
fps = 15
bitrate = 300000
[network]
lan_address = "127.0.0.1"
lan_port = 0
mdns = false
{network}
[pairing]
display = "none"
[viewers]
max_viewers = {max_viewers}
[state]
directory = "state"
[control]
bus = "session"
{extra}
"""
    )
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra, PYTHONPATH=str(ROOT))
    return env


class DaemonProcess:
    """`petcamd` in a process of its own on a private bus; stderr goes to `log_path`."""

    def __init__(
        self, directory: Path, bus_address: str, config: Path, *, lan_limits: dict[str, Any] | None = None
    ) -> None:
        self.directory = directory
        self.lan_limits = lan_limits or {}
        self.bus_address = bus_address
        self.config = config
        self.probe_path = directory / "probe.json"
        self.log_path = directory / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._bus: MessageBus | None = None
        self._iface: Any = None
        self._seq = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [
                    *(sys.executable, "-m", "tests.processes", "daemon", "--config", str(self.config)),
                    *("--probe", str(self.probe_path), "--lan-limits", json.dumps(self.lan_limits)),
                ],
                env=_env(DBUS_SESSION_BUS_ADDRESS=self.bus_address, **env),
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.directory,
            )

    async def start(self, notify: NotifySocket, **env: str) -> None:
        """Returns once the daemon sent READY=1 to `notify` and its D-Bus name answers."""
        self.proc = self._spawn({**notify.env(), **env})
        try:
            await asyncio.to_thread(notify.wait_for, "READY", 60)
        except AssertionError:
            raise AssertionError("the daemon did not get ready:\n" + self.log()) from None
        from petcamd.control.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH

        self._bus = await MessageBus(bus_address=self.bus_address, bus_type=BusType.SESSION).connect()
        introspection = await self._bus.introspect(BUS_NAME, OBJECT_PATH)
        proxy = self._bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection)
        self._iface = proxy.get_interface(INTERFACE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self._iface.call_get_status())
        return result

    async def peers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(await self._iface.call_list_peers())
        return result

    async def pairing_url(self) -> str:
        url, _expires = await self._iface.call_start_pairing()
        return str(url)

    async def lan_port(self) -> int:
        port = (await self.status())["lan_port"]
        assert isinstance(port, int)
        return port

    async def probe(self, within: float = 10.0) -> dict[str, Any]:
        """A fresh snapshot of the daemon's event loop (taken after a garbage collection)."""
        self._seq += 1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                snapshot: dict[str, Any] = json.loads(self.probe_path.read_bytes())
                if snapshot["seq"] >= self._seq:
                    self._seq = snapshot["seq"]
                    return snapshot
            await asyncio.sleep(0.02)
        raise AssertionError("the daemon wrote no probe snapshot")

    async def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 15.0) -> tuple[int, float]:
        """Signal the daemon; returns its exit code and how long it took to exit."""
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        proc = self.proc
        assert proc is not None
        started = time.monotonic()
        proc.send_signal(sig)
        try:
            code = await asyncio.to_thread(proc.wait, within)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            raise AssertionError(f"the daemon did not exit within {within} s:\n{self.log()}") from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def viewer_process(state_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`petcam-view --state-dir DIR ARGS` (ICE pinned to loopback) in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.processes", "view", "--state-dir", str(state_dir), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


if __name__ == "__main__":
    role, *rest = sys.argv[1:] or [""]
    if role == "daemon":
        sys.exit(_daemon_main(rest))
    if role == "view":
        sys.exit(_view_main(rest))
    sys.exit("usage: python -m tests.processes daemon|view ARGS")

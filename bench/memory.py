"""6. Memory: the real daemon's RSS idle, then with 1 and 4 viewers watching 1280x720@30.

`python -m petcamd` (through bench.daemon, which only pins ICE to loopback) runs with the synthetic
camera, Local Network Mode, a private D-Bus session bus and a fresh state directory. It opens its
first pairing window on the console; the receiver process pairs with petcamd.viewer.client and then
watches in 1 and 4 sessions. RSS is VmRSS from /proc, sampled through each window; the reported
value is the window's highest sample. mDNS stays at its default (on): bound to 127.0.0.1, the
daemon advertises nothing, so nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench.harness import (
    ROOT,
    BenchmarkFailedError,
    Context,
    Json,
    Result,
    Row,
    Target,
    peak_rss_mb,
    rounded,
    rss_mb,
)
from bench.rpc import Worker, workers
from tests.dbus_daemon import private_bus
from tests.ports import free_port

NAME = "memory"
TARGET = Target("rss_4_viewers_mb", "<=", 150, "MB")
PI_ZERO_2_W_MB = 512
_PAIRING_URL = re.compile(r"(https?://\S+/#\S*s=\S+)")


def _config(directory: Path, ctx: Context) -> Path:
    s = ctx.stream
    path = directory / "petcamd.toml"
    state = directory / "state"
    path.write_text(
        f"""
[camera]
source = "test"
[stream]
width = {s.width}
height = {s.height}
fps = {s.fps}
bitrate = {s.bitrate}
keyframe_interval_s = {s.keyframe_interval_s}
[network]
mode = "local"
lan_address = "127.0.0.1"
lan_port = {free_port()}
[pairing]
display = "console"
open_when_unpaired = true
[viewers]
max_viewers = 4
[state]
directory = "{state}"
[control]
bus = "session"
[logging]
level = "warning"
"""
    )
    return path


@contextlib.asynccontextmanager
async def _daemon(
    ctx: Context, config: Path, bus: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The running daemon and the pairing URL it printed."""
    log = ctx.log_dir / "petcamd-daemon.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), DBUS_SESSION_BUS_ADDRESS=bus)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            ctx.python,
            "-m",
            "bench.daemon",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env=env,
        )
    try:
        assert proc.stdout is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = await proc.stdout.readline()
                if not line:
                    raise BenchmarkFailedError(f"petcamd exited before pairing opened; see {log}")
                if match := _PAIRING_URL.search(line.decode(errors="replace")):
                    url = match.group(1)
        # Keep reading stdout so the daemon never blocks on a full pipe.
        drain = asyncio.create_task(proc.stdout.read())
        try:
            yield proc, url
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        if proc.returncode not in (0, -signal.SIGTERM):
            raise BenchmarkFailedError(f"petcamd exited with {proc.returncode}; see {log}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _sample(pid: int, seconds: float) -> float:
    """The highest VmRSS seen over `seconds`."""
    highest = 0.0
    deadline = time.monotonic() + seconds
    while True:
        highest = max(highest, rss_mb(pid))
        if time.monotonic() >= deadline:
            return highest
        await asyncio.sleep(0.2)


async def run(ctx: Context) -> Result:
    window = ctx.pick(1.0, 4.0)
    settle = ctx.pick(1.5, 3.0)
    directory = ctx.log_dir / "memory"
    directory.mkdir()
    config = _config(directory, ctx)
    metrics: Json = {"window_s": window}
    # The viewer process starts alongside the daemon (CPU does not matter here, only memory).
    starting = asyncio.ensure_future(Worker.start(ctx, "receiver"))
    with private_bus(directory) as bus:
        async with (
            _daemon(ctx, config, bus) as (daemon, url),
            workers(starting) as (receiver,),
        ):
            pid = daemon.pid
            ctx.step("memory: daemon pairing window open")
            await asyncio.sleep(settle)
            metrics["rss_idle_mb"] = rounded(await _sample(pid, window), 1)
            await receiver.call("pair", url=url, directory=str(directory / "viewer"))
            ctx.step("memory: paired")
            await receiver.call("watch", n=1)
            await asyncio.sleep(settle)
            metrics["rss_1_viewer_mb"] = rounded(await _sample(pid, window), 1)
            await receiver.call("watch", n=3)
            await asyncio.sleep(settle)
            metrics["rss_4_viewers_mb"] = rounded(await _sample(pid, window), 1)
            ctx.step("memory: stopping viewers")
            watched: Json = await receiver.call("watch_stop")
            ctx.step("memory: viewers stopped")
            await asyncio.sleep(ctx.pick(0.5, 2.0))
            metrics["rss_after_viewers_left_mb"] = rounded(rss_mb(pid), 1)
            # The kernel updates VmHWM lazily, so a sample can be above it.
            sampled = max(metrics["rss_1_viewer_mb"], metrics["rss_4_viewers_mb"])
            metrics["peak_rss_mb"] = rounded(max(peak_rss_mb(pid), sampled), 1)

    sessions = watched["results"]
    if len(sessions) != 4:
        raise BenchmarkFailedError(f"{len(sessions)} viewer sessions ended, expected 4")
    for session in sessions:
        if session["frames_decoded"] < ctx.stream.fps or session["width"] != ctx.stream.width:
            raise BenchmarkFailedError(f"a viewer decoded {session['frames_decoded']} frames: {session}")
        if session["first_frame_s"] is None or session["first_frame_s"] > settle:
            raise BenchmarkFailedError(f"a viewer's first frame came after the window began: {session}")
    metrics["viewer_fps_min"] = rounded(min(s["fps"] for s in sessions), 1)
    metrics["per_viewer_mb"] = rounded((metrics["rss_4_viewers_mb"] - metrics["rss_1_viewer_mb"]) / 3, 1)
    result = Result(NAME, metrics, target=TARGET)
    result.rows = [
        Row("daemon RSS idle (camera off)", f"{metrics['rss_idle_mb']:.0f} MB"),
        Row("daemon RSS, 1 viewer", f"{metrics['rss_1_viewer_mb']:.0f} MB"),
        Row(
            "daemon RSS, 4 viewers",
            f"{metrics['rss_4_viewers_mb']:.0f} MB, peak {metrics['peak_rss_mb']:.0f} MB "
            f"({100 * metrics['peak_rss_mb'] / PI_ZERO_2_W_MB:.0f} % of a Pi Zero 2 W's RAM)",
            TARGET,
        ),
    ]
    return result

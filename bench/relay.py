"""7. Relay: messages forwarded per second on one core, forwarding latency, memory per idle device.

The real `petcam-relay` (python -m petcamd.relay.cli with a config file) is one asyncio thread, so
it never uses more than one core; it is not pinned to a CPU, so that on a shared machine the
scheduler can move it off a core something else is busy on. The load generator (bench.relay_load)
is a separate process. Per-connection and per-address limits are raised out of the way: this
measures forwarding, not the limiter. Messages are DATA envelopes of `PAYLOAD_BYTES` (about one
Noise-framed signaling message), both ways over `SESSIONS` device/viewer sessions.

- throughput: the generator keeps `IN_FLIGHT` messages outstanding (closed loop). The capacity of
  one core is messages forwarded per CPU-second of the relay process under that load (so other
  load on the machine does not count against it); also reported are the rate reached, how busy
  the relay's core was and how long it waited for the CPU.
- latency: send -> receive at a fixed `RATE` (open loop), client to relay to client; it includes
  both clients' WebSocket handling, so it bounds the relay's own share from above.
- memory: VmRSS with 1,000 registered idle devices (each a WebSocket that proved its key) minus
  VmRSS with a handful, per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from bench.harness import (
    ROOT,
    BenchmarkFailedError,
    Context,
    Json,
    Result,
    Row,
    cpu_delta,
    cpu_sample,
    fmt_ms,
    median,
    percentile,
    rounded,
    rss_mb,
)
from bench.rpc import Worker, workers
from tests.ports import free_port

NAME = "relay"
SESSIONS = 8
PAYLOAD_BYTES = 512
IN_FLIGHT = 256
RATE = 2000.0
IDLE_DEVICES = 1000
WARM_DEVICES = 10


def _config(directory: Path, port: int) -> Path:
    path = directory / "petcam-relay.toml"
    path.write_text(
        f"""
[server]
address = "127.0.0.1"
port = {port}
public_origin = "http://127.0.0.1:{port}"
max_connections = 20000
[limits]
messages_per_s = 100000
message_burst = 1000000
bytes_per_s = 1e9
byte_burst = 1000000000
address_messages_per_s = 1000000
address_message_burst = 10000000
connections_per_address = 100000
address_connects_per_s = 100000
address_connect_burst = 1000000
[logging]
level = "warning"
"""
    )
    return path


@contextlib.asynccontextmanager
async def _relay(ctx: Context, config: Path, port: int, name: str = "petcam-relay") -> AsyncIterator[int]:
    """The relay process, once /healthz answers; yields its pid. Its log is `name`.log."""
    log = ctx.log_dir / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            ctx.python, "-m", "petcamd.relay.cli", "--config", str(config), stderr=err, cwd=ROOT, env=env
        )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                if proc.returncode is not None:
                    raise BenchmarkFailedError(f"petcam-relay exited with {proc.returncode}; see {log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise BenchmarkFailedError("petcam-relay did not answer /healthz within 20 s")
                await asyncio.sleep(0.1)
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _metrics(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def _forwarded(values: dict[str, float]) -> float:
    return sum(v for k, v in values.items() if k.startswith("petcam_relay_messages_forwarded_total"))


async def _rss(pid: int) -> float:
    samples = []
    for _ in range(5):
        samples.append(rss_mb(pid))
        await asyncio.sleep(0.1)
    return median(samples)


async def _phase(load: Worker, relay_pid: int, seconds: float, settle: float, **flood: float) -> Json:
    """Flood, settle, then one measured window; every message sent must arrive."""
    await load.call("flood", **flood)
    await asyncio.sleep(settle)
    first = await load.call("mark", record=True)
    start = cpu_sample(relay_pid)
    load_start = cpu_sample(load.pid)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    last = await load.call("mark", record=False)
    t1 = time.monotonic()
    cpu = cpu_delta(start, cpu_sample(relay_pid))
    load_cpu = cpu_delta(load_start, cpu_sample(load.pid))
    stopped = await load.call("stop", settle_s=settle)
    if stopped["received"] != stopped["sent"]:
        raise BenchmarkFailedError(f"{stopped['sent'] - stopped['received']} relayed messages never arrived")
    latencies = last["latencies_ms"]
    if not latencies:
        raise BenchmarkFailedError("no message arrived during the window")
    return {
        "rate": (last["received"] - first["received"]) / (t1 - t0),
        "cpu": cpu.total_s / (t1 - t0),
        "load_cpu": load_cpu.total_s / (t1 - t0),
        "waiting": cpu.waiting_s / (t1 - t0),
        "per_cpu_s": (last["received"] - first["received"]) / max(cpu.total_s, 1e-9),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "received": stopped["received"],
    }


async def run(ctx: Context) -> Result:
    window = ctx.pick(1.0, 5.0)
    port = free_port()
    directory = ctx.log_dir / "relay"
    directory.mkdir()
    config = _config(directory, port)
    metrics: Json = {
        "sessions": SESSIONS,
        "payload_bytes": PAYLOAD_BYTES,
        "in_flight": IN_FLIGHT,
        "fixed_rate_msg_per_s": RATE,
        "idle_devices": IDLE_DEVICES,
        "window_s": window,
    }
    notes: list[str] = []
    async with (
        _relay(ctx, config, port) as relay_pid,
        workers(Worker.start(ctx, "relay-load")) as (load,),
    ):
        await load.call("target", port=port)
        await load.call("register_idle", n=WARM_DEVICES)
        await asyncio.sleep(0.5)
        before = await _rss(relay_pid)
        registered = await load.call("register_idle", n=IDLE_DEVICES, reply_within=120)
        await asyncio.sleep(1.0)
        after = await _rss(relay_pid)
        devices = (await _metrics(port)).get("petcam_relay_devices_registered", 0)
        expected = IDLE_DEVICES + WARM_DEVICES
        if registered["registered"] != expected or devices != expected:
            raise BenchmarkFailedError(f"{devices:.0f} devices registered, expected {expected}")
        metrics["rss_before_mb"] = rounded(before, 1)
        metrics["rss_idle_devices_mb"] = rounded(after, 1)
        metrics["kb_per_idle_device"] = rounded((after - before) * 1024 / IDLE_DEVICES, 1)

        await load.call("sessions", n=SESSIONS, payload_bytes=PAYLOAD_BYTES)
        forwarded_before = _forwarded(await _metrics(port))
        settle = ctx.pick(0.5, 1.0)
        saturated = await _phase(load, relay_pid, window, settle, window=IN_FLIGHT)
        fixed = await _phase(load, relay_pid, window, settle, rate=RATE)
        forwarded = _forwarded(await _metrics(port)) - forwarded_before
        if forwarded != fixed["received"]:
            raise BenchmarkFailedError(
                f"the relay counted {forwarded:.0f} forwards, the clients {fixed['received']}"
            )

    metrics["msg_per_s"] = rounded(saturated["rate"], 0)
    metrics["relay_cpu_s_per_s_saturated"] = rounded(saturated["cpu"], 3)
    metrics["load_cpu_s_per_s_saturated"] = rounded(saturated["load_cpu"], 3)
    metrics["relay_waiting_for_cpu_s_per_s_saturated"] = rounded(saturated["waiting"], 3)
    metrics["msg_per_relay_cpu_s"] = rounded(saturated["per_cpu_s"], 0)
    metrics["p50_ms_saturated"] = rounded(saturated["p50"], 3)
    metrics["p99_ms_saturated"] = rounded(saturated["p99"], 3)
    metrics["fixed_rate_achieved_msg_per_s"] = rounded(fixed["rate"], 0)
    metrics["p50_ms"] = rounded(fixed["p50"], 3)
    metrics["p99_ms"] = rounded(fixed["p99"], 3)
    metrics["relay_cpu_s_per_s_fixed_rate"] = rounded(fixed["cpu"], 3)
    if saturated["cpu"] < 0.85:
        notes.append(
            f"the relay's core was {saturated['cpu'] * 100:.0f} % busy under load (and waiting for the CPU "
            f"{saturated['waiting'] * 100:.0f} % of the time): the rate reached is not the relay's limit, "
            "so its capacity is given per CPU-second"
        )
    if fixed["rate"] < 0.95 * RATE:
        notes.append(f"the fixed rate reached {fixed['rate']:.0f} of {RATE:.0f} messages/s")
    result = Result(NAME, metrics, notes=notes)
    result.rows = [
        Row(
            "forwarding capacity of one core (messages per CPU-second)",
            f"{saturated['per_cpu_s']:,.0f} msg/s",
        ),
        Row(
            "forwarded under closed-loop load",
            f"{saturated['rate']:,.0f} msg/s (relay core {saturated['cpu'] * 100:.0f} % busy, "
            f"{saturated['waiting'] * 100:.0f} % waiting for the CPU)",
        ),
        Row(
            f"forwarding latency at {RATE:,.0f} msg/s, p50 / p99",
            f"{fmt_ms(fixed['p50'] / 1000)} / {fmt_ms(fixed['p99'] / 1000)}",
        ),
        Row(
            f"memory per idle registered device ({IDLE_DEVICES:,} devices)",
            f"{metrics['kb_per_idle_device']:.1f} KiB",
        ),
    ]
    return result

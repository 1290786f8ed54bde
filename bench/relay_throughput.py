"""8. Relay throughput when scaling out: one instance in memory, one with Redis, two with Redis.

Three setups run side by side, every one a real `petcam-relay` process (bench.relay's, with its
limits raised out of the way) and its own load generator process (bench.relay_load):

- `memory`: one instance routing alone (no backplane), as bench.relay measures it;
- `redis_1`: one instance with `[backplane] redis_url` set: devices and viewers on the same
  instance, so frames take the local path and Redis only holds the registrations;
- `redis_2`: two instances sharing the Redis, every device on A and every viewer on B, so every
  frame crosses Redis pub/sub (A publishes, B's subscriber delivers, and back).

All three share one private redis-server (tests/redis_server.py: 127.0.0.1, nothing on disk).
Each round measures the three one after the other, in a rotating order, with `IN_FLIGHT`
messages outstanding (closed loop), `SESSIONS` sessions and `PAYLOAD_BYTES` DATA envelopes both
ways; the ratios are taken within a round and the median of the rounds reported. CPU is read
from /proc per process: the relays' together, Redis apart. On a 2-core machine the two-instance
setup runs four busy processes (load, A, B, Redis) on two cores, so its rate reached is bound by
the machine; messages per CPU-second say what a message costs wherever it runs. Then one window
per setup at a fixed `RATE` gives the forwarding latency, client to relay(s) to client.

Every message sent must arrive, and in the fixed-rate window the relays' own forwarded counters
(summed over instances) must match what the clients received.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
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
)
from bench.relay import _config, _forwarded, _metrics, _relay
from bench.rpc import Worker, workers
from tests.ports import free_port
from tests.redis_server import RedisServer, redis_server

NAME = "relay_throughput"
SESSIONS = 8
PAYLOAD_BYTES = 512
IN_FLIGHT = 256
RATE = 2000.0
SETUPS = ("memory", "redis_1", "redis_2")
LABELS = {
    "memory": "1 instance, in memory",
    "redis_1": "1 instance + Redis",
    "redis_2": "2 instances + Redis (devices on A, viewers on B)",
}


@dataclass
class Setup:
    name: str
    load: Worker
    relay_pids: list[int]
    relay_ports: list[int]
    redis_pid: int | None


def _write_config(ctx: Context, name: str, port: int, redis_url: str | None) -> Path:
    directory = ctx.log_dir / name
    directory.mkdir()
    path = _config(directory, port)
    if redis_url is not None:
        with path.open("a") as config:
            config.write(f'[backplane]\nredis_url = "{redis_url}"\n')
    return path


@contextlib.asynccontextmanager
async def _instance(ctx: Context, name: str, redis_url: str | None) -> AsyncIterator[tuple[int, int]]:
    """One relay process; yields its pid and port."""
    port = free_port()
    async with _relay(ctx, _write_config(ctx, name, port, redis_url), port, name=name) as pid:
        yield pid, port


async def _window(setup: Setup, seconds: float, settle: float, **flood: float) -> Json:
    """Flood, settle, then one measured window; every message sent must arrive."""
    load = setup.load
    await load.call("flood", **flood)
    await asyncio.sleep(settle)
    first = await load.call("mark", record=True)
    pids = [*setup.relay_pids, *([setup.redis_pid] if setup.redis_pid is not None else [])]
    before = {pid: cpu_sample(pid) for pid in pids}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    last = await load.call("mark", record=False)
    elapsed = time.monotonic() - t0
    used = {pid: cpu_delta(before[pid], cpu_sample(pid)) for pid in pids}
    stopped = await load.call("stop", settle_s=settle)
    if stopped["received"] != stopped["sent"]:
        raise BenchmarkFailedError(
            f"{setup.name}: {stopped['sent'] - stopped['received']} relayed messages never arrived"
        )
    if not last["latencies_ms"]:
        raise BenchmarkFailedError(f"{setup.name}: no message arrived during the window")
    relay_cpu = sum(used[pid].total_s for pid in setup.relay_pids) / elapsed
    redis_cpu = used[setup.redis_pid].total_s / elapsed if setup.redis_pid is not None else 0.0
    rate = (last["received"] - first["received"]) / elapsed
    return {
        "rate": rate,
        "relay_cpu": relay_cpu,
        "redis_cpu": redis_cpu,
        "waiting": sum(u.waiting_s for u in used.values()) / elapsed,
        "per_relay_cpu_s": rate / max(relay_cpu, 1e-9),
        "per_cpu_s": rate / max(relay_cpu + redis_cpu, 1e-9),
        "p50": percentile(last["latencies_ms"], 50),
        "p99": percentile(last["latencies_ms"], 99),
        "received": stopped["received"],
    }


async def _forwarded_total(setup: Setup) -> float:
    return sum([_forwarded(await _metrics(port)) for port in setup.relay_ports])


async def _measure(ctx: Context, redis: RedisServer) -> tuple[dict[str, list[Json]], dict[str, Json]]:
    window = ctx.pick(1.0, 4.0)
    settle = ctx.pick(0.5, 1.0)
    rounds = ctx.pick(1, 3)
    async with contextlib.AsyncExitStack() as stack:
        memory = await stack.enter_async_context(_instance(ctx, "relay-memory", None))
        single = await stack.enter_async_context(_instance(ctx, "relay-redis", redis.url))
        a = await stack.enter_async_context(_instance(ctx, "relay-redis-a", redis.url))
        b = await stack.enter_async_context(_instance(ctx, "relay-redis-b", redis.url))
        loads = await stack.enter_async_context(workers(*(Worker.start(ctx, "relay-load") for _ in SETUPS)))
        setups = [
            Setup("memory", loads[0], [memory[0]], [memory[1]], None),
            Setup("redis_1", loads[1], [single[0]], [single[1]], redis.pid),
            Setup("redis_2", loads[2], [a[0], b[0]], [a[1], b[1]], redis.pid),
        ]
        for setup in setups:
            ports = setup.relay_ports
            await setup.load.call("target", port=ports[0], viewer_port=ports[-1])
            await setup.load.call("sessions", n=SESSIONS, payload_bytes=PAYLOAD_BYTES)
        saturated: dict[str, list[Json]] = {name: [] for name in SETUPS}
        for round_index in range(rounds):
            shift = round_index % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                ctx.step(f"{NAME}: round {round_index + 1}, {setup.name}")
                saturated[setup.name].append(await _window(setup, window, settle, window=IN_FLIGHT))
        fixed: dict[str, Json] = {}
        for setup in setups:
            ctx.step(f"{NAME}: {setup.name} at {RATE:g} msg/s")
            fixed[setup.name] = await _window(setup, window, settle, rate=RATE)
            # Both counts are totals since the sessions opened: every message of every window.
            forwarded = await _forwarded_total(setup)
            if forwarded != fixed[setup.name]["received"]:
                raise BenchmarkFailedError(
                    f"{setup.name}: the relays counted {forwarded:.0f} forwards, "
                    f"the clients received {fixed[setup.name]['received']}"
                )
    return saturated, fixed


def _ms(milliseconds: float) -> str:
    return fmt_ms(milliseconds / 1000)


def _ratio(saturated: dict[str, list[Json]], name: str, key: str) -> float:
    """Median over rounds of setup `name` / `memory`, each round's pair measured back to back."""
    return median([r[key] / m[key] for r, m in zip(saturated[name], saturated["memory"], strict=True)])


async def run(ctx: Context) -> Result:
    with redis_server(ctx.log_dir) as redis:
        saturated, fixed = await _measure(ctx, redis)
    by_setup: Json = {}
    for name in SETUPS:
        runs = saturated[name]
        by_setup[name] = {
            "msg_per_s": rounded(median([r["rate"] for r in runs]), 0),
            "msg_per_s_rounds": [rounded(r["rate"], 0) for r in runs],
            "relay_cpu_s_per_s": rounded(median([r["relay_cpu"] for r in runs]), 3),
            "redis_cpu_s_per_s": rounded(median([r["redis_cpu"] for r in runs]), 3),
            "waiting_for_cpu_s_per_s": rounded(median([r["waiting"] for r in runs]), 3),
            "msg_per_relay_cpu_s": rounded(median([r["per_relay_cpu_s"] for r in runs]), 0),
            "msg_per_cpu_s": rounded(median([r["per_cpu_s"] for r in runs]), 0),
            "p50_ms": rounded(fixed[name]["p50"], 3),
            "p99_ms": rounded(fixed[name]["p99"], 3),
            "fixed_rate_achieved_msg_per_s": rounded(fixed[name]["rate"], 0),
        }
    metrics: Json = {
        "sessions": SESSIONS,
        "payload_bytes": PAYLOAD_BYTES,
        "in_flight": IN_FLIGHT,
        "fixed_rate_msg_per_s": RATE,
        "rounds": len(saturated["memory"]),
        "by_setup": by_setup,
        "rate_ratio_redis_1": rounded(_ratio(saturated, "redis_1", "rate"), 3),
        "rate_ratio_redis_2": rounded(_ratio(saturated, "redis_2", "rate"), 3),
        "cost_ratio_redis_1": rounded(1 / _ratio(saturated, "redis_1", "per_cpu_s"), 3),
        "cost_ratio_redis_2": rounded(1 / _ratio(saturated, "redis_2", "per_cpu_s"), 3),
    }
    notes = [
        f"{name}: the fixed rate reached {fixed[name]['rate']:.0f} of {RATE:.0f} messages/s"
        for name in SETUPS
        if fixed[name]["rate"] < 0.95 * RATE
    ]
    result = Result(NAME, metrics, notes=notes)
    for name in SETUPS:
        s = by_setup[name]
        cpu = f"relays {s['relay_cpu_s_per_s'] * 100:.0f} %"
        if name != "memory":
            cpu += f", Redis {s['redis_cpu_s_per_s'] * 100:.0f} %"
        result.rows.append(
            Row(f"{LABELS[name]}: forwarded, closed loop", f"{s['msg_per_s']:,.0f} msg/s ({cpu} of a core)")
        )
    result.rows += [
        Row(
            "messages per CPU-second (relays + Redis): memory / Redis, 1 / Redis, 2",
            " / ".join(f"{by_setup[name]['msg_per_cpu_s']:,.0f}" for name in SETUPS),
        ),
        Row(
            "1 instance + Redis vs in memory: rate, CPU per message",
            f"{metrics['rate_ratio_redis_1']:.2f}x, {metrics['cost_ratio_redis_1']:.2f}x",
        ),
        Row(
            "2 instances + Redis vs in memory: rate, CPU per message",
            f"{metrics['rate_ratio_redis_2']:.2f}x, {metrics['cost_ratio_redis_2']:.2f}x",
        ),
        Row(
            f"latency at {RATE:,.0f} msg/s, p50 / p99: memory; Redis, 1; Redis, 2",
            "; ".join(f"{_ms(by_setup[n]['p50_ms'])} / {_ms(by_setup[n]['p99_ms'])}" for n in SETUPS),
        ),
    ]
    return result

"""3. Setup time: the viewer creating its offer -> its first decoded frame.

The camera is already running (as when another viewer watches or `camera.always_on` is set), so
this is the cost of signaling, ICE, DTLS and the first keyframe. Measured in Local Network Mode
(no STUN/TURN at all), then in internet mode with a STUN server that never answers, where
petcamd bounds gathering (`network.ice_gather_timeout_s`, 0.5 s) and stock aiortc waits for
aioice's own timeout. Viewers join one at a time, further apart than the hub's keyframe rate
limit, so every join gets its keyframe at once.
"""

from __future__ import annotations

import asyncio

from bench.harness import Context, Json, Result, Row, Target, fmt_ms, median, percentile, rounded
from bench.rpc import Worker, workers
from bench.video import Joined, connect, disconnect

NAME = "setup"
TARGET = Target("lan_median_s", "<=", 0.300, "s")
SPACING_S = 0.6
"""Longer than the hub's keyframe rate limit (0.5 s)."""


async def _series(
    ctx: Context, sender: Worker, receiver: Worker, runs: int, variant: str, ice: str
) -> list[Joined]:
    joined: list[Joined] = []
    for _ in range(runs):
        await asyncio.sleep(SPACING_S)
        (one,) = await connect(ctx, sender, receiver, 1, variant, ice)
        joined.append(one)
        await disconnect(sender, receiver)
    return joined


def _summary(prefix: str, joined: list[Joined]) -> Json:
    keys = ("median_s", "p95_s", "max_s", "runs", "offer_to_connected_median_s")
    if not joined:
        return {f"{prefix}_{key}": None for key in keys}
    setups = [j.setup_s for j in joined]
    return {
        f"{prefix}_median_s": rounded(median(setups)),
        f"{prefix}_p95_s": rounded(percentile(setups, 95)),
        f"{prefix}_max_s": rounded(max(setups)),
        f"{prefix}_runs": len(setups),
        f"{prefix}_offer_to_connected_median_s": rounded(
            median([j.connected - j.offer_started for j in joined])
        ),
    }


async def run(ctx: Context) -> Result:
    lan_runs = ctx.pick(5, 20)
    stun_runs = ctx.pick(2, 20)
    stock_runs = ctx.pick(0, 2)  # 5 s each: full runs only
    async with workers(Worker.start(ctx, "sender"), Worker.start(ctx, "receiver")) as (sender, receiver):
        await sender.call("start", mode="passthrough", stream=ctx.stream.to_json(), stock_feed=True)
        await asyncio.sleep(ctx.pick(0.5, 1.0))
        lan = await _series(ctx, sender, receiver, lan_runs, "petcamd", "lan")
        stun = await _series(ctx, sender, receiver, stun_runs, "petcamd", "stun")
        stock = await _series(ctx, sender, receiver, stock_runs, "stock-passthrough", "stun")

    metrics: Json = {}
    metrics |= _summary("lan", lan)
    metrics |= _summary("stun_unreachable", stun)
    metrics |= _summary("stock_stun_unreachable", stock)
    stock_median = metrics["stock_stun_unreachable_median_s"]
    metrics["stock_over_petcamd_stun"] = (
        None if stock_median is None else rounded(stock_median / metrics["stun_unreachable_median_s"], 1)
    )
    metrics["lan_samples_ms"] = [round(j.setup_s * 1000, 1) for j in lan]
    result = Result(NAME, metrics, target=TARGET)
    result.rows = [
        Row(
            f"Local Network Mode, median (p95) of {lan_runs}",
            f"{fmt_ms(metrics['lan_median_s'])} ({fmt_ms(metrics['lan_p95_s'])})",
            TARGET,
        ),
        Row(
            f"unreachable STUN, median (p95) of {stun_runs}",
            f"{fmt_ms(metrics['stun_unreachable_median_s'])} ({fmt_ms(metrics['stun_unreachable_p95_s'])})",
        ),
    ]
    if stock_median is not None:
        result.rows.append(
            Row(
                f"same, stock aiortc, median of {stock_runs}",
                f"{fmt_ms(stock_median)} ({metrics['stock_over_petcamd_stun']:.1f}x petcamd)",
            )
        )
    return result

"""4. Join time: a viewer joining a running stream (IDR every 2 s), connected -> first decoded frame.

petcamd subscribes the viewer at a keyframe it asks the camera for; stock aiortc behaviour is the
same passthrough track fed without keyframe requests (aiortc passes no PLI to a passthrough
track), so the viewer waits for the next periodic IDR. Joins of the two kinds alternate, each after
a random pause, so they land at random points of the GOP; the seed is fixed.
"""

from __future__ import annotations

import asyncio
import random

from bench.harness import (
    BenchmarkFailedError,
    Context,
    Json,
    Result,
    Row,
    Target,
    fmt_ms,
    median,
    percentile,
    rounded,
)
from bench.rpc import Worker, workers
from bench.video import Joined, connect, disconnect

NAME = "join"
TARGET = Target("petcamd_median_s", "<=", 0.150, "s")
VARIANTS = {"petcamd": "petcamd", "stock": "stock-passthrough"}


async def run(ctx: Context) -> Result:
    joins = ctx.pick(2, 15)
    rng = random.Random(ctx.seed)
    gop = ctx.stream.keyframe_interval_s
    joined: dict[str, list[Joined]] = {name: [] for name in VARIANTS}
    async with workers(Worker.start(ctx, "sender"), Worker.start(ctx, "receiver")) as (sender, receiver):
        await sender.call("start", mode="passthrough", stream=ctx.stream.to_json(), stock_feed=True)
        await asyncio.sleep(ctx.pick(0.5, 1.0))
        for i in range(joins):
            order = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                # A random point of the GOP; petcamd joins also stay clear of the hub's keyframe
                # rate limit (0.5 s), which would otherwise delay their keyframe.
                await asyncio.sleep(rng.uniform(0, gop) + (0.6 if name == "petcamd" else 0.0))
                before = await sender.call("counters")
                (one,) = await connect(ctx, sender, receiver, 1, VARIANTS[name])
                after = await sender.call("counters")
                await disconnect(sender, receiver)
                asked = after["keyframes_requested"] - before["keyframes_requested"]
                if name == "stock" and asked:
                    raise BenchmarkFailedError("the stock join asked the camera for a keyframe")
                if name == "petcamd" and not asked:
                    raise BenchmarkFailedError("the petcamd join did not ask the camera for a keyframe")
                joined[name].append(one)

    metrics: Json = {}
    for name, series in joined.items():
        waits = [j.join_s for j in series]
        metrics[f"{name}_median_s"] = rounded(median(waits))
        metrics[f"{name}_p95_s"] = rounded(percentile(waits, 95))
        metrics[f"{name}_max_s"] = rounded(max(waits))
        metrics[f"{name}_offer_to_frame_median_s"] = rounded(median([j.setup_s for j in series]))
    metrics["joins_per_variant"] = joins
    metrics["keyframe_interval_s"] = gop
    metrics["stock_over_petcamd"] = rounded(
        metrics["stock_median_s"] / max(metrics["petcamd_median_s"], 1e-6), 1
    )
    result = Result(NAME, metrics, target=TARGET)
    result.rows = [
        Row(
            f"petcamd, median (p95) of {joins}",
            f"{fmt_ms(metrics['petcamd_median_s'])} ({fmt_ms(metrics['petcamd_p95_s'])})",
            TARGET,
        ),
        Row(
            f"stock aiortc, median (p95) of {joins}",
            f"{fmt_ms(metrics['stock_median_s'])} ({fmt_ms(metrics['stock_p95_s'])}), "
            f"{metrics['stock_over_petcamd']:.1f}x petcamd",
        ),
    ]
    return result

"""2. Fan-out: sender CPU and each viewer's decoded fps with 1, 2, 4 and 8 viewers.

One petcamd sender (hub + SessionManager, max_viewers 8) and one receiver process. Viewers are
added to reach each count; after they settle, one window measures the sender's non-camera CPU
and every viewer's decoded frames. "Cost" is that CPU, fixed overhead included: the target says
that eight viewers cost no more than eight separate one-viewer senders would, plus a little.
"""

from __future__ import annotations

import asyncio

from bench.harness import (
    BenchmarkFailedError,
    Context,
    Json,
    Result,
    Row,
    Target,
    fmt_cores,
    median,
    rounded,
)
from bench.rpc import Worker, workers
from bench.video import connect, measure

NAME = "fanout"
COUNTS = (1, 2, 4, 8)
QUICK_COUNTS = (1, 8)
TARGET = Target("ratio_8_to_1", "<=", 8.5, "x")


async def run(ctx: Context) -> Result:
    window = ctx.pick(1.5, 5.0)
    settle = ctx.pick(0.5, 1.5)
    counts = ctx.pick(QUICK_COUNTS, COUNTS)
    nominal = ctx.stream.fps
    by_viewers: Json = {}
    notes: list[str] = []
    kbps: list[float] = []
    async with workers(Worker.start(ctx, "sender"), Worker.start(ctx, "receiver")) as (sender, receiver):
        await sender.call("start", mode="passthrough", stream=ctx.stream.to_json(), max_viewers=max(COUNTS))
        await asyncio.sleep(settle)
        idle = await measure(sender, None, ctx.pick(1.0, 3.0))
        by_viewers["0"] = {
            "send_cpu_s_per_s": rounded(idle.send_cpu_s_per_s),
            "camera_cpu_s_per_s": rounded(idle.camera_cpu_s_per_s),
        }
        have = 0
        for count in counts:
            await connect(ctx, sender, receiver, count - have, "petcamd")
            have = count
            await asyncio.sleep(settle)
            window_result = await measure(sender, receiver, window)
            fps = sorted(window_result.fps.values())
            kbps.append(window_result.stream_kbps)
            if len(fps) != count:
                raise BenchmarkFailedError(f"{len(fps)} viewers reported frames, expected {count}")
            if fps[0] < 0.5 * nominal:
                raise BenchmarkFailedError(f"with {count} viewers one decoded only {fps[0]:.1f} fps")
            if fps[0] < 0.9 * nominal:
                receiver_load = window_result.receiver_cpu_s_per_s or 0.0
                notes.append(
                    f"with {count} viewers the slowest decoded {fps[0]:.1f} fps; the viewers' process used "
                    f"{receiver_load * 100:.0f} % of a core decoding"
                )
            by_viewers[str(count)] = {
                "send_cpu_s_per_s": rounded(window_result.send_cpu_s_per_s),
                "camera_cpu_s_per_s": rounded(window_result.camera_cpu_s_per_s),
                "receiver_cpu_s_per_s": rounded(window_result.receiver_cpu_s_per_s),
                "sender_waiting_for_cpu_s_per_s": rounded(window_result.waiting_s_per_s),
                "fps_min": rounded(fps[0], 1),
                "fps_median": rounded(median(fps), 1),
            }

    one = by_viewers["1"]["send_cpu_s_per_s"]
    eight = by_viewers["8"]["send_cpu_s_per_s"]
    ratio = eight / max(one, 1e-6)
    marginal = (eight - by_viewers["0"]["send_cpu_s_per_s"]) / 8
    metrics: Json = {
        "ratio_8_to_1": rounded(ratio, 2),
        "per_viewer_marginal_cpu_s_per_s": rounded(marginal),
        "by_viewers": by_viewers,
        "stream_kbps": rounded(median(kbps), 0),
        "window_s": window,
    }
    result = Result(NAME, metrics, target=TARGET, notes=notes)
    result.rows = [
        Row(
            f"{count} viewer{'s' if count > 1 else ''}: send CPU, slowest viewer",
            f"{fmt_cores(by_viewers[str(count)]['send_cpu_s_per_s'])}, "
            f"{by_viewers[str(count)]['fps_min']:.1f} fps",
        )
        for count in counts
    ]
    result.rows.append(Row("8 viewers / 1 viewer (send CPU)", f"{ratio:.2f}x", TARGET))
    return result

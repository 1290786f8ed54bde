"""Owned tasks and staged shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from petcamd.lifecycle import Stage, TaskOwner, run_stages


async def test_stages_run_in_order_within_budgets() -> None:
    order: list[str] = []

    def part(name: str, delay: float) -> Callable[[], Awaitable[None]]:
        async def stop() -> None:
            await asyncio.sleep(delay)
            order.append(name)

        return stop

    started = time.monotonic()
    results = await run_stages(
        [
            Stage("viewers", [part("v1", 0.05), part("v2", 0.01)], 1.0),
            Stage("control", [part("hangs", 30)], 0.2),
            Stage("camera", [part("cam", 0.01)], 1.0),
        ]
    )
    elapsed = time.monotonic() - started
    assert order == ["v2", "v1", "cam"]  # parts of a stage run concurrently, stages in order
    assert [r.name for r in results] == ["viewers", "control", "camera"]
    assert [r.timed_out for r in results] == [False, True, False]
    assert results[1].elapsed_s < 0.9  # the hung part was abandoned at its budget
    assert elapsed < 2.0


async def test_a_failing_stop_does_not_stop_shutdown() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    ran: list[str] = []

    async def later() -> None:
        ran.append("later")

    results = await run_stages([Stage("a", [broken], 1.0), Stage("b", [later], 1.0)])
    assert ran == ["later"]
    assert not any(r.timed_out for r in results)


async def test_vital_task_ending_is_fatal() -> None:
    owner = TaskOwner()

    async def crashes() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("bad frame")

    owner.spawn("reader", crashes(), vital=True)
    reason = await asyncio.wait_for(owner.fatal, 2)
    assert "reader" in reason
    assert "bad frame" in reason


async def test_vital_task_returning_is_fatal_but_cancellation_is_not() -> None:
    owner = TaskOwner()

    async def returns() -> None:
        return None

    async def forever() -> None:
        await asyncio.sleep(3600)

    task = owner.spawn("forever", forever(), vital=True)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not owner.fatal.done()
    owner.spawn("quitter", returns(), vital=True)
    assert "ended unexpectedly" in await asyncio.wait_for(owner.fatal, 2)


async def test_cancel_all_releases_every_task() -> None:
    owner = TaskOwner()
    for i in range(5):
        owner.spawn(f"t{i}", asyncio.sleep(3600))
    assert owner.running == 5
    await owner.cancel_all(1.0)
    await asyncio.sleep(0)
    assert owner.running == 0

"""Owned tasks and staged shutdown: the rules every long-running part of the daemon lives by.

No task is fire-and-forget. A task that must run for the daemon's whole life and ends anyway
(crash or silent return) is fatal: the daemon stops with a non-zero exit so systemd restarts it,
rather than limping on without, say, its watchdog or its LAN server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Component(Protocol):
    """Something the supervisor starts and stops. `stop()` must be idempotent and safe before start."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class TaskOwner:
    """Names and keeps every task; an unexpected end of a vital one becomes a fatal error."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fatal: asyncio.Future[str] | None = None

    @property
    def fatal(self) -> asyncio.Future[str]:
        """Resolves with a reason when a vital task ends; the supervisor waits on it."""
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], *, vital: bool = False) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._on_done(t, vital=vital))
        return task

    def _on_done(self, task: asyncio.Task[Any], *, vital: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)
        if vital:
            reason = f"vital task {task.get_name()} ended" + (f": {exc!r}" if exc else " unexpectedly")
            if not self.fatal.done():
                self.fatal.set_result(reason)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def cancel_all(self, grace_s: float) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                log.warning("task %s did not finish within %.1f s of cancellation", task.get_name(), grace_s)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of shutdown: its parts stop concurrently within `budget_s` seconds."""

    name: str
    stops: Sequence[Callable[[], Awaitable[None]]]
    budget_s: float


@dataclass(frozen=True, slots=True)
class StageResult:
    name: str
    elapsed_s: float
    timed_out: bool


async def run_stages(
    stages: Sequence[Stage], *, clock: Callable[[], float] = time.monotonic
) -> list[StageResult]:
    """Stop stage after stage; a stage over its budget is abandoned (logged) so shutdown always ends."""
    results: list[StageResult] = []
    for stage in stages:
        started = clock()
        tasks = [asyncio.ensure_future(stop()) for stop in stage.stops]
        timed_out = False
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=stage.budget_s)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "shutdown stage %s: a part failed to stop", stage.name, exc_info=task.exception()
                    )
            if pending:
                timed_out = True
                log.warning(
                    "shutdown stage %s exceeded its %.1f s budget; moving on", stage.name, stage.budget_s
                )
                for task in pending:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(pending, timeout=0.5)
        elapsed = clock() - started
        log.debug("shutdown stage %s done in %.3f s", stage.name, elapsed)
        results.append(StageResult(stage.name, elapsed, timed_out))
    return results

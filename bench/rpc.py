"""Benchmark processes and how the orchestrator drives them: one JSON line per request and reply.

Sender and receiver run in separate processes so that one's CPU is never counted as the other's.
Each worker is `python -m bench.worker ROLE`; its stdout carries only replies (stray prints are
sent to stderr, which goes to a log file quoted when the worker fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from bench.harness import ROOT, BenchmarkFailedError, Context

CALL_TIMEOUT_S = 60.0
_serial = itertools.count(1)


class WorkerError(BenchmarkFailedError):
    """A worker reported an exception or died."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class Worker:
    """The orchestrator's handle on one worker process."""

    def __init__(self, role: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.role = role
        self.proc = proc
        self.log = log
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, ctx: Context, role: str) -> Worker:
        log = ctx.log_dir / f"{role}-{next(_serial)}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                ctx.python,
                "-m",
                "bench.worker",
                role,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
                limit=1 << 24,
            )
        worker = cls(role, proc, log)
        await worker.call("ping", reply_within=30)
        return worker

    async def call(self, op: str, *, reply_within: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        async with self._lock:
            stdin, stdout = self.proc.stdin, self.proc.stdout
            assert stdin is not None
            assert stdout is not None
            request_id = next(self._ids)
            stdin.write(json.dumps({"id": request_id, "op": op, "args": args}).encode() + b"\n")
            try:
                await stdin.drain()
                line = await asyncio.wait_for(stdout.readline(), reply_within)
            except (TimeoutError, ConnectionError) as exc:
                raise WorkerError(
                    f"{self.role} worker: {op} got no reply ({type(exc).__name__}); log:\n{_tail(self.log)}"
                ) from None
            if not line:
                await self.proc.wait()
                raise WorkerError(
                    f"{self.role} worker exited ({self.proc.returncode}) during {op}; log:\n{_tail(self.log)}"
                )
            reply = json.loads(line)
            if reply.get("id") != request_id:
                raise WorkerError(f"{self.role} worker: reply out of order: {reply!r:.200}")
            if not reply["ok"]:
                raise WorkerError(f"{self.role} worker: {op} failed: {reply['error']}\n{reply['traceback']}")
            return reply["result"]

    async def close(self, within: float = 15.0) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(WorkerError, ConnectionError):
                await self.call("exit", reply_within=within)
            try:
                await asyncio.wait_for(self.proc.wait(), within)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def workers(*starting: Awaitable[Worker]) -> AsyncIterator[list[Worker]]:
    """Start workers concurrently (imports take a while); always close every one of them."""
    results = await asyncio.gather(*starting, return_exceptions=True)
    started = [w for w in results if isinstance(w, Worker)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield started
    finally:
        await asyncio.gather(*(w.close() for w in started), return_exceptions=True)


# --- worker side ------------------------------------------------------------------------------


class Role(Protocol):
    """A worker's state; each request `op` calls its `op_<op>(**args)` coroutine."""

    async def aclose(self) -> None: ...


async def serve(role: Role, out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            op = request["op"]
            reply: dict[str, Any] = {"id": request["id"], "ok": True, "result": None}
            if op == "exit":
                out.write(json.dumps(reply) + "\n")
                out.flush()
                break
            try:
                if op != "ping":
                    handler: Callable[..., Awaitable[Any]] = getattr(role, f"op_{op}")
                    reply["result"] = await handler(**request["args"])
            except Exception as exc:
                reply = {
                    "id": request["id"],
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        await role.aclose()

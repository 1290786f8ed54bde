"""Many viewers coming and going must leave no tasks, sockets, threads or peer objects behind."""

from __future__ import annotations

import asyncio
import gc
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from petcamd.camera.hub import FrameHub
from petcamd.webrtc.session import ViewerSession
from petcamd.webrtc.sessions import SessionManager, WebRtcSettings
from petcamd.webrtc.track import PassthroughVideoTrack
from tests.test_webrtc_harness import Viewer, join, running_hub, wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


@dataclass(frozen=True)
class Snapshot:
    tasks: int
    fds: int
    threads: int
    peer_connections: int
    sessions: int
    tracks: int

    @classmethod
    def take(cls) -> Snapshot:
        gc.collect()
        objects = gc.get_objects()
        return cls(
            tasks=len(asyncio.all_tasks()),
            fds=len(list(Path("/proc/self/fd").iterdir())),
            threads=threading.active_count(),
            peer_connections=sum(isinstance(o, RTCPeerConnection) for o in objects),
            sessions=sum(isinstance(o, ViewerSession) for o in objects),
            tracks=sum(isinstance(o, PassthroughVideoTrack) for o in objects),
        )


async def cycle(manager: SessionManager, hub: FrameHub, i: int) -> None:
    viewer = Viewer()
    await join(manager, viewer, f"viewer-{i % 3}")
    await asyncio.wait_for(viewer.first_frame.wait(), 5)
    if i % 2:
        await viewer.close()  # the viewer hangs up
        assert await wait_for(lambda: not manager.sessions, 5)
    else:
        await manager.close_peer(f"viewer-{i % 3}")  # revoked / device side closes
        await viewer.close()
    assert hub.subscribers == []


@pytest.mark.timeout(120)
async def test_50_connect_disconnect_cycles_leave_nothing_behind() -> None:
    # A short keyframe rate limit: this test is about resources, not join latency.
    async with running_hub(keyframe_min_interval_s=0.05) as (hub, _):
        manager = SessionManager(hub, WebRtcSettings())
        for i in range(3):  # warm-up: codec and thread-pool initialisation happen once
            await cycle(manager, hub, i)
        await asyncio.sleep(0.2)
        before = Snapshot.take()
        for i in range(50):
            await cycle(manager, hub, i)
        # aiortc's fire-and-forget tasks (ICE consent, connect) wind down on their own.
        await wait_for(lambda: len(asyncio.all_tasks()) <= before.tasks, 5)
        after = Snapshot.take()
        await manager.stop()
    print(f"before {before}\nafter  {after}")
    assert after.tasks <= before.tasks
    assert after.fds <= before.fds
    assert after.threads <= before.threads
    assert after.peer_connections <= before.peer_connections
    assert after.sessions == 0
    assert after.tracks == 0

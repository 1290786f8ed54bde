"""petcam-view end to end: the CLI as a subprocess against an in-process daemon on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import av.logging
import pytest

from petcamd.camera.h264 import iter_nal_units
from petcamd.protocol.pairing_url import decode_pairing_url, encode_pairing_url
from petcamd.supervisor import Daemon
from tests.test_lan_signaling import live_sessions, running_daemon, small_camera
from tests.test_webrtc_harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
FPS = 15

# The CLI's own process gets the same loopback pinning as the `loopback_ice` fixture.
BOOTSTRAP = (
    "import sys, aioice.ice\n"
    "aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ['127.0.0.1'] if use_ipv4 else []\n"
    "from petcamd.viewer.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


async def petcam_view(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", BOOTSTRAP, "--state-dir", str(state_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pairing_url(daemon: Daemon) -> str:
    assert daemon.controller is not None
    return daemon.controller.start_pairing().url


@pytest.mark.timeout(120)
async def test_pair_then_watch_with_json(tmp_path: Path, bus_address: str) -> None:
    state = tmp_path / "viewer"
    async with running_daemon(tmp_path, bus_address, source=small_camera()) as daemon:
        paired = await petcam_view(state, "--json", "pair", pairing_url(daemon), "--name", "CLI viewer")
        assert paired.returncode == 0, paired.stderr
        pairing = json.loads(paired.stdout)
        assert daemon.controller is not None
        assert [p.name for p in daemon.controller.peers()] == ["CLI viewer"]

        listed = await petcam_view(state, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (device,) = json.loads(listed.stdout)
        assert device["device_id"] == pairing["device_id"]
        assert "device_key" not in device

        human = await petcam_view(state, "list")
        assert pairing["device_id"] in human.stdout

        watched = await petcam_view(state, "watch", "--frames", "30", "--json")
        assert watched.returncode == 0, watched.stderr
        result = json.loads(watched.stdout)
        print(
            f"pair {pairing['pair_s'] * 1000:.0f} ms; first frame {result['first_frame_s'] * 1000:.0f} ms "
            f"(connect {result['connect_s'] * 1000:.0f} ms); {result['frames_decoded']} frames at "
            f"{result['fps']:.1f} fps via {result['path']}"
        )
        assert result["frames_decoded"] >= 30
        assert result["path"] == "host"
        assert result["first_frame_s"] < 3.0
        assert result["fps"] > 0.7 * FPS
        assert (result["width"], result["height"]) == (320, 240)

        text = await petcam_view(state, "watch", pairing["device_id"][:6], "--frames", "5")
        assert text.returncode == 0, text.stderr
        assert "frames decoded at 320x240" in text.stdout
        assert "direct on the LAN (host)" in text.stdout

        # Without a limit it watches until Ctrl-C, then sums up and exits 0.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BOOTSTRAP,
            "--state-dir",
            str(state),
            "watch",
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert await wait_for(lambda: live_sessions(daemon) == 1, 20)
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stdout, stderr = out.decode(), err.decode()
        assert proc.returncode == 0, stderr
        assert "until Ctrl-C" in stdout
        assert "frames decoded" in stdout
        assert await wait_for(lambda: live_sessions(daemon) == 0, 3)


def avcc_units(packet: bytes) -> tuple[bytes, ...]:
    """NAL units of an MP4 sample (4-byte big-endian lengths)."""
    units: list[bytes] = []
    i = 0
    while i < len(packet):
        size = int.from_bytes(packet[i : i + 4], "big")
        units.append(packet[i + 4 : i + 4 + size])
        i += 4 + size
    return tuple(units)


@pytest.mark.timeout(120)
async def test_record_keeps_the_encoders_bytes_and_timing(tmp_path: Path, bus_address: str) -> None:
    state = tmp_path / "viewer"
    out = tmp_path / "out.mp4"
    source = small_camera()
    async with running_daemon(tmp_path, bus_address, source=source) as daemon:
        paired = await petcam_view(state, "pair", pairing_url(daemon))
        assert paired.returncode == 0, paired.stderr
        watched = await petcam_view(state, "--json", "watch", "--duration", "5", "--record", str(out))
        assert watched.returncode == 0, watched.stderr
        result = json.loads(watched.stdout)
    encoded = list(source.frames)

    packets: list[tuple[tuple[bytes, ...], int, bool]] = []
    decoded = 0
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as ffmpeg_log, av.open(str(out)) as container:
            stream = container.streams.video[0]
            time_base = stream.time_base
            assert time_base is not None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                assert packet.pts is not None
                packets.append((avcc_units(bytes(packet)), packet.pts, packet.is_keyframe))
                decoded += len(packet.decode())
    finally:
        av.logging.set_level(level)
    errors = [entry for entry in ffmpeg_log if entry[0] <= av.logging.ERROR]
    assert errors == []

    print(f"recorded {len(packets)} packets over {result['duration_s']:.1f} s, decoded {decoded}")
    assert result["recorded_packets"] == len(packets)
    assert len(packets) >= 0.8 * FPS * 4.5
    assert decoded == len(packets)
    assert packets[0][2]  # starts at a keyframe

    # Byte-identical to the encoder's output, NAL unit for NAL unit, in order and without gaps.
    sent = [tuple(iter_nal_units(frame.data)) for frame in encoded]
    start = sent.index(packets[0][0])
    assert [units for units, _, _ in packets] == sent[start : start + len(packets)]

    # Presentation times are the camera's timestamps (90 kHz through RTP), up to the MP4 time base.
    origin_us = encoded[start].timestamp_us
    for (_, pts, _), frame in zip(packets, encoded[start:], strict=False):
        expected_s = (frame.timestamp_us - origin_us) / 1e6
        assert abs(float(pts * time_base) - expected_s) <= 2 / 90_000 + float(time_base)


@pytest.mark.timeout(120)
async def test_clear_messages_and_exit_codes(tmp_path: Path, bus_address: str) -> None:
    state = tmp_path / "viewer"
    nothing = await petcam_view(state, "watch")
    assert nothing.returncode == 2
    assert "no device is paired" in nothing.stderr

    garbage = await petcam_view(state, "pair", "https://example.org/#v=9")
    assert garbage.returncode == 1
    assert "not a petcamd pairing URL" in garbage.stderr

    async with running_daemon(tmp_path, bus_address, source=small_camera()) as daemon:
        assert daemon.controller is not None
        url = pairing_url(daemon)
        assert (await petcam_view(state, "pair", url)).returncode == 0

        used = await petcam_view(tmp_path / "other", "pair", url)
        assert used.returncode == 4
        assert "no longer valid" in used.stderr
        assert "petcamctl pair" in used.stderr

        # A code past its (displayed) expiry: the viewer says so in those words.
        stale = decode_pairing_url(pairing_url(daemon))
        daemon.controller.cancel_pairing()
        expired_url = encode_pairing_url(
            "http://127.0.0.1", dataclasses.replace(stale, expires_at=int(time.time()) - 60)
        )
        expired = await petcam_view(tmp_path / "other", "pair", expired_url)
        assert expired.returncode == 4
        assert "expired at" in expired.stderr

        (peer,) = daemon.controller.peers()
        daemon.controller.revoke_peer(peer.peer_id)
        revoked = await petcam_view(state, "watch", "--frames", "5")
        assert revoked.returncode == 5
        assert "not paired" in revoked.stderr

    offline = await petcam_view(state, "watch", "--frames", "5")
    assert offline.returncode == 3
    assert "not reachable" in offline.stderr
    for run in (used, expired, revoked, offline):
        assert "Traceback" not in run.stderr

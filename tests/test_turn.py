"""TURN credentials from the relay, used for real: a relay process configured with a real coturn's
shared secret hands credentials to the daemon and to a viewer, and both allocate with them.

Which candidate pair wins behind real NATs is tests/test_nat.py's subject; on loopback the pair is
host, so this test proves the credentials by coturn's own log of successful allocations.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from petcamd.viewer.client import pair, watch
from petcamd.viewer.state import ViewerState
from tests.coturn import running_coturn
from tests.ports import free_port
from tests.test_lan_signaling import running_daemon
from tests.test_relay_mode import FAST_RELAY, RelayProcess, internet, registered
from tests.test_webrtc_harness import wait_for

pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.mark.timeout(120)
async def test_device_and_viewer_allocate_with_the_relays_turn_credentials(
    tmp_path: Path, bus_address: str
) -> None:
    secret = secrets.token_urlsafe(24)
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    with running_coturn(
        tmp_path / "coturn", auth_secret=secret, extra_args=["--allow-loopback-peers", "--verbose"]
    ) as turn:
        port = free_port()
        relay = RelayProcess(tmp_path / "relay", port, f"http://127.0.0.1:{port}")
        with relay.config.open("a") as config:
            config.write(
                f'[turn]\nurls = ["{turn.url("stun")}", "{turn.url("turn")}", '
                f'"{turn.url("turn", transport="tcp")}"]\nsecret_file = "{secret_file}"\nttl_s = 600\n'
            )
        await relay.start()
        try:
            async with running_daemon(
                tmp_path, bus_address, network=internet(port), relay=FAST_RELAY
            ) as daemon:
                await registered(daemon)
                assert daemon.modes is not None
                assert daemon.modes.relay is not None
                assert daemon.sessions is not None
                client = daemon.modes.relay
                await wait_for(lambda: client.ice_servers is not None, 5)  # right after REGISTERED
                offered = client.status()
                assert offered["ice_servers"] == [
                    turn.url("stun"),
                    turn.url("turn"),
                    turn.url("turn", transport="tcp"),
                ]
                servers = daemon.sessions.settings.ice_servers
                assert [s.url for s in servers] == offered["ice_servers"]
                assert all(
                    s.username and s.username.endswith(":device-" + daemon.modes.relay._device_id)
                    for s in servers
                    if s.is_turn
                )

                assert daemon.controller is not None
                # `petcamctl nettest` allocates with the same credentials, over UDP and TCP.
                report = (await daemon.controller.network_test()).to_dict()
                assert [(t["transport"], t["allocated"]) for t in report["turn"]] == [
                    ("udp", True),
                    ("tcp", True),
                ]
                state = ViewerState(tmp_path / "viewer")
                device = await pair(state, daemon.controller.start_pairing().url, "TURN viewer", via="relay")
                result = await watch(state, device, frames=15, via="relay")
                assert result.frames_decoded >= 15
                await daemon.controller.set_mode("local")  # local mode: no STUN/TURN for new sessions
                assert daemon.sessions.settings.ice_servers == ()
        finally:
            await relay.stop()
        log = turn.log()
    # coturn accepted allocations for both ends: the credentials really work.
    allocated = re.findall(r"user <(\d+:[\w-]+)>: incoming packet ALLOCATE processed, success", log)
    labels = {user.split(":", 1)[1] for user in allocated}
    assert any(label.startswith("device-") for label in labels), log[-2000:]
    assert "viewer" in labels, log[-2000:]
    assert secret not in "".join(relay.log)  # the shared secret never reaches the relay's log

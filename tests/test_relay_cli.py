"""petcam-relay's config file and command line; the real process writes nothing anywhere."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petcamd.protocol.relay import (
    Challenge,
    Connect,
    Data,
    Open,
    Registered,
    decode_envelope,
    prove_registration,
)
from petcamd.relay.config import ConfigError, RelayConfig, config_to_toml_values, load_config, parse_config
from tests.notify_socket import NotifySocket

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "config" / "petcam-relay.toml"


def test_packaged_file_lists_every_key_with_the_code_defaults() -> None:
    assert tomllib.loads(PACKAGED.read_text()) == config_to_toml_values(RelayConfig())


def test_every_packaged_key_has_a_comment_above_it() -> None:
    lines = PACKAGED.read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = [prev for prev in lines[:index] if prev.strip()][-1]
            assert above.startswith("#") or "=" in above, f"key without explanation: {line}"


def test_packaged_file_needs_only_the_public_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(PACKAGED)
    assert len(info.value.problems) == 1
    assert "public_origin: must be set" in info.value.problems[0]
    path = tmp_path / "relay.toml"
    path.write_text(PACKAGED.read_text().replace('public_origin = ""', 'public_origin = "https://r.example"'))
    config = load_config(path)
    assert config.origin == "https://r.example"
    assert config.tls.certificate is None
    assert config.server.static_dir is None


def test_all_errors_at_once_with_did_you_mean(tmp_path: Path) -> None:
    raw = {
        "server": {"public_origin": "https://r.example/path", "adress": "::", "port": 70000},
        "limts": {},
        "limits": {"messages_per_s": "fast", "max_message_bytes": 100_000},
        "tls": {"certificate": "missing.pem"},
        "metrics": {"allow": ["10.0.0.0/8", "nonsense"]},
        "logging": {"level": "loud"},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="r.toml", base_dir=tmp_path)
    text = "\n".join(info.value.problems)
    assert all(p.startswith("r.toml: ") for p in info.value.problems)
    assert "[server] unknown key 'adress' (did you mean 'address'?)" in text
    assert "[server] port: must be at most 65535" in text
    assert "unknown section [limts] (did you mean 'limits'?)" in text
    assert "[limits] messages_per_s: must be a number, not a string" in text
    assert "[limits] max_message_bytes: must be at most 65540" in text
    assert "[metrics] allow: must list IP addresses or networks, not 'nonsense'" in text
    assert "must be one of 'debug', 'info', 'warning', 'error', not 'loud'" in text
    assert "[server] public_origin: must be an origin such as" in text
    assert "[tls] certificate and private_key: set both" in text
    assert f"[tls] certificate: no such file: {tmp_path / 'missing.pem'}" in text
    assert len(info.value.problems) == 10


def test_turn_settings_are_checked(tmp_path: Path) -> None:
    base = {"server": {"public_origin": "https://r.example"}}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "turn": {"urls": ["turn:t.example:3478", "http://t.example"]}}, source="r.toml")
    text = "\n".join(info.value.problems)
    assert "[turn] urls: 'http://t.example' is not a stun:, stuns:, turn: or turns: URL" in text
    assert "[turn] secret_file: TURN URLs need the secret shared with the TURN server" in text
    assert parse_config({**base, "turn": {"urls": ["stun:t.example:3478"]}}).turn.urls  # STUN needs no secret
    short = tmp_path / "secret"
    short.write_text("too short\n")
    config = tmp_path / "relay.toml"
    config.write_text(
        '[server]\npublic_origin = "https://r.example"\n'
        f'[turn]\nurls = ["turn:t.example:3478"]\nsecret_file = "{short}"\n'
    )
    result = _run("--config", str(config), "--check-config")
    assert result.returncode == 2
    assert "the TURN secret must be at least 16 characters" in result.stderr
    assert "too short" not in result.stderr + result.stdout  # never the secret itself


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    path = tmp_path / "relay.toml"
    path.write_text('[server]\npublic_origin = "https://r.example"\nstatic_dir = "web"\n')
    assert load_config(path).server.static_dir == tmp_path / "web"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "petcamd.relay.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=30,
    )


def test_check_config_reports_problems_and_success(tmp_path: Path) -> None:
    bad = _run("--config", str(PACKAGED), "--check-config")
    assert bad.returncode == 2
    assert "configuration has 1 problem(s)" in bad.stderr
    assert "Traceback" not in bad.stderr
    good = tmp_path / "relay.toml"
    good.write_text('[server]\npublic_origin = "https://r.example"\n')
    ok = _run("--config", str(good), "--check-config")
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout


def test_check_config_loads_the_tls_files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    path = tmp_path / "relay.toml"
    path.write_text(
        '[server]\npublic_origin = "https://r.example"\n'
        '[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'
    )
    result = _run("--config", str(path), "--check-config")
    assert result.returncode == 2
    assert "TLS: cannot use certificate" in result.stderr


def test_the_relay_imports_no_daemon_parts() -> None:
    code = textwrap.dedent(
        """
        import sys
        import petcamd.relay.cli, petcamd.relay.server
        banned = ("aiortc", "av", "dbus_fast", "zeroconf", "qrcode", "PIL", "petcamd.camera",
                  "petcamd.webrtc", "petcamd.signaling", "petcamd.control", "petcamd.supervisor",
                  "petcamd.display", "petcamd.config", "petcamd.secure.keystore")
        loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))
        print(loaded)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert result.stdout.strip() == "[]"


# Runs the real petcam-relay with an audit hook that reports every attempt to create, open for
# writing, rename, delete or change a file; in an empty working directory and HOME.
_WATCHED = textwrap.dedent(
    """
    import os, sys
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
              "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.move", "shutil.rmtree"}
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and path is not None and not isinstance(path, int):
                sys.__stderr__.write(f"WRITE ATTEMPT {event} {path!r} {mode!r}\\n")
        elif event in EVENTS:
            sys.__stderr__.write(f"WRITE ATTEMPT {event} {args[0]!r}\\n")
    sys.addaudithook(hook)
    """
)
_RELAY = "from petcamd.relay.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_the_write_watch_sees_writes(tmp_path: Path) -> None:
    code = _WATCHED + "open('made.txt', 'w').close()\nos.mkdir('dir')\nopen('made.txt').close()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.stderr.count("WRITE ATTEMPT") == 2, result.stderr


async def test_the_real_process_writes_nothing_and_stops_cleanly(tmp_path: Path) -> None:
    work, home, tmp, etc = (tmp_path / name for name in ("work", "home", "tmp", "etc"))
    for directory in (work, home, tmp, etc):
        directory.mkdir()
    config = etc / "relay.toml"
    config.write_text(
        '[server]\nport = 0\npublic_origin = "https://relay.test"\n[logging]\nlevel = "debug"\n'
    )
    notify = NotifySocket(etc)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "XDG_RUNTIME_DIR": str(tmp),
        **notify.env(),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WATCHED + _RELAY,
        "--config",
        str(config),
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
            assert line, "relay exited before listening"
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            port = int(match.group(1)) if match else None
        await asyncio.get_running_loop().run_in_executor(None, notify.wait_for, "READY", 5)
        await _exercise(port)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert "WRITE ATTEMPT" not in stderr, stderr
    assert "relay stopped" in stderr
    assert any("STOPPING" in fields for _, fields in notify.snapshot())
    for directory in (work, home, tmp):
        assert list(directory.iterdir()) == [], directory
    assert sorted(p.name for p in etc.iterdir()) == ["notify.sock", "relay.toml"]


async def _exercise(port: int) -> None:
    """A registration, a session with frames both ways, and a refused registration."""
    base = f"ws://127.0.0.1:{port}"
    key = X25519PrivateKey.generate()
    async with aiohttp.ClientSession() as session:
        device = await session.ws_connect(f"{base}/device")
        challenge = decode_envelope(await device.receive_bytes(timeout=5))
        assert isinstance(challenge, Challenge)
        await device.send_bytes(prove_registration(key, challenge, "https://relay.test").encode())
        registered = decode_envelope(await device.receive_bytes(timeout=5))
        assert isinstance(registered, Registered)
        viewer = await session.ws_connect(f"{base}/viewer")
        await viewer.send_bytes(Connect(1, registered.device_id).encode())
        opened = decode_envelope(await device.receive_bytes(timeout=5))
        assert isinstance(opened, Open)
        await viewer.send_bytes(Data(1, b"\x04hello").encode())
        assert decode_envelope(await device.receive_bytes(timeout=5)) == Data(opened.conn_id, b"\x04hello")
        await device.send_bytes(Data(opened.conn_id, b"\x04back").encode())
        assert decode_envelope(await viewer.receive_bytes(timeout=5)) == Data(1, b"\x04back")
        forger = await session.ws_connect(f"{base}/device")
        await forger.receive_bytes(timeout=5)
        await forger.send_bytes(b"\x11" + bytes(64))
        await forger.receive(timeout=5)
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert "petcam_relay_sessions 1" in await response.text()
        for ws in (viewer, device, forger):
            await ws.close()

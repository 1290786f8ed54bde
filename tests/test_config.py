"""Config: packaged defaults, layered files, every error reported at once without a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from petcamd.config import Config, ConfigError, config_to_toml_values, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "config" / "petcamd.toml"


def test_packaged_file_lists_every_key_with_the_code_defaults() -> None:
    packaged = tomllib.loads(PACKAGED.read_text())
    assert packaged == config_to_toml_values(Config())


def test_every_packaged_key_has_a_comment_above_it() -> None:
    lines = PACKAGED.read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = [prev for prev in lines[:index] if prev.strip()][-1]
            assert above.startswith("#") or "=" in above, f"key without explanation: {line}"


def test_file_overrides_defaults_and_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "petcamd.toml"
    path.write_text(
        '[stream]\nfps = 15\n[state]\ndirectory = "state"\n[network]\nice_servers = ["stun:a:1"]\n'
    )
    config = load_config(path)
    assert config.stream.fps == 15
    assert config.stream.width == 1280
    assert config.state.directory == tmp_path / "state"
    assert config.network.ice_servers == ("stun:a:1",)


def test_all_errors_at_once_with_did_you_mean() -> None:
    raw = {"stream": {"fsp": 30, "width": "wide", "height": -4}, "netwrok": {}, "camera": {"source": "usb"}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="f.toml")
    problems = info.value.problems
    assert len(problems) == 5
    text = "\n".join(problems)
    assert "[stream] unknown key 'fsp' (did you mean 'fps'?)" in text
    assert "[stream] width: must be an integer, not a string" in text
    assert "[stream] height: must be at least 16" in text
    assert "unknown section [netwrok] (did you mean 'network'?)" in text
    assert "must be one of 'auto', 'picamera', 'v4l2', 'test', not 'usb'" in text
    assert all(p.startswith("f.toml: ") for p in problems)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[stream\nfps=1", "not valid TOML"),
        ("stream = 3", "[stream] must be a table"),
        ("[network]\nlan_address = 'nowhere'", "must be an IP address"),
        ("[camera]\nalways_on = 1", "must be true or false"),
        ("[network]\nice_servers = 'stun:x'", "must be a list"),
        ("[network]\nrelay_url = 'relay.example.org'", "[network] relay_url: the scheme must be"),
    ],
)
def test_bad_values(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def _check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "petcamd", "--check-config", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_check_config_cli_reports_both_errors_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[camera]\nsorce = "test"\n[stream]\nfps = "thirty"\n')
    result = _check_config("--config", str(path))
    assert result.returncode != 0
    assert "unknown key 'sorce' (did you mean 'source'?)" in result.stderr
    assert "[stream] fps: must be an integer, not a string" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_cli_accepts_the_packaged_and_dev_files() -> None:
    for path in (PACKAGED, ROOT / "config" / "dev.toml"):
        result = _check_config("--config", str(path))
        assert result.returncode == 0, result.stderr
        assert "configuration OK" in result.stdout

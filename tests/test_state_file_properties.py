"""Hypothesis properties for the files petcamd and its tools read from disk and that had none yet:
the config files (petcamd's and petcam-relay's), the device identity, the saved network mode and
petcam-view's devices.json. (peers.json has its own in test_keystore.py; the wire parsers theirs in
test_messages, test_channel_properties, test_noise_properties, test_relay_protocol and
test_pairing_url.)

Each property: whatever the bytes, the reader returns a value or raises its one documented error,
never anything else, and a value it accepts is one the daemon can use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from petcamd import config as daemon_config
from petcamd.relay import config as relay_config
from petcamd.secure.identity import Identity, IdentityError, load_or_create_identity
from petcamd.signaling.modes import MODE_FILE, MODES, load_saved_mode
from petcamd.tomlconfig import ConfigError
from petcamd.viewer.state import PairedDevice, StateError, ViewerState

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DEEP_JSON = b"[" * 100_000
"""Nested past Python's recursion limit: json.loads raises RecursionError, not ValueError."""


def in_temp_dir(check: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as name:
        check(Path(name))


# --- config files ----------------------------------------------------------------------------------

toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def known_keys(cls: type[Any]) -> st.SearchStrategy[dict[str, dict[str, Any]]]:
    """Sections and keys the settings class really has (plus a few it does not), any values."""
    fields = {
        name: [f.name for f in dataclasses.fields(hint)] for name, hint in typing.get_type_hints(cls).items()
    }
    section_names = st.sampled_from([*fields, "extra"])
    return st.dictionaries(
        section_names,
        st.dictionaries(
            st.sampled_from([name for names in fields.values() for name in names] + ["x"]), toml_values
        ),
        max_size=4,
    )


def assert_usable(settings_object: Any) -> None:
    """Every number the daemon will use is finite and inside its declared range."""
    for section in dataclasses.fields(settings_object):
        values = getattr(settings_object, section.name)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, float):
                assert math.isfinite(value), (section.name, f.name, value)
            low, high = f.metadata.get("range", (None, None))
            if low is not None:
                assert value >= low, (section.name, f.name, value)
            if high is not None:
                assert value <= high, (section.name, f.name, value)


@FAST
@given(raw=known_keys(daemon_config.Config))
@example(raw={"camera": {"stall_timeout_s": math.nan}})  # was accepted: nan passes every range check
@example(raw={"network": {"ice_gather_timeout_s": math.inf}})
def test_daemon_config_values_are_refused_or_usable(raw: dict[str, dict[str, Any]]) -> None:
    try:
        assert_usable(daemon_config.parse_config(raw))
    except ConfigError as exc:
        problems = exc.problems
        assert problems


@FAST
@given(raw=known_keys(relay_config.RelayConfig))
@example(raw={"server": {"public_origin": "https://relay.test"}, "limits": {"messages_per_s": math.nan}})
def test_relay_config_values_are_refused_or_usable(raw: dict[str, dict[str, Any]]) -> None:
    raw = {**raw, "server": {"public_origin": "https://relay.test", **raw.get("server", {})}}
    try:
        assert_usable(relay_config.parse_config(raw))
    except ConfigError as exc:
        problems = exc.problems
        assert problems


def test_nan_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match=r"stall_timeout_s: must be a finite number, not nan"):
        daemon_config.parse_config({"camera": {"stall_timeout_s": math.nan}})


@FAST
@given(text=st.text(max_size=300))
@example(text="[camera]\nsource = " + "[" * 3000 + "]" * 3000)  # tomllib: RecursionError
@example(text="a = " + "{b=" * 3000 + "1" + "}" * 3000)
@example(text="[camera]\nstall_timeout_s = nan\n")
def test_any_config_file_is_loaded_or_refused_with_config_error(text: str) -> None:
    def check(directory: Path) -> None:
        path = directory / "petcamd.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        for load in (daemon_config.load_config, relay_config.load_config):
            try:
                assert_usable(load(path))
            except ConfigError as exc:
                problems = exc.problems
                assert problems

    in_temp_dir(check)


@pytest.mark.parametrize("load", [daemon_config.load_config, relay_config.load_config])
def test_deeply_nested_config_is_a_config_error(tmp_path: Path, load: Callable[[Path], object]) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("[camera]\nsource = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load(path)


# --- the device identity ----------------------------------------------------------------------------


@FAST
@given(raw=st.binary(max_size=400) | st.builds(lambda v: json.dumps(v).encode(), toml_values))
@example(raw=DEEP_JSON)
def test_any_identity_file_loads_or_is_refused_and_kept(raw: bytes) -> None:
    def check(directory: Path) -> None:
        path = directory / "device.key"
        path.write_bytes(raw)
        try:
            identity = load_or_create_identity(path)
        except IdentityError:
            assert path.read_bytes() == raw  # never replaced
            return
        assert isinstance(identity, Identity)

    in_temp_dir(check)


# --- the saved network mode -------------------------------------------------------------------------


@FAST
@given(raw=st.binary(max_size=200) | st.builds(lambda v: json.dumps({"mode": v}).encode(), toml_values))
@example(raw=DEEP_JSON)  # was a RecursionError: the daemon refused to start (a crash loop under systemd)
@example(raw=b'{"mode": "internet"}')
def test_any_mode_file_gives_a_mode_or_none(raw: bytes) -> None:
    def check(directory: Path) -> None:
        (directory / MODE_FILE).write_bytes(raw)
        assert load_saved_mode(directory) in (None, *MODES)

    in_temp_dir(check)


def test_a_deeply_nested_mode_file_is_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / MODE_FILE).write_bytes(DEEP_JSON)
    with caplog.at_level(logging.ERROR):
        assert load_saved_mode(tmp_path) is None
    assert "using the config file's mode" in caplog.text


# --- petcam-view's devices.json -----------------------------------------------------------------------


def device_entry() -> dict[str, Any]:
    identity = Identity.generate()
    device = PairedDevice(identity.key_id, identity.public_key, "a" * 16, "Cam", ("127.0.0.1",), 8080)
    return device.to_json()


@FAST
@given(
    raw=st.binary(max_size=300)
    | st.builds(
        lambda entry, key, value: json.dumps({"version": 1, "devices": [{**entry, key: value}]}).encode(),
        st.builds(device_entry),
        st.sampled_from(
            ["device_id", "device_key", "peer_id", "name", "addresses", "port", "relay_url", "x"]
        ),
        toml_values,
    )
)
@example(raw=DEEP_JSON)  # was a RecursionError: petcam-view died with a traceback
def test_any_devices_file_lists_devices_or_is_a_state_error(raw: bytes) -> None:
    def check(directory: Path) -> None:
        (directory / "devices.json").write_bytes(raw)
        try:
            devices = ViewerState(directory).devices()
        except StateError as exc:
            message = str(exc)
            assert "damaged" in message
            return
        assert all(isinstance(d, PairedDevice) and len(d.device_key) == 32 for d in devices)

    in_temp_dir(check)

"""Settings: TOML files parsed into frozen dataclasses.

The dataclass defaults below are the single source of truth; config/petcamd.toml is their commented
copy (a test keeps the two identical). Validation collects every problem in one pass so an owner
fixes a config file once, not once per error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from petcamd.camera.source import StreamSettings
from petcamd.protocol.relay import relay_origin
from petcamd.tomlconfig import ConfigError, bounds, load_file, parse_sections, to_toml_values

__all__ = [
    "SYSTEM_CONFIG_PATH",
    "Config",
    "ConfigError",
    "config_to_toml_values",
    "load_config",
    "parse_config",
]

SYSTEM_CONFIG_PATH = Path("/etc/petcamd/petcamd.toml")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str = field(default="Pet camera", metadata={"nonempty": True})


@dataclass(frozen=True, slots=True)
class CameraConfig:
    source: Literal["auto", "picamera", "v4l2", "test"] = "auto"
    device: str = ""
    always_on: bool = False
    linger_s: float = field(default=10.0, metadata=bounds(0, 3600))
    stall_timeout_s: float = field(default=5.0, metadata=bounds(0.5, 300))
    keyframe_min_interval_s: float = field(default=0.5, metadata=bounds(0, 10))


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    mode: Literal["local", "internet"] = "local"
    lan_address: str = field(default="0.0.0.0", metadata={"ip": True})  # noqa: S104 - serving the LAN is the point
    lan_port: int = field(default=8080, metadata=bounds(0, 65535))
    https: bool = False
    https_port: int = field(default=8443, metadata=bounds(0, 65535))
    relay_url: str = ""
    ice_servers: tuple[str, ...] = ()
    ice_gather_timeout_s: float = field(default=0.5, metadata=bounds(0.05, 10))
    mdns: bool = True


@dataclass(frozen=True, slots=True)
class PairingConfig:
    window_s: float = field(default=600.0, metadata=bounds(30, 86400))
    open_when_unpaired: bool = True
    max_failed_attempts: int = field(default=5, metadata=bounds(1, 100))
    display: Literal["auto", "framebuffer", "console", "none"] = "auto"


@dataclass(frozen=True, slots=True)
class ViewersConfig:
    max_viewers: int = field(default=4, metadata=bounds(1, 32))


@dataclass(frozen=True, slots=True)
class StateConfig:
    directory: Path = Path("/var/lib/petcamd")


@dataclass(frozen=True, slots=True)
class ControlConfig:
    bus: Literal["system", "session"] = "system"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class Config:
    device: DeviceConfig = DeviceConfig()
    camera: CameraConfig = CameraConfig()
    stream: StreamSettings = StreamSettings()
    network: NetworkConfig = NetworkConfig()
    pairing: PairingConfig = PairingConfig()
    viewers: ViewersConfig = ViewersConfig()
    state: StateConfig = StateConfig()
    control: ControlConfig = ControlConfig()
    logging: LoggingConfig = LoggingConfig()


def load_config(path: Path | None = None) -> Config:
    """Defaults, overlaid by `path` or, when none is given, by the system file if it exists."""
    if path is None:
        if not SYSTEM_CONFIG_PATH.exists():
            return Config()
        path = SYSTEM_CONFIG_PATH
    return parse_config(load_file(path), source=str(path), base_dir=path.parent)


def parse_config(raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    return parse_sections(Config, raw, source=source, base_dir=base_dir, cross_checks=_cross_checks)


def _cross_checks(config: Config) -> list[str]:
    relay_url = config.network.relay_url
    if relay_url:
        try:
            relay_origin(relay_url)
        except ValueError as exc:
            return [f"[network] relay_url: {exc}, not {relay_url!r}"]
    return []


def config_to_toml_values(config: Config) -> dict[str, dict[str, Any]]:
    return to_toml_values(config)

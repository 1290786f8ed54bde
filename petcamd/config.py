"""Settings: TOML files parsed into frozen dataclasses.

The dataclass defaults below are the single source of truth; config/petcamd.toml is their commented
copy (a test keeps the two identical). Validation collects every problem in one pass so an owner
fixes a config file once, not once per error.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from petcamd.camera.source import StreamSettings

SYSTEM_CONFIG_PATH = Path("/etc/petcamd/petcamd.toml")


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"range": (low, high)}  # the key StreamSettings uses for its bounds too


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str = field(default="Pet camera", metadata={"nonempty": True})


@dataclass(frozen=True, slots=True)
class CameraConfig:
    source: Literal["auto", "picamera", "v4l2", "test"] = "auto"
    device: str = ""
    always_on: bool = False
    linger_s: float = field(default=10.0, metadata=_range(0, 3600))
    stall_timeout_s: float = field(default=5.0, metadata=_range(0.5, 300))
    keyframe_min_interval_s: float = field(default=0.5, metadata=_range(0, 10))


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    mode: Literal["local", "internet"] = "local"
    lan_address: str = field(default="0.0.0.0", metadata={"ip": True})  # noqa: S104 - serving the LAN is the point
    lan_port: int = field(default=8080, metadata=_range(0, 65535))
    relay_url: str = ""
    ice_servers: tuple[str, ...] = ()
    ice_gather_timeout_s: float = field(default=0.5, metadata=_range(0.05, 10))


@dataclass(frozen=True, slots=True)
class PairingConfig:
    window_s: float = field(default=600.0, metadata=_range(30, 86400))
    open_when_unpaired: bool = True
    max_failed_attempts: int = field(default=5, metadata=_range(1, 100))
    display: Literal["auto", "framebuffer", "console", "none"] = "auto"


@dataclass(frozen=True, slots=True)
class ViewersConfig:
    max_viewers: int = field(default=4, metadata=_range(1, 32))


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


class ConfigError(Exception):
    """Every problem found in one configuration file, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: Path | None = None) -> Config:
    """Defaults, overlaid by `path` or, when none is given, by the system file if it exists."""
    if path is None:
        if not SYSTEM_CONFIG_PATH.exists():
            return Config()
        path = SYSTEM_CONFIG_PATH
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, source=str(path), base_dir=path.parent)


def parse_config(raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    problems: list[str] = []
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name, value in raw.items():
        if name not in hints:
            problems.append(f"{source}: unknown section [{name}]{_did_you_mean(name, hints)}")
        elif not isinstance(value, dict):
            problems.append(f"{source}: [{name}] must be a table, not {_toml_type(value)}")
        else:
            sections[name] = _parse_section(hints[name], name, value, source, base_dir, problems)
    if problems:
        raise ConfigError(problems)
    return Config(**sections)


def _parse_section(
    cls: type[Any],
    section: str,
    table: Mapping[str, Any],
    source: str,
    base_dir: Path | None,
    problems: list[str],
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: [{section}] {key}"
        if key not in fields:
            problems.append(f"{source}: [{section}] unknown key '{key}'{_did_you_mean(key, fields)}")
            continue
        try:
            converted = _convert(hints[key], value, base_dir)
            _check_constraints(fields[key].metadata, converted)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        values[key] = converted
    return cls(**values)


def _convert(hint: Any, value: Any, base_dir: Path | None) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"must be one of {allowed}, not {value!r}")
        return value
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        if not isinstance(value, list):
            raise ValueError(f"must be a list, not {_toml_type(value)}")
        return tuple(_convert(item, v, base_dir) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_toml_type(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {_toml_type(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {_toml_type(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_toml_type(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a path string, not {_toml_type(value)}")
        path = Path(value)
        return path if path.is_absolute() or base_dir is None else (base_dir / path).resolve()
    raise TypeError(f"unsupported config type {hint!r}")  # a programming error, not a user one


def _check_constraints(metadata: Mapping[str, Any], value: Any) -> None:
    low, high = metadata.get("range", (None, None))
    if low is not None and value < low:
        raise ValueError(f"must be at least {low}, not {value}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}, not {value}")
    if metadata.get("nonempty") and not str(value).strip():
        raise ValueError("must not be empty")
    if metadata.get("ip"):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address, not {value!r}") from None


def _did_you_mean(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _toml_type(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def config_to_toml_values(config: Config) -> dict[str, dict[str, Any]]:
    """The config as TOML-shaped data (tests compare it with the packaged file)."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(config):
        values: dict[str, Any] = {}
        for f in dataclasses.fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), f.name)
            values[f.name] = (
                list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
            )
        out[section.name] = values
    return out

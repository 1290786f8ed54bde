"""petcam-relay settings: a TOML file parsed into frozen dataclasses, every problem reported at once.

The same approach as petcamd/config.py (defaults in code, config/petcam-relay.toml their commented
copy, did-you-mean for unknown keys). Its helpers are not imported: petcamd.config pulls in the
camera layer, which the relay must run without (docs/relay.md, "Configuration").
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from petcamd.protocol.relay import MAX_ENVELOPE_LEN, relay_origin

SYSTEM_CONFIG_PATH = Path("/etc/petcam-relay/petcam-relay.toml")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"range": (low, high)}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    address: str = field(default="127.0.0.1", metadata={"ip": True})
    port: int = field(default=8443, metadata=_range(0, 65535))
    public_origin: str = ""
    static_dir: Path | None = None
    trusted_proxies: tuple[str, ...] = field(default=(), metadata={"networks": True})
    max_connections: int = field(default=10000, metadata=_range(1, 1_000_000))


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: Path | None = None
    private_key: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = field(default=MAX_ENVELOPE_LEN, metadata=_range(128, MAX_ENVELOPE_LEN))
    messages_per_s: float = field(default=20.0, metadata=_range(0.1, 100_000))
    message_burst: int = field(default=100, metadata=_range(1, 1_000_000))
    bytes_per_s: float = field(default=65536.0, metadata=_range(1024, 1e9))
    byte_burst: int = field(default=524288, metadata=_range(1024, 1_000_000_000))
    address_messages_per_s: float = field(default=200.0, metadata=_range(0.1, 1_000_000))
    address_message_burst: int = field(default=1000, metadata=_range(1, 10_000_000))
    connections_per_address: int = field(default=32, metadata=_range(1, 100_000))
    address_connects_per_s: float = field(default=2.0, metadata=_range(0.01, 100_000))
    address_connect_burst: int = field(default=40, metadata=_range(1, 1_000_000))
    max_viewers_per_device: int = field(default=8, metadata=_range(1, 1000))
    max_sessions_per_viewer: int = field(default=4, metadata=_range(1, 1000))
    send_queue_bytes: int = field(default=1048576, metadata=_range(1024, 1_000_000_000))


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    heartbeat_s: float = field(default=20.0, metadata=_range(0.05, 3600))
    register_s: float = field(default=10.0, metadata=_range(0.05, 600))
    idle_s: float = field(default=60.0, metadata=_range(0.05, 86400))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    allow: tuple[str, ...] = field(default=("127.0.0.0/8", "::1/128"), metadata={"networks": True})


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    server: ServerConfig = ServerConfig()
    tls: TlsConfig = TlsConfig()
    limits: LimitsConfig = LimitsConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def origin(self) -> str:
        """The normalized public origin (validated at load)."""
        return relay_origin(self.server.public_origin)

    @property
    def trusted_proxies(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.server.trusted_proxies)

    @property
    def metrics_allow(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.metrics.allow)


class ConfigError(Exception):
    """Every problem found in one configuration file, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: Path | None = None) -> RelayConfig:
    """Defaults overlaid by ``path`` (the system file by default: public_origin has no default)."""
    path = SYSTEM_CONFIG_PATH if path is None else path
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, source=str(path), base_dir=path.parent)


def parse_config(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> RelayConfig:
    problems: list[str] = []
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(RelayConfig)
    for name, value in raw.items():
        if name not in hints:
            problems.append(f"{source}: unknown section [{name}]{_did_you_mean(name, hints)}")
        elif not isinstance(value, dict):
            problems.append(f"{source}: [{name}] must be a table, not {_toml_type(value)}")
        else:
            sections[name] = _parse_section(hints[name], name, value, source, base_dir, problems)
    config = RelayConfig(**sections)
    problems += [f"{source}: {problem}" for problem in _cross_checks(config)]
    if problems:
        raise ConfigError(problems)
    return config


def _cross_checks(config: RelayConfig) -> list[str]:
    """Rules that involve more than one key, or the file system."""
    problems: list[str] = []
    server, tls, limits = config.server, config.tls, config.limits
    if not server.public_origin:
        problems.append(
            "[server] public_origin: must be set to the https origin clients use, such as "
            "'https://relay.example.org' (device registrations are bound to it)"
        )
    else:
        parts = urllib.parse.urlsplit(server.public_origin)
        try:
            relay_origin(server.public_origin)
        except ValueError as exc:
            problems.append(f"[server] public_origin: {exc}")
        else:
            if parts.scheme.lower() not in ("http", "https") or parts.path not in ("", "/") or parts.query:
                problems.append(
                    "[server] public_origin: must be an origin such as 'https://relay.example.org' "
                    "(scheme, host and optional port; no path)"
                )
    if (tls.certificate is None) != (tls.private_key is None):
        problems.append("[tls] certificate and private_key: set both (built-in TLS) or neither (plain HTTP)")
    for name, path in (("certificate", tls.certificate), ("private_key", tls.private_key)):
        if path is not None and not path.is_file():
            problems.append(f"[tls] {name}: no such file: {path}")
    if server.static_dir is not None and not server.static_dir.is_dir():
        problems.append(f"[server] static_dir: no such directory: {server.static_dir}")
    if limits.max_message_bytes > limits.byte_burst:
        problems.append("[limits] byte_burst: must be at least max_message_bytes")
    if limits.max_message_bytes > limits.send_queue_bytes:
        problems.append("[limits] send_queue_bytes: must be at least max_message_bytes")
    return problems


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
        if key not in fields:
            problems.append(f"{source}: [{section}] unknown key '{key}'{_did_you_mean(key, fields)}")
            continue
        try:
            converted = _convert(hints[key], value, base_dir)
            _check_constraints(fields[key].metadata, converted)
        except ValueError as exc:
            problems.append(f"{source}: [{section}] {key}: {exc}")
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
        item = get_args(hint)[0]
        if not isinstance(value, list):
            raise ValueError(f"must be a list, not {_toml_type(value)}")
        return tuple(_convert(item, v, base_dir) for v in value)
    if origin is types.UnionType and set(get_args(hint)) == {Path, type(None)}:
        if not isinstance(value, str):
            raise ValueError(f"must be a path string, not {_toml_type(value)}")
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() or base_dir is None else (base_dir / path).resolve()
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
    raise TypeError(f"unsupported config type {hint!r}")  # a programming error, not a user one


def _check_constraints(metadata: Mapping[str, Any], value: Any) -> None:
    low, high = metadata.get("range", (None, None))
    if low is not None and value < low:
        raise ValueError(f"must be at least {low}, not {value}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}, not {value}")
    if metadata.get("ip"):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address, not {value!r}") from None
    if metadata.get("networks"):
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"must list IP addresses or networks, not {item!r}") from None


def _did_you_mean(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def config_to_toml_values(config: RelayConfig) -> dict[str, dict[str, Any]]:
    """The config as TOML-shaped data (a test compares it with the packaged file)."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(config):
        values: dict[str, Any] = {}
        for f in dataclasses.fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            elif value is None:
                value = ""
            values[f.name] = value
        out[section.name] = values
    return out

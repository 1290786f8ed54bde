"""petcam-relay settings: a TOML file parsed into frozen dataclasses, every problem reported at once.

The same approach as petcamd/config.py, through the same ground-floor parser (petcamd/tomlconfig.py):
defaults in code, config/petcam-relay.toml their commented copy, did-you-mean for unknown keys.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from petcamd.protocol.relay import MAX_ENVELOPE_LEN, is_ice_url, relay_origin
from petcamd.relay.backplane import check_redis_url
from petcamd.tomlconfig import ConfigError, bounds, load_file, parse_sections, to_toml_values

__all__ = [
    "SYSTEM_CONFIG_PATH",
    "ConfigError",
    "RelayConfig",
    "config_to_toml_values",
    "load_config",
    "parse_config",
]

SYSTEM_CONFIG_PATH = Path("/etc/petcam-relay/petcam-relay.toml")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ServerConfig:
    address: str = field(default="127.0.0.1", metadata={"ip": True})
    port: int = field(default=8443, metadata=bounds(0, 65535))
    public_origin: str = ""
    static_dir: Path | None = None
    trusted_proxies: tuple[str, ...] = field(default=(), metadata={"networks": True})
    max_connections: int = field(default=10000, metadata=bounds(1, 1_000_000))


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: Path | None = None
    private_key: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = field(default=MAX_ENVELOPE_LEN, metadata=bounds(128, MAX_ENVELOPE_LEN))
    messages_per_s: float = field(default=20.0, metadata=bounds(0.1, 100_000))
    message_burst: int = field(default=100, metadata=bounds(1, 1_000_000))
    bytes_per_s: float = field(default=65536.0, metadata=bounds(1024, 1e9))
    byte_burst: int = field(default=524288, metadata=bounds(1024, 1_000_000_000))
    address_messages_per_s: float = field(default=200.0, metadata=bounds(0.1, 1_000_000))
    address_message_burst: int = field(default=1000, metadata=bounds(1, 10_000_000))
    connections_per_address: int = field(default=32, metadata=bounds(1, 100_000))
    address_connects_per_s: float = field(default=2.0, metadata=bounds(0.01, 100_000))
    address_connect_burst: int = field(default=40, metadata=bounds(1, 1_000_000))
    max_viewers_per_device: int = field(default=8, metadata=bounds(1, 1000))
    max_sessions_per_viewer: int = field(default=4, metadata=bounds(1, 1000))
    send_queue_bytes: int = field(default=1048576, metadata=bounds(1024, 1_000_000_000))


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    heartbeat_s: float = field(default=20.0, metadata=bounds(0.05, 3600))
    register_s: float = field(default=10.0, metadata=bounds(0.05, 600))
    idle_s: float = field(default=60.0, metadata=bounds(0.05, 86400))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    allow: tuple[str, ...] = field(default=("127.0.0.0/8", "::1/128"), metadata={"networks": True})


@dataclass(frozen=True, slots=True)
class BackplaneConfig:
    redis_url: str = ""
    """Empty: this instance routes alone (in memory). Otherwise the Redis that instances share."""


@dataclass(frozen=True, slots=True)
class TurnConfig:
    urls: tuple[str, ...] = ()
    """STUN/TURN URLs handed to devices and viewers; empty: none (no ICE_SERVERS envelope)."""
    secret_file: Path | None = None
    """The secret shared with coturn (`static-auth-secret`), in a file only the relay can read."""
    ttl_s: int = field(default=86400, metadata=bounds(60, 7 * 86400))


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
    backplane: BackplaneConfig = BackplaneConfig()
    turn: TurnConfig = TurnConfig()
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


def load_config(path: Path | None = None) -> RelayConfig:
    """Defaults overlaid by ``path`` (the system file by default: public_origin has no default)."""
    path = SYSTEM_CONFIG_PATH if path is None else path
    return parse_config(load_file(path), source=str(path), base_dir=path.parent)


def parse_config(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> RelayConfig:
    return parse_sections(RelayConfig, raw, source=source, base_dir=base_dir, cross_checks=_cross_checks)


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
    if config.backplane.redis_url:
        problems += check_redis_url(config.backplane.redis_url)
    problems += _turn_problems(config.turn)
    return problems


def _turn_problems(turn: TurnConfig) -> list[str]:
    problems = [
        f"[turn] urls: {url!r} is not a stun:, stuns:, turn: or turns: URL"
        for url in turn.urls
        if not is_ice_url(url)
    ]
    if any(url.startswith("turn") for url in turn.urls):
        if turn.secret_file is None:
            problems.append("[turn] secret_file: TURN URLs need the secret shared with the TURN server")
        elif not turn.secret_file.is_file():
            problems.append(f"[turn] secret_file: no such file: {turn.secret_file}")
    return problems


def read_turn_secret(turn: TurnConfig) -> bytes:
    """The shared secret without surrounding whitespace; raises OSError or ValueError."""
    if turn.secret_file is None:
        raise ValueError("[turn] secret_file is not set")
    secret = turn.secret_file.read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"{turn.secret_file}: the TURN secret must be at least 16 characters")
    return secret


def config_to_toml_values(config: RelayConfig) -> dict[str, dict[str, Any]]:
    """The config as TOML-shaped data (a test compares it with the packaged file)."""
    return to_toml_values(config)

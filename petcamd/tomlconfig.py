"""TOML files into frozen dataclasses, with every problem reported at once.

Shared by the daemon's and the relay's settings (ground floor: it imports nothing of petcamd, so
the relay runs without the daemon's parts). A settings class is a frozen dataclass of section
dataclasses; field metadata adds checks: `bounds(low, high)`, {"nonempty": True}, {"ip": True},
{"networks": True}.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(Exception):
    """Every problem found in one configuration file, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def bounds(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"range": (low, high)}


def load_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise ConfigError([f"{path}: not valid TOML: nested too deeply"]) from None


def parse_sections(
    cls: type[T],
    raw: Mapping[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    cross_checks: Callable[[T], list[str]] | None = None,
) -> T:
    """`cls(**sections)`, or ConfigError listing every unknown name, wrong type and failed check."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        if name not in hints:
            problems.append(f"{source}: unknown section [{name}]{_did_you_mean(name, hints)}")
        elif not isinstance(value, dict):
            problems.append(f"{source}: [{name}] must be a table, not {_toml_type(value)}")
        else:
            sections[name] = _parse_section(hints[name], name, value, source, base_dir, problems)
    config = cls(**sections)  # the valid values only, so rules across keys can be checked as well
    if cross_checks is not None:
        problems += [f"{source}: {problem}" for problem in cross_checks(config)]
    if problems:
        raise ConfigError(problems)
    return config


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
        return _path(value, base_dir) if value else None  # "" = unset
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a path string, not {_toml_type(value)}")
        return _path(value, base_dir)
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
        if not math.isfinite(value):  # TOML has nan and inf; nan passes every range check
            raise ValueError(f"must be a finite number, not {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_toml_type(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # a programming error, not a user one


def _path(value: str, base_dir: Path | None) -> Path:
    """Relative paths are relative to the file that names them."""
    path = Path(value)
    return path if path.is_absolute() or base_dir is None else (base_dir / path).resolve()


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


def to_toml_values(config: Any) -> dict[str, dict[str, Any]]:
    """The settings as TOML-shaped data (tests compare it with the packaged, commented file)."""
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

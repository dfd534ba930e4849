"""Experiment configuration: frozen dataclasses per component, YAML plus dotted overrides.

Every error is found here, before Ray starts, and raised as one ``ConfigError`` line
that names the key and the fix. The ``algorithm`` and ``workload`` sections are open:
``name`` picks a class from the registry and the other keys are that class's ``Params``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from algorithms import ALGORITHMS
from algorithms.base import LocalTraining
from engine.config.checks import cross_checks
from engine.config.errors import ConfigError
from engine.config.sections import (
    CheckpointConfig,
    ClockConfig,
    EvalConfig,
    ExecutorsConfig,
    RayConfig,
    ServerConfig,
    StopConfig,
    TrackConfig,
)
from engine.core.delays import ClientsConfig
from engine.core.registry import PluginError, Registry
from workloads import WORKLOADS
from workloads.partition import PartitionConfig


@dataclass(frozen=True)
class NamedSpec:
    """An open section: a registry name plus that class's Params instance."""

    name: str
    params: Any


@dataclass(frozen=True)
class Config:
    seed: int = 0
    out_dir: str = ""  # "" = runs/<algorithm>-<workload>-<timestamp>
    algorithm: NamedSpec = field(default_factory=lambda: _spec("algorithm"))
    workload: NamedSpec = field(default_factory=lambda: _spec("workload"))
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    training: LocalTraining = field(default_factory=LocalTraining)
    executors: ExecutorsConfig = field(default_factory=ExecutorsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


OPEN_SECTIONS: dict[str, Registry[Any]] = {"algorithm": ALGORITHMS, "workload": WORKLOADS}
DEFAULT_NAMES = {"algorithm": "fedbuff", "workload": "synthetic"}


def _spec(section: str) -> NamedSpec:
    name = DEFAULT_NAMES[section]
    return NamedSpec(name, OPEN_SECTIONS[section][name].Params())


# ---- loading ---------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply ``key=value`` overrides, build and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}; fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping of keys, not a {type(loaded).__name__}"
            )
        raw = loaded or {}
    apply_overrides(raw, overrides or [])
    return build_config(raw)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, nested sections merged key by key (a new dict;
    neither input changes)."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        out[k] = (
            merge(old if isinstance(old, dict) else {}, v)
            if isinstance(v, dict) and (old is None or isinstance(old, dict))
            else v
        )
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``key=value`` strings (values parsed as YAML) to a raw config, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. clients.num=100")
        _set_dotted(raw, key.strip(), _parse_value(text))


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value


def build_config(raw: dict[str, Any]) -> Config:
    raw = dict(raw)
    sections: dict[str, Any] = {}
    for section, registry in OPEN_SECTIONS.items():
        body = raw.pop(section, None) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{section} must be a section (a mapping), e.g. {section}.name=...")
        body = dict(body)
        default = DEFAULT_NAMES[section]
        if section == "workload":  # e.g. split learning needs a model it can cut
            default = ALGORITHMS[sections["algorithm"].name].default_workload or default
        name = body.pop("name", default)
        try:
            cls = registry[str(name)]  # a built-in, or a plug-in imported now (engine/core/registry.py)
        except PluginError as e:
            if ":" in str(name):
                raise ConfigError(f"{section}.name: {e}") from None
            raise ConfigError(
                f"unknown {section} {name!r}{_suggest(str(name), registry)}; see --list"
            ) from None
        sections[section] = NamedSpec(name, _build(cls.Params, body, section))
    if "partition" not in raw or "name" not in (raw.get("partition") or {}):
        raw.setdefault("partition", {})
        if isinstance(raw["partition"], dict):
            raw["partition"] = {
                **raw["partition"],
                "name": WORKLOADS[sections["workload"].name].default_partition,
            }
    cfg: Config = _build(Config, raw, "", preset=sections)
    cfg = _absolute_paths(cfg)
    cross_checks(cfg)
    return cfg


def _absolute_paths(cfg: Config) -> Config:
    """Trace files resolve against the driver's directory: the server actor that reads
    them may run elsewhere (another directory, another node of a shared filesystem)."""
    clients = cfg.clients
    avail = clients.availability
    if avail.trace:
        avail = dataclasses.replace(avail, trace=str(Path(avail.trace).expanduser().resolve()))
    trace = str(Path(clients.trace).expanduser().resolve()) if clients.trace else ""
    return dataclasses.replace(cfg, clients=dataclasses.replace(clients, availability=avail, trace=trace))


def _suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, raw: dict[str, Any], prefix: str, preset: dict[str, Any] | None = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = dict(preset or {})
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {path!r}{_suggest(str(key), names)}; see --list for valid keys")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{prefix}.{e}" if prefix else str(e)) from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} is a section; set its keys, e.g. {path}.<key>=value")
        return _build(tp, value, path)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list, e.g. {path}=[0.5,0.5] (got {value!r})")
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{path} must be {tp.__name__} (got {value!r}, a {type(value).__name__})")


# ---- output ----------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved configuration as plain data (what config.yaml holds)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, NamedSpec):
            out[f.name] = {"name": value.name, **to_dict(value.params)}
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, default) for every fixed key, for --help and --list."""
    rows: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, NamedSpec):
            rows.append((f"{path}.name", default.name))
        elif dataclasses.is_dataclass(default):
            rows.extend(describe_keys(type(default), f"{path}."))
        else:
            rows.append((path, default))
    return rows

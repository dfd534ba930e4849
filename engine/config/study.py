"""A study's grid as configuration: the ``study`` section of a study file and the
experiments it makes (engine/study.py runs them)."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import Config, ConfigError, apply_overrides, build_config, merge


@dataclass(frozen=True)
class StudySpec:
    algorithms: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]] = field(default_factory=lambda: {"base": {}})
    seeds: tuple[int, ...] = (0,)
    target_accuracy: float = 0.0
    parallel: int = 0


@dataclass(frozen=True)
class Cell:
    algorithm: str
    profile: str
    seed: int
    cfg: Config

    @property
    def label(self) -> str:
        return f"{self.algorithm}__{self.profile}__s{self.seed}"


def load_study(path: str | None, overrides: list[str]) -> tuple[StudySpec, list[Cell], str]:
    """Read the study file and build (and validate) every experiment of the grid."""
    if path is None:
        raise ConfigError("a study needs --config FILE with a 'study' section; see configs/studies/")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study file {path!r} not found; pass an existing YAML file to --config")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("study"), dict):
        raise ConfigError(f"{path!r} needs a 'study' section with algorithms (and profiles, seeds)")
    apply_overrides(raw, overrides)
    body = dict(raw.pop("study"))
    known = StudySpec.__dataclass_fields__
    for key in body:
        if key not in known:
            raise ConfigError(f"unknown key 'study.{key}'; valid: {', '.join(known)}")
    if not isinstance(body.get("algorithms"), dict) or not body["algorithms"]:
        raise ConfigError(
            "study.algorithms must map labels to algorithm sections, e.g. {fedavg: {name: fedavg}}"
        )
    spec = StudySpec(
        algorithms={str(k): dict(v or {}) for k, v in body["algorithms"].items()},
        profiles={str(k): dict(v or {}) for k, v in (body.get("profiles") or {"base": {}}).items()},
        seeds=tuple(int(s) for s in body.get("seeds", [0])),
        target_accuracy=float(body.get("target_accuracy", 0.0)),
        parallel=int(body.get("parallel", 0)),
    )
    out_dir = str(raw.pop("out_dir", "") or f"runs/study-{p.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise ConfigError(f"out_dir {out_dir!r} exists and is not empty; choose a new out_dir")
    cells = []
    for alg, alg_over in spec.algorithms.items():
        for prof, prof_over in spec.profiles.items():
            for seed in spec.seeds:
                cell_raw = copy.deepcopy(raw)
                own, sections = _split_sections(alg_over)
                cell_raw["algorithm"] = {**(cell_raw.get("algorithm") or {}), **own}
                for name, section in sections.items():
                    cell_raw[name] = merge(cell_raw.get(name) or {}, section)
                cell_raw["clients"] = merge(cell_raw.get("clients") or {}, prof_over)
                cell_raw["seed"] = seed
                try:
                    cfg = build_config(cell_raw)
                except ConfigError as e:
                    raise ConfigError(f"study cell {alg} x {prof}: {e}") from None
                cells.append(Cell(alg, prof, seed, cfg))
    return spec, cells, out_dir


# Config sections an algorithm entry may also set, for variants that differ outside the
# algorithm (e.g. ``autoclip: {name: fedavg, training: {clip: {mode: autoclip}}}``). No
# algorithm has a parameter of these names (tests/unit/test_study_config.py checks it).
SECTIONS = frozenset(f.name for f in dataclasses.fields(Config)) - {"algorithm", "seed", "out_dir"}


def _split_sections(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """An algorithm entry's own keys, and the other sections it overrides."""
    own = {k: v for k, v in entry.items() if k not in SECTIONS}
    sections = {k: v for k, v in entry.items() if k in SECTIONS}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f"study.algorithms entry key {name!r} is a config section; give it a mapping")
    return own, sections

"""fedray from Python: build and change a configuration with the same validation as the
YAML files, run an experiment, a study or a sweep, and get the results as pandas frames
and a torch model. ``import fedray`` re-exports this module's public names.

    import fedray
    cfg = fedray.config("configs/fedbuff.yaml", executors={"backend": "local"}, **{"stop.max_versions": 20})
    result = fedray.run(cfg)
    result.metrics.plot(x="sim_time", y="accuracy")

Overrides are keyword arguments: a section name takes a dict that is merged into the
section (``training={"lr": 0.1}``; one that names another algorithm or workload replaces
the section); any dotted key goes through ``**{"training.lr": 0.1}``.
Errors are ``engine.config.ConfigError`` with the same one-line messages as the CLI.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from engine.config import DEFAULT_NAMES, Config, ConfigError, apply_overrides, build_config, merge, to_dict
from engine.core.recorder import EVENTS_COLUMNS, METRICS_COLUMNS

Source = str | Path | dict[str, Any] | Config | None


def _raw(source: Source) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Config):
        return to_dict(source)
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass a YAML file, a dict or a Config")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping of config sections")
    return raw


def _text(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)  # JSON is YAML


def config(source: Source = None, **overrides: Any) -> Config:
    """A validated configuration from a YAML file, a dict of sections or a ``Config``,
    with ``overrides`` laid on top (see the module's docstring)."""
    raw = _raw(source)
    dotted = []
    for key, value in overrides.items():
        if "." in key:
            dotted.append(f"{key}={_text(value)}")
        elif isinstance(value, dict):
            old = raw.get(key) or {}
            # Another component by name starts its section afresh (its keys are not the old one's).
            fresh = "name" in value and value["name"] != old.get("name", DEFAULT_NAMES.get(key))
            raw[key] = dict(value) if fresh else merge(old, value)
        else:
            raw[key] = value
    apply_overrides(raw, dotted)
    return build_config(raw)


@dataclass(frozen=True)
class Result:
    """One experiment's results: what ``out_dir`` holds, as Python objects."""

    config: Config
    metrics: pd.DataFrame  # one row per evaluated version (metrics.csv)
    events: pd.DataFrame  # one row per client job (events.csv)
    summary: dict[str, Any]  # summary.json
    params: Any  # the final global model as one flat float32 vector (model.npy)
    out_dir: Path | None  # None when run with write=False
    data_meta: Any = None  # the model's input shape and classes

    @property
    def model(self) -> Any:
        """The final global model as a torch module of the workload's architecture."""
        from workloads import WORKLOADS, ParamLayout

        workload = WORKLOADS[self.config.workload.name](self.config.workload.params)
        module = workload.model(self.data_meta)
        ParamLayout.of(module).load(module, self.params)
        return module.eval()


def run(source: Source = None, *, progress: bool = True, write: bool = True, **overrides: Any) -> Result:
    """Run one experiment (on the backend its config names) and return its ``Result``.
    ``progress``: a progress bar (a widget in notebooks); ``write``: also write ``out_dir``."""
    from engine.experiment import run_experiment

    cfg = config(source, **overrides)
    result, path = run_experiment(cfg, show_progress=progress, write=write)
    local = [k for k in result["metrics"][0] if k not in METRICS_COLUMNS] if result["metrics"] else []
    return Result(
        config=cfg,
        metrics=pd.DataFrame(result["metrics"], columns=METRICS_COLUMNS + local),
        events=pd.DataFrame(result["events"], columns=EVENTS_COLUMNS),
        summary=result["summary"],
        params=result["model"],
        out_dir=path,
        data_meta=result.get("data_meta"),
    )


def _cli_overrides(overrides: dict[str, Any]) -> list[str]:
    """``key=value`` strings as the study and sweep files take them."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += [f"{key}.{k}={_text(v)}" for k, v in value.items()]
        else:
            out.append(f"{key}={_text(value)}")
    return out


def study(path: str | Path, **overrides: Any) -> tuple[pd.DataFrame, Path]:
    """Run a study file (engine/study.py); return its comparison table and folder.
    ``overrides`` set the base experiment; ``study={"seeds": [0, 1]}`` the study."""
    from engine.config.study import load_study
    from engine.study import run_study

    spec, cells, out_dir = load_study(str(path), _cli_overrides(overrides))
    started = False
    if cells[0].cfg.executors.backend == "ray":
        from engine.runtime.connect import connect_ray

        started = connect_ray(cells[0].cfg)
    try:
        folder = run_study(spec, cells, out_dir, quiet=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    return pd.read_csv(folder / "comparison.csv"), folder


def sweep(space: str | Path, **overrides: Any) -> tuple[pd.DataFrame, Path]:
    """Run a Ray Tune sweep (engine/tune.py); return its trials table and folder.
    ``tune={"num_samples": 8}`` sets sweep settings, other overrides the base experiment."""
    from engine.config.sweep_space import load_sweep
    from engine.report.sweep_report import write_sweep
    from engine.runtime.connect import connect_ray
    from engine.tune import DEFAULT_OUT, check_fits, run_sweep

    plan = load_sweep(str(space), _cli_overrides(overrides), DEFAULT_OUT)
    started = connect_ray(plan.base)
    try:
        check_fits(plan)
        folder, _ = write_sweep(plan, run_sweep(plan, quiet=True))
    finally:
        if started:
            import ray

            ray.shutdown()
    return pd.read_csv(folder / "trials.csv"), folder


__all__ = ["Config", "ConfigError", "Result", "config", "run", "study", "sweep"]

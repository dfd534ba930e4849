"""Sweep files (``tune_spaces/<name>.yaml``): a base experiment, Tune settings and a
search space keyed by dotted config names. Everything is checked here, before Ray starts.

  base: configs/fedbuff.yaml          # optional experiment file (paths: from the working directory)
  experiment: {stop.max_versions: 50} # optional engine.run keys over the base (dotted or nested)
  metric: accuracy                    # accuracy | best_accuracy | loss | time_to_target | local_*
  mode: max                           # default: max for accuracies, min for loss and time
  num_samples: 8                      # samples per grid point (random, optuna, hyperopt)
  search: random                      # random | grid | optuna | hyperopt
  scheduler: asha                     # fifo | asha | pbt (see Settings for their knobs)
  space:
    training.lr: {loguniform: [0.01, 1]}
    algorithm.buffer_size: {choice: [5, 10, 20]}
    seed: {grid: [0, 1, 2]}
    clients.speed: {grid: {equal: {family: constant}, pareto: {family: pareto, shape: 1.2}}}

A dimension is one of ``choice``/``grid`` (a list of values, or a mapping label -> value),
``uniform``/``loguniform`` ``[low, high]`` or ``randint [low, high]`` (both ends included).
A mapping value is merged into the section it names; one that names another component
(``algorithm: {name: fedavg, ...}`` over a FedBuff base) replaces the section instead,
so the base's algorithm keys do not leak into a different algorithm.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import tune_spaces
from engine.config import (
    DEFAULT_NAMES,
    Config,
    ConfigError,
    apply_overrides,
    build_config,
    load_config,
    merge,
)

SPACES_DIR = Path(tune_spaces.__file__).resolve().parent
METRICS = {
    "accuracy": "max",
    "best_accuracy": "max",
    "loss": "min",
    "time_to_target": "min",
    # on the clients' local test splits (eval.local_test_fraction > 0)
    "local_accuracy": "max",
    "local_accuracy_p10": "max",
    "local_loss": "min",
}
SEARCHES = ("random", "grid", "optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha", "pbt")
KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
FILE_KEYS = ("base", "experiment", "space")
PBT_FIXED = ("algorithm", "algorithm.name", "clients", "clients.num")  # plus workload.*
NOT_SWEPT = ("out_dir", "ray")  # set once for the whole sweep, never per trial


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config key
    kind: str  # one of KINDS
    values: tuple[Any, ...]  # choice/grid: the labels; otherwise (low, high)
    labelled: dict[str, Any] = field(default_factory=dict)  # label -> value, when labels stand in

    @property
    def finite(self) -> bool:
        return self.kind in ("choice", "grid")

    def value(self, sampled: Any) -> Any:
        """The config value behind a sampled label. A range's value is clipped to it:
        PBT perturbs values by factors and may step outside."""
        if self.finite:
            return self.labelled.get(sampled, sampled) if isinstance(sampled, str) else sampled
        low, high = self.values
        return min(max(sampled, low), high)

    def probes(self) -> list[Any]:
        """Values to validate: every choice, or both ends and one value in between (a
        float key given an int range, or an int key a float range, fails on that one)."""
        if self.finite:
            return list(self.values)
        low, high = self.values
        if self.kind == "loguniform":
            return [low, low * (high / low) ** 0.37, high]
        mid = low + (high - low) * 0.37
        return [low, round(mid) if self.kind == "randint" else mid, high]


@dataclass(frozen=True)
class Settings:
    metric: str = "accuracy"
    mode: str = ""  # "" = the metric's natural direction
    num_samples: int = 1
    search: str = "random"
    scheduler: str = "fifo"
    time_attr: str = "version"  # asha/pbt: version or sim_time (virtual seconds)
    max_t: float = 0  # asha: 0 = the experiment's stop rule (max_versions or max_sim_time)
    grace_period: float = 0  # asha: 0 = max_t / reduction_factor^2
    reduction_factor: float = 3
    perturbation_interval: float = 0  # pbt: 0 = max_t / 4 (versions: a multiple of checkpoint.every)
    synch: bool = False  # pbt: all trials perturbed together (reproducible decisions; trials wait)
    max_concurrent: int = 0  # trials at once; 0 = as many as the cluster fits
    max_failures: int = 1  # retries of a failed trial (runs are deterministic: same result)
    storage_path: str = ""  # Tune's storage; "" = <out_dir>/trials. Multi-node: shared or s3://
    seed: int = 0  # the search algorithm's random seed

    def __post_init__(self) -> None:
        _need(self.metric in METRICS, f"metric must be one of {', '.join(METRICS)} (got {self.metric!r})")
        _need(self.mode in ("", "max", "min"), f"mode must be max or min (got {self.mode!r})")
        _need(self.num_samples >= 1, f"num_samples must be >= 1 (got {self.num_samples})")
        _need(self.search in SEARCHES, f"search must be one of {', '.join(SEARCHES)} (got {self.search!r})")
        _need(
            self.scheduler in SCHEDULERS,
            f"scheduler must be one of {', '.join(SCHEDULERS)} (got {self.scheduler!r})",
        )
        _need(self.time_attr in ("version", "sim_time"), "time_attr must be version or sim_time")
        _need(self.reduction_factor > 1, f"reduction_factor must be > 1 (got {self.reduction_factor})")
        for key in ("max_t", "grace_period", "perturbation_interval", "max_concurrent", "max_failures"):
            _need(getattr(self, key) >= 0, f"{key} must be >= 0 (got {getattr(self, key)})")

    @property
    def direction(self) -> str:
        return self.mode or METRICS[self.metric]


@dataclass(frozen=True)
class Sweep:
    name: str  # the space file's stem
    settings: Settings
    dimensions: tuple[Dimension, ...]
    base_raw: dict[str, Any]  # experiment keys before the space varies them (no out_dir)
    base: Config
    out_dir: str

    def trial_raw(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = copy.deepcopy(self.base_raw)
        for dim in self.dimensions:
            if dim.key in params:
                set_value(raw, dim.key, dim.value(params[dim.key]))
        return raw

    def trial_config(self, params: dict[str, Any], out_dir: str = "") -> Config:
        """One trial's experiment; a sweep trial runs ``executors.num`` executors (1 if 0)."""
        raw = self.trial_raw(params)
        raw["out_dir"] = out_dir
        cfg = build_config(raw)
        if cfg.executors.num == 0:
            cfg = dataclasses.replace(cfg, executors=dataclasses.replace(cfg.executors, num=1))
        return cfg


def _need(ok: object, message: str) -> None:
    if not ok:
        raise ValueError(message)


def resolve_space(name: str) -> Path:
    """A path, or the name of a shipped space (``fedbuff`` -> tune_spaces/fedbuff.yaml)."""
    for p in (Path(name), Path(f"{name}.yaml"), SPACES_DIR / name, SPACES_DIR / f"{name}.yaml"):
        if p.is_file():
            return p
    raise ConfigError(f"search space {name!r} not found; pass a YAML file or a name from --list")


def list_spaces() -> list[tuple[str, str]]:
    """(name, first comment line) of every shipped space."""
    rows = []
    for p in sorted(SPACES_DIR.glob("*.yaml")):
        first = next((ln for ln in p.read_text().splitlines() if ln.startswith("#")), "#")
        rows.append((p.stem, first.lstrip("# ").strip()))
    return rows


def load_sweep(space: str | None, overrides: list[str], default_out: str) -> Sweep:
    """Read a space file, apply ``key=value`` (experiment) and ``tune.key=value``
    (settings) overrides, and validate every trial the space can produce."""
    if not space:
        raise ConfigError("a sweep needs --space FILE_OR_NAME; see --list for the shipped spaces")
    path = resolve_space(space)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"search space {str(path)!r} is not valid YAML; fix its syntax") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("space"), dict) or not doc["space"]:
        raise ConfigError(f"{str(path)!r} needs a 'space' mapping of config keys to dimensions")
    tune_over = [o.removeprefix("tune.") for o in overrides if o.startswith("tune.")]
    settings_raw = {k: v for k, v in doc.items() if k not in FILE_KEYS}
    apply_overrides(settings_raw, tune_over)
    settings = _settings(settings_raw)
    base_raw = _base_raw(doc, [o for o in overrides if not o.startswith("tune.")])
    out_dir = str(base_raw.pop("out_dir", "") or default_out.format(name=path.stem))
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise ConfigError(f"out_dir {out_dir!r} exists and is not empty; choose a new out_dir")
    try:
        base = build_config(base_raw)
        if settings.scheduler == "pbt":
            settings, base = _pbt_checkpoints(settings, base, base_raw)
    except ConfigError as e:
        raise ConfigError(f"base experiment: {e}") from None
    dims = tuple(_dimension(str(k), v) for k, v in doc["space"].items())
    sweep = Sweep(path.stem, settings, dims, base_raw, base, out_dir)
    _check_settings(sweep)
    _check_trials(sweep)
    return sweep


def _settings(raw: dict[str, Any]) -> Settings:
    defaults = Settings()
    known = [f.name for f in dataclasses.fields(Settings)]
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"unknown sweep setting {key!r}; valid: {', '.join([*FILE_KEYS, *known])} "
                "(experiment keys go under 'experiment' or on the command line)"
            )
        want = type(getattr(defaults, key))
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            raw[key], ok = float(value), True
        if want is int and isinstance(value, float) and value.is_integer():
            raw[key], ok = int(value), True
        if not ok:
            raise ConfigError(f"sweep setting {key} must be {want.__name__} (got {value!r})")
    try:
        return Settings(**raw)
    except ValueError as e:
        raise ConfigError(f"sweep setting {e}") from None


def _base_raw(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if doc.get("base"):
        base = Path(str(doc["base"]))
        if not base.is_file() and (SPACES_DIR.parent / base).is_file():
            base = SPACES_DIR.parent / base  # a shipped space's base, run from elsewhere
        load_config(base)  # the file's own errors (missing, bad YAML, bad keys) come first
        raw = yaml.safe_load(base.read_text()) or {}
    experiment = doc.get("experiment") or {}
    if not isinstance(experiment, dict):
        raise ConfigError("'experiment' must map engine.run keys to values, e.g. {stop.max_versions: 50}")
    for key, value in experiment.items():
        set_value(raw, str(key), value)
    apply_overrides(raw, overrides)
    return raw


def set_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key; a mapping merges into its section, unless it names another
    component (then it replaces the section: the old component's keys do not apply)."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part} is a value, not a section; cannot set {key}")
        node = child
    old = node.get(last)
    if isinstance(value, dict) and isinstance(old, dict):
        old_name = old.get("name", DEFAULT_NAMES.get(key))
        if "name" not in value or value["name"] == old_name:
            value = merge(old, value)
    node[last] = copy.deepcopy(value)


def _pbt_checkpoints(s: Settings, base: Config, raw: dict[str, Any]) -> tuple[Settings, Config]:
    """PBT continues a trial from another's checkpoint at a perturbation. The engine hands
    out only its newest snapshot, so snapshots are taken exactly at the perturbation
    versions (checkpoint.every = the interval, a multiple of eval.every), unless set."""
    every = base.checkpoint.every
    if s.time_attr != "version":
        if not every:  # perturbations at virtual times: a snapshot with every evaluation
            set_value(raw, "checkpoint.every", base.eval.every)
        return s, build_config(raw)
    step = every or base.eval.every
    interval = s.perturbation_interval or (s.max_t or base.stop.max_versions) / 4
    interval = max(step, round(interval / step) * step)
    if not every:
        set_value(raw, "checkpoint.every", interval)
    return dataclasses.replace(s, perturbation_interval=interval), build_config(raw)


def _dimension(key: str, spec: Any) -> Dimension:
    usage = (
        f"space key {key!r}: give one of {{choice: [...]}}, {{grid: [...]}}, {{uniform: [low, high]}}, "
        "{loguniform: [low, high]}, {randint: [low, high]}"
    )
    if key.split(".")[0] in NOT_SWEPT:
        raise ConfigError(f"space key {key!r} cannot vary per trial; set it on the command line instead")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(usage)
    kind, body = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if isinstance(body, dict) and body:
            labels = {str(k): v for k, v in body.items()}
            return Dimension(key, kind, tuple(labels), labels)
        if not isinstance(body, list) or not body:
            raise ConfigError(usage)
        if all(isinstance(v, str | int | float | bool) for v in body):
            return Dimension(key, kind, tuple(body))
        # Lists and sections get readable labels: Tune's table and the plots show them.
        labels = {yaml.safe_dump(v, default_flow_style=True, width=1000).strip(): v for v in body}
        return Dimension(key, kind, tuple(labels), labels)
    if (
        not isinstance(body, list)
        or len(body) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in body)
    ):
        raise ConfigError(usage)
    low, high = body
    if not low < high:
        raise ConfigError(f"space key {key!r}: {kind} needs low < high (got [{low}, {high}])")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"space key {key!r}: loguniform needs low > 0 (got {low})")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"space key {key!r}: randint needs integer bounds (got [{low}, {high}])")
    return Dimension(key, kind, (low, high))


def _check_settings(sweep: Sweep) -> None:
    s, base = sweep.settings, sweep.base
    if s.metric == "time_to_target" and not base.stop.target_accuracy:
        raise ConfigError(
            "metric time_to_target needs a target: set stop.target_accuracy (e.g. stop.target_accuracy=0.8)"
        )
    if s.metric.startswith("local_") and not base.eval.local_test_fraction:
        raise ConfigError(
            f"metric {s.metric} scores clients' local test splits: set eval.local_test_fraction (e.g. 0.2)"
        )
    if s.search == "grid":
        cont = [d.key for d in sweep.dimensions if not d.finite]
        if cont:
            raise ConfigError(f"search grid needs finite dimensions; {cont[0]} is not: use choice/grid")
    if s.search in ("optuna", "hyperopt"):
        if importlib.util.find_spec(s.search) is None:  # optional extras of the same name
            raise ConfigError(
                f"search {s.search} needs the {s.search} package: pip install 'fedray[{s.search}]'"
            )
        grid = [d.key for d in sweep.dimensions if d.kind == "grid"]
        if grid:
            raise ConfigError(f"search {s.search} cannot enumerate grid dimension {grid[0]}; use choice")
    if s.scheduler == "pbt":
        if s.search not in ("random", "grid"):
            raise ConfigError(f"scheduler pbt picks its own configs: use search random or grid ({s.search})")
        # A checkpoint resumes under the same algorithm, workload and clients only.
        changing = [d.key for d in sweep.dimensions if d.key in PBT_FIXED or d.key.startswith("workload")]
        if changing:
            raise ConfigError(
                f"scheduler pbt cannot vary {changing[0]}: a trial continues from another's checkpoint, "
                "which needs the same algorithm, workload and client count"
            )
    if s.scheduler in ("asha", "pbt") and not s.max_t:
        limit = base.stop.max_versions if s.time_attr == "version" else base.stop.max_sim_time
        if not limit:
            stop_key = "max_versions" if s.time_attr == "version" else "max_sim_time"
            raise ConfigError(
                f"scheduler {s.scheduler} with time_attr {s.time_attr} needs stop.{stop_key} or tune.max_t"
            )


def _check_trials(sweep: Sweep) -> None:
    """Build, as trial configs, each dimension's probe values, then every pair of
    dimensions at their extremes (ranges that clash, such as q_min above q_max, fail
    together only): a bad key or value fails now, not in the middle of the sweep."""
    dims = sweep.dimensions
    for dim in dims:
        for probe in dim.probes():
            _try(sweep, {dim.key: probe})
    for i, a in enumerate(dims):
        for b in dims[i + 1 :]:
            for pa in dict.fromkeys([a.probes()[0], a.probes()[-1]]):
                for pb in dict.fromkeys([b.probes()[0], b.probes()[-1]]):
                    _try(sweep, {a.key: pa, b.key: pb})


def _try(sweep: Sweep, params: dict[str, Any]) -> None:
    try:
        sweep.trial_config(params)
    except ConfigError as e:
        shown = ", ".join(f"{k!r} = {v!r}" for k, v in params.items())
        raise ConfigError(f"space key{'s' if len(params) > 1 else ''} {shown}: {e}") from None


def probe_configs(sweep: Sweep) -> list[Config]:
    """The validated trial configs (for resource checks): the base, and each probe."""
    return [sweep.trial_config({})] + [
        sweep.trial_config({d.key: probe}) for d in sweep.dimensions for probe in d.probes()
    ]

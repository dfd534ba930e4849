"""A finished sweep's folder: the trials table, the best experiment as YAML, a plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from engine.config import build_config, to_dict
from engine.config.sweep_space import Sweep
from engine.core.evaluation import LOCAL_METRICS

FIGURES = (
    "accuracy",
    "best_accuracy",
    "loss",
    "time_to_target",
    "version",
    "sim_time",
    "wall_time",
    *LOCAL_METRICS,
)


def trial_rows(sweep: Sweep, grid: Any) -> pd.DataFrame:
    """One row per trial: its parameters, final and best figures, status; best first."""
    rows = []
    for result in grid:
        last = dict(result.metrics or {})
        history = result.metrics_dataframe
        row: dict[str, Any] = {"trial_id": last.get("trial_id") or Path(str(result.path)).name}
        row.update({d.key: (result.config or {}).get(d.key) for d in sweep.dimensions})
        if result.error is not None:
            row["status"] = "error"
        else:
            row["status"] = "completed" if last.get("run_done") else "stopped early"
        for key in FIGURES:
            value = last.get(key)
            row[key] = float(value) if isinstance(value, int | float) else math.nan
        if history is not None and "accuracy" in history:
            row["best_accuracy"] = float(history["accuracy"].max())
        # Never reached (inf) is blank in the table; the rank below still puts it last.
        if not math.isfinite(row["time_to_target"]):
            row["time_to_target"] = math.nan
        row["run_dir"] = f"{result.path}/run"
        rows.append(row)
    table = pd.DataFrame(rows)
    metric, mode = sweep.settings.metric, sweep.settings.direction
    score = table[metric].where(table.status != "error")
    # Errors, and trials without a value (never reached the target), rank last; ties go
    # to the more accurate trial.
    table["_key"] = (-score if mode == "max" else score).fillna(math.inf)
    table = table.sort_values(["_key", "best_accuracy"], ascending=[True, False], kind="stable")
    table.insert(1, "rank", range(1, len(table) + 1))
    return table.drop(columns="_key").reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "" if math.isnan(x) else format(x, ".4g")
        return str(x)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def best_yaml(sweep: Sweep, params: dict[str, Any], header: str) -> str:
    """The best trial's whole experiment, validated, without out_dir (a rerun picks a new one)."""
    raw = sweep.trial_raw(params)
    raw["out_dir"] = ""
    cfg = build_config(raw)
    body = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return f"{header}\n# python -m engine.run --config best.yaml\n{body}"


def plot(sweep: Sweep, table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = sweep.settings.metric
    dims = sweep.dimensions
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.4), squeeze=False)
    ok = table[table.status != "error"]
    for ax, dim in zip(axes[0], dims, strict=True):
        if dim.finite:
            order = {v: i for i, v in enumerate(dim.values)}
            x = ok[dim.key].map(order)
            ax.set_xticks(range(len(dim.values)), [str(v) for v in dim.values], rotation=20)
        else:
            x = ok[dim.key].astype(float)
            if dim.kind == "loguniform":
                ax.set_xscale("log")
        for status, color in (("completed", "tab:blue"), ("stopped early", "tab:gray")):
            sel = ok.status == status
            ax.scatter(x[sel], ok[metric][sel], color=color, label=status, s=24)
        ax.set_xlabel(dim.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    missing = int(ok[metric].isna().sum())
    note = f" ({missing} trials without a value: never reached the target)" if missing else ""
    fig.suptitle(f"{sweep.name}: {metric} ({sweep.settings.direction}) per trial{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep(sweep: Sweep, grid: Any) -> tuple[Path, dict[str, Any]]:
    """Write trials.csv, trials.md, best.yaml, sweep.png and summary.json under out_dir."""
    out = Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = trial_rows(sweep, grid)
    table.to_csv(out / "trials.csv", index=False)
    (out / "trials.md").write_text(markdown(table.drop(columns=["run_dir"]).head(20)))
    s = sweep.settings
    counts = table.status.value_counts()
    summary: dict[str, Any] = {
        "space": sweep.name,
        "metric": s.metric,
        "mode": s.direction,
        "search": s.search,
        "scheduler": s.scheduler,
        "trials": len(table),
        "completed": int(counts.get("completed", 0)),
        "stopped_early": int(counts.get("stopped early", 0)),
        "errors": int(counts.get("error", 0)),
        "best": None,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    usable = table[table.status != "error"]
    if len(usable):
        top = usable.iloc[0]
        params = {d.key: _plain(top[d.key]) for d in sweep.dimensions}
        value = _plain(top[s.metric])
        summary["best"] = {"trial_id": top.trial_id, s.metric: value, "params": params}
        header = f"# best trial {top.trial_id} of sweep {sweep.name}: {s.metric}={value} ({s.direction})"
        (out / "best.yaml").write_text(best_yaml(sweep, params, header))
        plot(sweep, table, out / "sweep.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out, summary


def _plain(x: Any) -> Any:
    """numpy scalars -> Python (YAML and JSON); NaN -> None."""
    if hasattr(x, "item"):
        x = x.item()
    return None if isinstance(x, float) and math.isnan(x) else x

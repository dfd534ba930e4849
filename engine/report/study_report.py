"""The files of a study: per-experiment results, the comparison table, the plots."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from engine.report.results import write_results

if TYPE_CHECKING:
    from engine.config.study import Cell, StudySpec

COLUMNS = [
    "algorithm",
    "profile",
    "seed",
    "final_accuracy",
    "best_accuracy",
    "time_to_target",
    "wall_time_to_target",
    "bytes_to_target",
    "sim_time",
    "wall_time",
    "versions",
    "updates_applied",
    "max_drop",
    "mean_staleness",
    "max_staleness",
    "bytes_total",
    "client_idle_fraction",
]


def time_to(metrics: list[dict[str, Any]], target: float) -> tuple[float | None, float | None]:
    """(virtual, wall) time of the first evaluated version reaching ``target``."""
    for m in metrics:
        if target and m["accuracy"] >= target:
            return m["sim_time"], m["wall_time"]
    return None, None


def bytes_to(metrics: list[dict[str, Any]], target: float) -> float | None:
    """Bytes moved (up and down) by the first evaluated version reaching ``target``."""
    for m in metrics:
        if target and m["accuracy"] >= target:
            return float(m["bytes_up"] + m["bytes_down"])
    return None


def max_drop(metrics: list[dict[str, Any]]) -> float:
    """The largest fall of test accuracy below the best it had reached before: 0 for a run
    that never got worse, large for one whose model swings (a measure of stability)."""
    best, drop = -np.inf, 0.0
    for m in metrics:
        best = max(best, m["accuracy"])
        drop = max(drop, best - m["accuracy"])
    return float(drop)


def comparison_rows(spec: StudySpec, cells: list[Cell], results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        r = results[cell.label]
        s = r["summary"]
        ttt, wtt = time_to(r["metrics"], spec.target_accuracy)
        if wtt is not None:
            wtt -= s["setup_seconds"]  # wall time of the loop itself, start-up excluded
        rows.append(
            {
                "algorithm": cell.algorithm,
                "profile": cell.profile,
                "seed": cell.seed,
                "final_accuracy": s["final_accuracy"],
                "best_accuracy": s["best_accuracy"],
                "max_drop": max_drop(r["metrics"]),
                "time_to_target": ttt,
                "wall_time_to_target": wtt,
                "bytes_to_target": bytes_to(r["metrics"], spec.target_accuracy),
                "sim_time": s["sim_time"],
                "wall_time": s["wall_time"],
                "versions": s["versions"],
                "updates_applied": s["updates_applied"],
                "mean_staleness": s["mean_staleness"],
                "max_staleness": s["max_staleness"],
                "bytes_total": s["bytes_up"] + s["bytes_down"],
                "client_idle_fraction": 1 - s["client_busy_fraction"],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def spread(values: pd.Series) -> str:
    """``mean ± std (min-max)`` of the non-missing values (std with n - 1, as pandas), or
    the value alone when there is one, so a reader can tell a gap between methods from
    seed noise; "not reached" when there is none."""
    v = values.dropna()
    if v.empty:
        return "not reached"
    if len(v) == 1:
        return f"{v.iloc[0]:.4g}"
    return f"{v.mean():.4g} ± {v.std():.2g} ({v.min():.4g}-{v.max():.4g})"


def markdown(table: pd.DataFrame, target: float) -> str:
    """Means over seeds with their spread; time to target counts only the seeds that reached it."""
    g = table.groupby(["profile", "algorithm"], sort=False)
    agg = g.agg(
        seeds=("seed", "count"),
        reached=("time_to_target", lambda x: int(x.notna().sum())),
        time_to_target=("time_to_target", spread),
        wall_to_target=("wall_time_to_target", "mean"),
        final_accuracy=("final_accuracy", spread),
        max_drop=("max_drop", "mean"),
        mean_staleness=("mean_staleness", "mean"),
        max_staleness=("max_staleness", "max"),
        mbytes=("bytes_total", lambda x: x.mean() / 1e6),
        idle=("client_idle_fraction", "mean"),
        mb_to_target=("bytes_to_target", lambda x: spread(x / 1e6)),
    ).reset_index()
    head = (
        f"| profile | algorithm | time to {target:g} (virtual s) | wall s to target | reached | "
        "final accuracy | max drop | mean / max staleness | MB moved | client idle | MB to target |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in agg.to_dict("records"):
        wtt = "-" if pd.isna(r["wall_to_target"]) else f"{r['wall_to_target']:.1f}"
        lines.append(
            f"| {r['profile']} | {r['algorithm']} | {r['time_to_target']} | {wtt} | "
            f"{r['reached']}/{r['seeds']} | {r['final_accuracy']} | {r['max_drop']:.3f} | "
            f"{r['mean_staleness']:.2f} / {r['max_staleness']} | {r['mbytes']:.2f} | {r['idle']:.2f} | "
            f"{r['mb_to_target']} |"
        )
    note = (
        "Time (and MB moved) to target and final accuracy: mean ± std (min-max) over the seeds "
        "(that reached it). "
        "Max drop: the largest fall of test accuracy below its best so far, mean over the seeds."
    )
    return "\n".join(lines) + f"\n\n{note}\n"


def seed_band(
    curves: list[tuple[np.ndarray, np.ndarray, float]], grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, min, max) over seeds of the accuracy on a common virtual-time ``grid``. Each
    curve is (evaluation times, accuracies, the run's end). The model changes only at a new
    version, so a run's accuracy at ``t`` is that of its latest evaluation at or before
    ``t`` (a step function) up to its end; NaN before its first evaluation and after its
    end, and wherever any seed is NaN, so the band covers only times every seed ran."""
    stacked = np.full((len(curves), len(grid)), np.nan)
    for row, (times, acc, end) in zip(stacked, curves, strict=True):
        at = np.searchsorted(times, grid, side="right") - 1
        ok = (at >= 0) & (grid <= end)
        row[ok] = acc[at[ok]]
    return stacked.mean(axis=0), stacked.min(axis=0), stacked.max(axis=0)


# What a study's accuracy plots put on the x axis: a metrics row's value, its label.
AXES = {
    "sim_time": (lambda m: m["sim_time"], "virtual time (s)"),
    "bytes": (lambda m: (m["bytes_up"] + m["bytes_down"]) / 1e6, "MB moved (up + down)"),
}


def plot_study(
    cells: list[Cell], results: dict[str, dict[str, Any]], target: float, path: Path, x: str = "sim_time"
) -> None:
    """Accuracy against virtual time (or bytes moved, ``x="bytes"``), one panel per profile:
    each algorithm's mean over the seeds as a line, shaded between its worst and best seed."""
    value, label = AXES[x]
    profiles = list(dict.fromkeys(c.profile for c in cells))
    ends = {c.label: float(value(results[c.label]["summary"])) for c in cells}
    grid = np.linspace(0.0, max(ends.values()), 400)
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.0 * len(profiles), 3.8), squeeze=False)
    for ax, prof in zip(axes[0], profiles, strict=True):
        for alg in dict.fromkeys(c.algorithm for c in cells):
            mine = [c for c in cells if (c.profile, c.algorithm) == (prof, alg)]
            curves = [
                (
                    np.array([value(m) for m in results[c.label]["metrics"]], dtype=float),
                    np.array([m["accuracy"] for m in results[c.label]["metrics"]]),
                    ends[c.label],
                )
                for c in mine
            ]
            mean, low, high = seed_band(curves, grid)
            (line,) = ax.plot(grid, mean, label=alg if len(mine) == 1 else f"{alg} ({len(mine)} seeds)")
            if len(mine) > 1:
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if target:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"profile: {prof}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (band: min-max over seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(
    out_dir: str, spec: StudySpec, cells: list[Cell], results: dict[str, dict[str, Any]], wall: float
) -> Path:
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for cell in cells:
            write_results(str(tmp / "runs" / cell.label), cell.cfg, results[cell.label])
        table = comparison_rows(spec, cells, results)
        table.to_csv(tmp / "comparison.csv", index=False)
        (tmp / "comparison.md").write_text(markdown(table, spec.target_accuracy))
        plot_study(cells, results, spec.target_accuracy, tmp / "accuracy.png")
        plot_study(cells, results, spec.target_accuracy, tmp / "accuracy_bytes.png", x="bytes")
        meta = {
            "experiments": len(cells),
            "wall_time": wall,
            "target_accuracy": spec.target_accuracy,
            "algorithms": spec.algorithms,
            "profiles": spec.profiles,
            "seeds": list(spec.seeds),
        }
        (tmp / "study.json").write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

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
    "sim_time",
    "wall_time",
    "versions",
    "updates_applied",
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
                "time_to_target": ttt,
                "wall_time_to_target": wtt,
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


def markdown(table: pd.DataFrame, target: float) -> str:
    """Means over seeds; time to target counts only the seeds that reached it."""
    g = table.groupby(["profile", "algorithm"], sort=False)
    agg = g.agg(
        seeds=("seed", "count"),
        reached=("time_to_target", lambda x: int(x.notna().sum())),
        time_to_target=("time_to_target", "mean"),
        wall_to_target=("wall_time_to_target", "mean"),
        final_accuracy=("final_accuracy", "mean"),
        mean_staleness=("mean_staleness", "mean"),
        max_staleness=("max_staleness", "max"),
        mbytes=("bytes_total", lambda x: x.mean() / 1e6),
        idle=("client_idle_fraction", "mean"),
    ).reset_index()
    head = (
        f"| profile | algorithm | time to {target:g} (virtual s) | wall s to target | reached | "
        "final accuracy | mean / max staleness | MB moved | client idle |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in agg.to_dict("records"):
        ttt = "not reached" if pd.isna(r["time_to_target"]) else f"{r['time_to_target']:.4g}"
        wtt = "-" if pd.isna(r["wall_to_target"]) else f"{r['wall_to_target']:.1f}"
        lines.append(
            f"| {r['profile']} | {r['algorithm']} | {ttt} | {wtt} | {r['reached']}/{r['seeds']} | "
            f"{r['final_accuracy']:.4f} | {r['mean_staleness']:.2f} / {r['max_staleness']} | "
            f"{r['mbytes']:.2f} | {r['idle']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot_study(cells: list[Cell], results: dict[str, dict[str, Any]], target: float, path: Path) -> None:
    profiles = list(dict.fromkeys(c.profile for c in cells))
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.0 * len(profiles), 3.8), squeeze=False)
    for ax, prof in zip(axes[0], profiles, strict=True):
        for cell in cells:
            if cell.profile != prof or cell.seed != cells[0].seed:
                continue  # one seed per line keeps the panels readable; the table has all seeds
            m = pd.DataFrame(results[cell.label]["metrics"])
            ax.plot(m.sim_time, m.accuracy, label=cell.algorithm)
        if target:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"profile: {prof}")
        ax.set_xlabel("virtual time (s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
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

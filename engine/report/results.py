"""What a run records, and the files it leaves under ``out_dir``.

``metrics.csv`` has one row per evaluated global version, ``events.csv`` one row per
client job (in the order the server applied them), ``summary.json`` the headline
numbers, ``config.yaml`` the resolved configuration, plus PNG plots. Files are written
to a temporary sibling folder that is renamed into place, so an interrupted run leaves
nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from engine.config import Config, to_dict
from engine.core.evaluation import LOCAL_METRICS
from engine.core.recorder import EVENTS_COLUMNS, METRICS_COLUMNS, PRIVACY_METRICS


def default_out_dir(cfg: Config, stamp: str) -> str:
    return cfg.out_dir or os.path.join("runs", f"{stamp}-{cfg.algorithm.name}-{cfg.workload.name}")


def write_results(out_dir: str, cfg: Config, result: dict[str, Any]) -> Path:
    """Write every result file into ``out_dir`` at once (temp folder, then rename)."""
    from engine.report.plots import plot_accuracy, plot_timeline

    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        local = [
            k for k in LOCAL_METRICS + PRIVACY_METRICS if result["metrics"] and k in result["metrics"][0]
        ]
        metrics = pd.DataFrame(result["metrics"], columns=METRICS_COLUMNS + local)
        events = pd.DataFrame(result["events"], columns=EVENTS_COLUMNS)
        metrics.to_csv(tmp / "metrics.csv", index=False)
        events.to_csv(tmp / "events.csv", index=False)
        (tmp / "summary.json").write_text(
            json.dumps(result["summary"], indent=2, default=_json_default) + "\n"
        )
        np.save(tmp / "model.npy", result["model"])  # the final global model, flat (see ParamLayout)
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        plot_accuracy(metrics, tmp / "accuracy.png", title=f"{cfg.algorithm.name} on {cfg.workload.name}")
        plot_timeline(events, cfg.clients.num, tmp / "timeline.png")
        _install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _install(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in ``target``'s place. A target that exists holds
    what the run wrote as it went (its checkpoints; TensorBoard, MLflow or W&B folders) and,
    after ``--resume``, the results of the interrupted run, which these supersede: whatever
    ``tmp`` does not have moves into it, the old folder is renamed away before ``tmp``
    takes its name, so there is never a moment with no complete folder."""
    if not target.exists():
        os.replace(tmp, target)
        return
    for entry in target.iterdir():
        if not (tmp / entry.name).exists():
            os.replace(entry, tmp / entry.name)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


CHECKPOINTS = "checkpoints"  # the folder of out_dir that holds a run's checkpoints
KEEP_CHECKPOINTS = 3  # the latest few are kept on disk


def save_checkpoint(out_dir: str, version: int, data: bytes) -> Path:
    """Write ``data`` (engine/core/checkpoint.py) as ``out_dir/checkpoints/v<version>.ckpt``,
    atomically (a temporary file renamed into place), keeping the latest few."""
    folder = Path(out_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"v{version:09d}.ckpt"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    for stale in sorted(folder.glob("v*.ckpt"))[:-KEEP_CHECKPOINTS]:
        stale.unlink()
    return path


def latest_checkpoint(out_dir: str) -> Path | None:
    """The newest checkpoint under ``out_dir/checkpoints``, if any."""
    found = sorted((Path(out_dir) / CHECKPOINTS).glob("v*.ckpt"))
    return found[-1] if found else None


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialise {type(o).__name__}")

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
from engine.core.recorder import EVENTS_COLUMNS, METRICS_COLUMNS


def default_out_dir(cfg: Config, stamp: str) -> str:
    return cfg.out_dir or os.path.join("runs", f"{stamp}-{cfg.algorithm.name}-{cfg.workload.name}")


def write_results(out_dir: str, cfg: Config, result: dict[str, Any]) -> Path:
    """Write every result file into ``out_dir`` at once (temp folder, then rename)."""
    from engine.report.plots import plot_accuracy, plot_timeline

    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        local = [k for k in LOCAL_METRICS if result["metrics"] and k in result["metrics"][0]]
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
        if target.exists():
            target.rmdir()  # config validation guaranteed it is empty
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialise {type(o).__name__}")

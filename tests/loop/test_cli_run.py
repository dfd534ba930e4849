"""A whole CLI run, in-process (executors.backend=local): every result file, its columns,
and the closing table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from engine.run import main
from tests.conftest import TINY


def test_cli_run_writes_every_result_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*TINY, "executors.backend=local", "--quiet", f"out_dir={out}"]) == 0
    table = capsys.readouterr().out
    assert "final accuracy" in table and str(out) in table
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png",
        "config.yaml",
        "events.csv",
        "metrics.csv",
        "model.npy",
        "summary.json",
        "timeline.png",
    ]
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == [
        "version",
        "sim_time",
        "wall_time",
        "accuracy",
        "loss",
        "updates",
        "bytes_up",
        "bytes_down",
    ]
    assert metrics.version.tolist() == [0, 3, 6, 9, 12]
    events = pd.read_csv(out / "events.csv")
    assert {
        "client",
        "job",
        "version_start",
        "dispatch_time",
        "finish_time",
        "staleness",
        "local_steps",
        "bytes_up",
        "bytes_down",
    } <= set(events.columns)
    assert (events.finish_time > events.dispatch_time).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["versions"] == 12 and summary["updates_applied"] == len(events) - summary["jobs_dropped"]
    # Bytes are the real sizes: 610 float32 parameters of the 60x10 logistic regression.
    assert (events.bytes_down == 610 * 4).all()

"""A small study end to end, in-process: grid, comparison table, plots. (A study runs each
experiment through run_experiment, on whichever backend its config names.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from engine.study import main

STUDY = """
study:
  algorithms:
    fedavg: {name: fedavg, clients_per_round: 6}
    fedbuff: {name: fedbuff, concurrency: 6, buffer_size: 3}
  profiles:
    equal: {speed: {family: constant}}
    stragglers: {speed: {family: tiers, tier_fractions: [0.5, 0.5], tier_factors: [1, 100]}}
  seeds: [0]
  target_accuracy: 0.5
workload: {name: synthetic}
clients: {num: 12}
training: {local_steps: 5, batch_size: 10, lr: 0.1}
stop: {max_sim_time: 6}
eval: {every: 2}
executors: {backend: local}
"""


def test_study_grid_runs_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--quiet", f"out_dir={out}"]) == 0
    assert "| profile | algorithm |" in capsys.readouterr().out
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 4 and set(table.algorithm) == {"fedavg", "fedbuff"}
    for label in ("fedavg__equal__s0", "fedbuff__stragglers__s0"):
        assert (out / "runs" / label / "metrics.csv").is_file()
    assert (out / "accuracy.png").is_file() and (out / "comparison.md").is_file()
    rows = table.set_index(["algorithm", "profile"])
    # 100x stragglers: a synchronous round waits for them, so FedAvg completes far fewer
    # versions in the same virtual time; FedBuff keeps its pace.
    assert rows.loc[("fedavg", "stragglers"), "versions"] < rows.loc[("fedavg", "equal"), "versions"] / 5
    assert rows.loc[("fedbuff", "stragglers"), "versions"] > rows.loc[("fedavg", "stragglers"), "versions"]
    assert (table.sim_time <= 6).all()


def test_study_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(STUDY.replace("fedbuff, concurrency: 6", "fedbuff, concurency: 6"))
    assert main(["--config", str(cfg), f"out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "study cell fedbuff x equal: unknown key 'algorithm.concurency'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

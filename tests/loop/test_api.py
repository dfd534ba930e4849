"""The Python API in-process (no Ray): config building and its errors, a run's Result,
and a study through ``fedray.study``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import fedray
from tests.conftest import TINY

LOCAL = {"executors": {"backend": "local"}}


def test_config_from_a_file_a_dict_or_a_config_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("algorithm: {name: fedavg, clients_per_round: 4}\nclients: {num: 12}\n")
    cfg = fedray.config(path, training={"lr": 0.2}, **{"stop.max_versions": 7})
    assert (cfg.algorithm.name, cfg.algorithm.params.clients_per_round) == ("fedavg", 4)
    assert (cfg.training.lr, cfg.stop.max_versions, cfg.clients.num) == (0.2, 7, 12)
    again = fedray.config(cfg, algorithm={"server_lr": 0.5})  # merged into the section
    assert (again.algorithm.params.clients_per_round, again.algorithm.params.server_lr) == (4, 0.5)
    other = fedray.config(cfg, algorithm={"name": "fedbuff"})  # another algorithm: a fresh section
    assert other.algorithm.name == "fedbuff" and other.clients.num == 12
    with pytest.raises(fedray.ConfigError, match=r"^unknown key 'training.lrr' \(did you mean 'lr'\?\)"):
        fedray.config(None, **{"training.lrr": 1})
    with pytest.raises(fedray.ConfigError, match=r"config file 'nope\.yaml' not found"):
        fedray.config("nope.yaml")


def test_run_returns_frames_the_files_hold_and_a_torch_model(tmp_path: Path) -> None:
    overrides = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in TINY)}
    result = fedray.run(None, progress=False, **LOCAL, **overrides, out_dir=str(tmp_path / "run"))
    assert result.out_dir == tmp_path / "run"
    written = pd.read_csv(tmp_path / "run" / "metrics.csv")
    pd.testing.assert_frame_equal(result.metrics.drop(columns="wall_time"), written.drop(columns="wall_time"))
    pd.testing.assert_frame_equal(result.events, pd.read_csv(tmp_path / "run" / "events.csv"))
    np.testing.assert_array_equal(result.params, np.load(tmp_path / "run" / "model.npy"))
    import torch

    model = result.model
    x = torch.zeros(3, 60)  # the synthetic workload: 60 features
    assert model(x).shape == (3, 10) and result.summary["versions"] == 12


def test_a_study_from_python(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "study:\n"
        "  algorithms:\n"
        "    fedavg: {name: fedavg, clients_per_round: 4}\n"
        "    fedbuff: {name: fedbuff, concurrency: 4}\n"
        "  seeds: [0]\n"
        "workload: {name: synthetic}\n"
        "clients: {num: 12}\n"
        "training: {local_steps: 5, batch_size: 10}\n"
        "stop: {max_versions: 6}\n"
        "eval: {every: 3}\n"
        "executors: {backend: local}\n"
    )
    table, folder = fedray.study(study, out_dir=str(tmp_path / "out"))
    assert folder == tmp_path / "out" and sorted(table.algorithm) == ["fedavg", "fedbuff"]
    assert (folder / "runs" / "fedavg__base__s0" / "metrics.csv").is_file()

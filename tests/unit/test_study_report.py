"""The study report's spread over seeds, by hand: the table's mean ± std (min-max) and the
plot's mean curve with its min-max band (engine/report/study_report.py); and each study
algorithm's own training section (engine/config/study.py). No Ray, no runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.config import ConfigError, load_config
from engine.config.study import Cell
from engine.config.study import load_study as load
from engine.report.study_report import markdown, max_drop, plot_study, seed_band, spread


def test_spread_text() -> None:
    # mean 12, sample std sqrt(((10-12)^2 + 0 + (14-12)^2) / 2) = 2, range 10-14
    assert spread(pd.Series([10.0, 12.0, 14.0])) == "12 ± 2 (10-14)"
    assert spread(pd.Series([7.25, None])) == "7.25"  # one seed reached it: its value alone
    assert spread(pd.Series([None, None], dtype=float)) == "not reached"


def test_max_drop_is_the_worst_fall_below_the_best_so_far() -> None:
    accs = [0.2, 0.6, 0.5, 0.7, 0.4, 0.65]  # falls: 0.6 -> 0.5 (0.1), 0.7 -> 0.4 (0.3)
    assert max_drop([{"accuracy": a} for a in accs]) == pytest.approx(0.3)
    assert max_drop([{"accuracy": a} for a in (0.1, 0.5, 0.5, 0.9)]) == 0.0  # never got worse


def test_seed_band_steps_between_evaluations() -> None:
    # Seed a evaluated at 0, 1, 3 s and run to 3.5 s; seed b at 0, 2 s, run to 3 s.
    a = (np.array([0.0, 1.0, 3.0]), np.array([0.1, 0.5, 0.9]), 3.5)
    b = (np.array([0.0, 2.0]), np.array([0.2, 0.6]), 3.0)
    mean, low, high = seed_band([a, b], np.array([0.0, 0.5, 1.0, 2.5, 3.0, 3.5]))
    # t 0: (0.1, 0.2); 0.5: same; 1: (0.5, 0.2); 2.5: (0.5, 0.6); 3: (0.9, 0.6); 3.5: b has ended
    np.testing.assert_allclose(mean, [0.15, 0.15, 0.35, 0.55, 0.75, np.nan])
    np.testing.assert_allclose(low, [0.1, 0.1, 0.2, 0.5, 0.6, np.nan])
    np.testing.assert_allclose(high, [0.2, 0.2, 0.5, 0.6, 0.9, np.nan])
    # Before a run's first evaluation it has no accuracy: the mean is undefined there.
    late = (np.array([1.0]), np.array([0.4]), 2.0)
    mean, _, _ = seed_band([late], np.array([0.5, 1.0, 2.0]))
    assert np.isnan(mean[0]) and list(mean[1:]) == [0.4, 0.4]


def row(alg: str, seed: int, ttt: float | None, final: float) -> dict[str, Any]:
    return {
        "algorithm": alg,
        "profile": "p",
        "seed": seed,
        "final_accuracy": final,
        "time_to_target": ttt,
        "max_drop": 0.1 * seed,
        "wall_time_to_target": None if ttt is None else 2 * ttt,
        "bytes_to_target": None if ttt is None else 1e5 * ttt,
        "mean_staleness": 1.0,
        "max_staleness": 3,
        "bytes_total": 2e6,
        "client_idle_fraction": 0.5,
    }


def test_markdown_shows_the_spread_beside_each_time_to_target() -> None:
    table = pd.DataFrame(
        [row("a", 0, 10.0, 0.8), row("a", 1, 14.0, 0.9), row("b", 0, None, 0.5), row("b", 1, 6.0, 0.7)]
    )
    text = markdown(table, 0.75)
    # a: times 10, 14 -> mean 12, std sqrt(8) = 2.8; finals 0.8, 0.9 -> 0.85 ± 0.071;
    # max drops 0 and 0.1 -> 0.05
    a = "| p | a | 12 ± 2.8 (10-14) | 24.0 | 2/2 | 0.85 ± 0.071 (0.8-0.9) | 0.050 | 1.00 / 3 | 2.00 | 0.50 |"
    assert a + " 1.2 ± 0.28 (1-1.4) |" in text  # MB to target: 1e5 bytes per virtual second
    # b: one seed of two reached the target: its time alone
    assert "| p | b | 6 | 12.0 | 1/2 | 0.6 ± 0.14 (0.5-0.7) | 0.050 |" in text
    assert "mean ± std (min-max)" in text


def test_plot_has_a_band_per_algorithm(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    cells = [Cell(alg, "p", seed, cfg) for alg in ("a", "b") for seed in (0, 1)]
    results = {
        c.label: {
            "metrics": [
                {"sim_time": 0.0, "accuracy": 0.1, "bytes_up": 0, "bytes_down": 0},
                {
                    "sim_time": 1.0 + c.seed,
                    "accuracy": 0.5 + 0.1 * c.seed,
                    "bytes_up": 4e6,
                    "bytes_down": 1e6,
                },
            ],
            "summary": {"sim_time": 3.0, "bytes_up": 8e6, "bytes_down": 2e6},
        }
        for c in cells
    }
    path = tmp_path / "accuracy.png"
    plot_study(cells, results, 0.5, path)
    assert path.stat().st_size > 1000
    plot_study(cells, results, 0.5, tmp_path / "bytes.png", x="bytes")  # accuracy against MB moved
    assert (tmp_path / "bytes.png").stat().st_size > 1000


STUDY = """
study:
  algorithms:
    fedavg: {name: fedavg, clients_per_round: 4, stop: {max_sim_time: 30}}
    fedbuff: {name: fedbuff, concurrency: 4, server_lr: 0.5, training: {lr: 0.2, batch_size: 4}}
  seeds: [0, 1]
workload: {name: synthetic}
clients: {num: 8}
training: {local_steps: 5, batch_size: 10, lr: 0.05}
"""


def test_each_algorithm_runs_at_its_own_training_section(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    spec, cells, out_dir = load(str(path), ["training.local_steps=7", f"out_dir={tmp_path / 'out'}"])
    got = {(c.algorithm, c.seed): (c.cfg.training.lr, c.cfg.training.batch_size) for c in cells}
    assert got == {
        ("fedavg", 0): (0.05, 10), ("fedavg", 1): (0.05, 10),  # the base's
        ("fedbuff", 0): (0.2, 4), ("fedbuff", 1): (0.2, 4),  # its own, over the base
    }  # fmt: skip
    assert all(c.cfg.training.local_steps == 7 for c in cells)  # overrides still apply
    assert {c.algorithm: c.cfg.stop.max_sim_time for c in cells} == {"fedavg": 30.0, "fedbuff": 0.0}
    assert [c.cfg.algorithm.params.server_lr for c in cells if c.algorithm == "fedbuff"] == [0.5, 0.5]
    assert spec.algorithms["fedbuff"]["training"] == {"lr": 0.2, "batch_size": 4}  # kept in study.json
    assert out_dir == str(tmp_path / "out")
    # A study without such sections is read as it always was.
    path.write_text(
        STUDY.replace(", training: {lr: 0.2, batch_size: 4}", "").replace(", stop: {max_sim_time: 30}", "")
    )
    assert {(c.cfg.training.lr, c.cfg.stop.max_sim_time) for c in load(str(path), [])[1]} == {(0.05, 0.0)}


def test_bad_training_sections_name_the_cell(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.replace("lr: 0.2,", "lrr: 0.2,"))
    with pytest.raises(ConfigError, match=r"^study cell fedbuff x base: unknown key 'training.lrr'"):
        load(str(path), [])
    path.write_text(STUDY.replace("training: {lr: 0.2, batch_size: 4}", "training: 0.2"))
    with pytest.raises(ConfigError, match=r"^study.algorithms entry key 'training' is a config section"):
        load(str(path), [])

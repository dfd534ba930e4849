"""GWPF in whole runs, in-process (executors.backend=local, no Ray): deterministic and the
same under other executor settings, resumed from a checkpoint identically, client states on
disk, the bytes of its payloads both ways, stable_threshold 0 against FedAvg, and runs from
the CLI and the study command. (12 clients, 4 a round; the synthetic workload's logistic
regression has 610 entries, 2440 bytes dense.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine import run as cli
from engine import study
from engine.config import Config
from engine.experiment import run_experiment
from tests import conftest

GWPF = ("algorithm.name=gwpf", "algorithm.clients_per_round=4")
D = 610  # entries of the synthetic workload's model


def jobs(result: dict[str, Any]) -> list[tuple[int, int, int, int, int]]:
    """(version_start, client, job, bytes_up, bytes_down) of every job, by round and client
    (arrival order and times depend on the bytes, which are what differs between runs)."""
    return sorted((e[2], e[0], e[1], e[7], e[8]) for e in result["events"])


def tiny(*overrides: str) -> Config:
    return conftest.tiny("executors.backend=local", *overrides)


def run(cfg: Config, **kw: Any) -> dict[str, Any]:
    result, _ = run_experiment(cfg, write=False, **kw)
    return result


def scores(result: dict[str, Any]) -> list[tuple[int, float, float]]:
    return [(m["version"], m["accuracy"], m["loss"]) for m in result["metrics"]]


def test_deterministic_and_the_same_under_other_executor_settings() -> None:
    one = run(tiny(*GWPF))
    assert one["model"].size == D and one["summary"]["versions"] == 12
    assert one["summary"]["algorithm_stats"]["frozen_fraction"] > 0.3  # it did freeze
    for other in (run(tiny(*GWPF)), run(tiny(*GWPF, "executors.num=1", "executors.max_batch=1"))):
        assert other["events"] == one["events"]
        assert scores(other) == scores(one)
        np.testing.assert_array_equal(other["model"], one["model"])


def test_client_states_on_disk_give_the_run_they_give_in_memory(tmp_path: Path) -> None:
    """A client's state (its own values, its frozen set) is one uint8 array: 4D + D/8 bytes."""
    common = (*GWPF, "stop.max_versions=6")
    memory = run(tiny(*common))
    folder = tmp_path / "states"
    disk = run(tiny(*common, "server.client_state=disk", f"server.client_state_dir={folder}"))
    assert disk["events"] == memory["events"] and scores(disk) == scores(memory)
    np.testing.assert_array_equal(disk["model"], memory["model"])
    stored = [np.load(p) for p in sorted(folder.glob("*.npy"))]
    assert stored and all(a.dtype == np.uint8 and a.shape == (4 * D + -(-D // 8),) for a in stored)


def test_bytes_of_the_payloads_both_ways_and_for_either_vote_width() -> None:
    """Before anything freezes (versions 0 and 1) a job gets every value and T_s (4D + 4)
    and sends every value (4D). Then a job sends 4 |active + thawed| bytes of values plus
    its votes on the n frozen entries: ceil(n / 8) bytes at 1 bit, 4n at 32, which changes
    nothing else in the run."""
    one = run(tiny(*GWPF))
    wide = run(tiny(*GWPF, "algorithm.vote_bits=32"))
    assert scores(one) == scores(wide)
    np.testing.assert_array_equal(one["model"], wide["model"])
    saw_votes = False
    for a, b in zip(jobs(one), jobs(wide), strict=True):
        assert a[:3] == b[:3] and a[4] == b[4]  # the same jobs, receiving the same
        version, up, down, up_wide = a[0], a[3], a[4], b[3]
        if version < 2:
            assert (up, down, up_wide) == (4 * D, 4 * D + 4, 4 * D)
            continue
        n = next(n for n in range(D + 1) if 4 * n - -(-n // 8) == up_wide - up)
        synced, rest = divmod(up - -(-n // 8), 4)
        assert rest == 0 and D - n <= synced <= D  # the active entries at least, plus thawed ones
        saw_votes |= n > 0
    assert saw_votes
    for r in (one, wide):
        s = r["summary"]
        assert s["bytes_up"] == sum(j[3] for j in jobs(r)) and s["bytes_down"] == sum(j[4] for j in jobs(r))
    assert one["summary"]["bytes_up"] < 48 * 4 * D  # less than FedAvg's dense uploads


def test_threshold_zero_freezes_nothing_and_is_fedavg_with_uniform_weights() -> None:
    """Every value goes both ways in every round; the down payload adds T_s (4 bytes) and
    empty sets. The merge is the mean of values, FedAvg's x - mean(x - y): equal to rounding."""
    gwpf = run(tiny(*GWPF, "algorithm.stable_threshold=0"))
    fedavg = run(
        tiny("algorithm.name=fedavg", "algorithm.clients_per_round=4", "algorithm.weighting=uniform")
    )
    assert gwpf["summary"]["algorithm_stats"]["frozen_fraction"] == 0
    assert [j[:3] for j in jobs(gwpf)] == [j[:3] for j in jobs(fedavg)]
    assert all(j[3:] == (4 * D, 4 * D + 4) for j in jobs(gwpf))
    assert all(j[3:] == (4 * D, 4 * D) for j in jobs(fedavg))
    np.testing.assert_allclose(gwpf["model"], fedavg["model"], rtol=0, atol=1e-5)
    for g, f in zip(gwpf["metrics"], fedavg["metrics"], strict=True):
        assert abs(g["loss"] - f["loss"]) < 1e-4


def test_resumes_from_a_checkpoint_identically() -> None:
    """Server EMAs, frozen and thaw state, the clients' own values and the jobs in flight at
    version 4 (their tasks carry the down payloads) all go through the checkpoint."""
    spread = (
        *GWPF,
        "clients.speed.family=pareto",
        "clients.speed.shape=1.5",
        "stop.max_versions=8",
        "eval.every=4",
        "checkpoint.every=4",
    )
    rows: list[dict[str, Any]] = []
    one = run(tiny(*spread), on_evaluation=rows.append)
    assert [r["version"] for r in rows] == [0, 4, 8] and rows[1]["checkpoint"] is not None
    two = run(tiny(*spread), resume=rows[1]["checkpoint"])
    assert one["events"] == two["events"]
    assert scores(one) == scores(two)
    np.testing.assert_array_equal(one["model"], two["model"])
    assert one["summary"]["algorithm_stats"] == two["summary"]["algorithm_stats"]


def test_runs_from_the_cli_and_the_study_command(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["--config", "configs/gwpf.yaml", "executors.backend=local", "stop.max_versions=6", "eval.every=3"]
    assert cli.main([*args, "--quiet", f"out_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "gwpf" and summary["versions"] == 6
    assert 0 < summary["bytes_up"] <= 60 * 4 * D and "frozen_fraction" in summary["algorithm_stats"]
    spec = tmp_path / "study.yaml"
    spec.write_text(
        "study:\n"
        "  algorithms:\n"
        "    fedavg: {name: fedavg, clients_per_round: 4, weighting: uniform}\n"
        "    gwpf: {name: gwpf, clients_per_round: 4, vote_bits: 32}\n"
        "  profiles:\n"
        "    equal: {speed: {family: constant}}\n"
        "  seeds: [0]\n"
        "workload: {name: synthetic}\n"
        "clients: {num: 12}\n"
        "training: {local_steps: 5, batch_size: 10, lr: 0.05}\n"
        "stop: {max_versions: 6}\n"
        "eval: {every: 3}\n"
        "executors: {backend: local}\n"
    )
    assert study.main(["--config", str(spec), "--quiet", f"out_dir={tmp_path / 'study'}"]) == 0
    table = pd.read_csv(tmp_path / "study" / "comparison.csv").set_index("algorithm")
    assert set(table.index) == {"fedavg", "gwpf"} and (table.versions == 6).all()
    assert table.loc["fedavg", "bytes_total"] == 6 * 4 * 2 * 4 * D

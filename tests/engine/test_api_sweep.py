"""``fedray.sweep`` end to end: it starts a local Ray, runs the trials and gives the table."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedray

pytestmark = [pytest.mark.engine]


def test_a_sweep_from_python(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "experiment:\n"
        "  workload.name: synthetic\n"
        "  clients.num: 12\n"
        "  training: {local_steps: 5, batch_size: 10}\n"
        "  stop.max_versions: 6\n"
        "  eval.every: 3\n"
        "  executors.num: 1\n"
        "search: grid\n"
        "space: {training.lr: {grid: [0.05, 0.2]}}\n"
    )
    table, folder = fedray.sweep(space, out_dir=str(tmp_path / "out"), ray={"num_cpus": 2})
    assert folder == tmp_path / "out" and len(table) == 2
    assert sorted(table["training.lr"]) == [0.05, 0.2] and (folder / "best.yaml").is_file()

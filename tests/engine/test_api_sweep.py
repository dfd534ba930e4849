"""``fedray.sweep`` end to end on a local Ray: it runs the trials and gives the table."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedray

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("ray_local")]


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
        "space: {training.lr: {grid: [0.2]}}\n"
    )
    table, folder = fedray.sweep(space, out_dir=str(tmp_path / "out"))
    assert folder == tmp_path / "out" and table["training.lr"].tolist() == [0.2]
    assert table.status.tolist() == ["completed"] and (folder / "best.yaml").is_file()

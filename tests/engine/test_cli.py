"""The CLI against a running Ray: config errors that only the cluster can tell. (A whole CLI
run is tested in-process: tests/loop/test_cli_run.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.run import main
from tests.conftest import TINY

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("ray_local")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["executors.num_gpus=0.5"], "executors.num_gpus=0.5 but the Ray cluster has no GPU"),
        (["executors.num=3"], "needs 3 CPUs but the cluster has 2 free for executors"),
    ],
)
def test_cluster_errors_exit_2_before_any_actor(
    overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    out = tmp_path / "run"
    before = len(ray.util.list_named_actors(all_namespaces=True))
    assert main([*TINY, *overrides, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
    assert len(ray.util.list_named_actors(all_namespaces=True)) == before

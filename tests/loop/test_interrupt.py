"""Interrupt and resume from disk, in-process (executors.backend=local), through the CLI in
a subprocess: SIGINT or SIGTERM mid-run writes the results so far (stop reason
'interrupted', exit 130 or 143, no half-written folder), checkpoints are on disk as they
are taken, and ``--resume OUT_DIR`` ends exactly as the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.experiment import Interrupt, run_experiment
from tests.conftest import TINY, tiny

RUN = (*TINY, "executors.backend=local", "stop.max_versions=30", "eval.every=3", "checkpoint.every=3")

# The child interrupts itself right after its second checkpoint is on disk: the signal
# always arrives mid-run, whatever the machine's load.
CHILD = """
import os, signal, sys
import engine.experiment as experiment
saved = []
real = experiment.save_checkpoint
def save(*args):
    path = real(*args)
    saved.append(path)
    if len(saved) == 2:
        os.kill(os.getpid(), signal.{signal})
    return path
experiment.save_checkpoint = save
from engine.run import main
sys.exit(main(sys.argv[1:]))
"""


def cli(*args: str, child: str | None = None) -> subprocess.CompletedProcess[str]:
    code = ["-c", child] if child else ["-m", "engine.run"]
    return subprocess.run(
        [sys.executable, *code, "--quiet", *args], capture_output=True, text=True, timeout=300
    )


def frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    metrics = pd.read_csv(path / "metrics.csv").drop(columns=["wall_time"])
    return metrics, pd.read_csv(path / "events.csv"), np.load(path / "model.npy")


def interrupted(out: Path, sig: str, code: int) -> None:
    """Run RUN into ``out``, interrupted by ``sig`` right after its second checkpoint."""
    stopped = cli(*RUN, f"out_dir={out}", child=CHILD.format(signal=sig))
    assert stopped.returncode == code, stopped.stderr
    assert "interrupted" in stopped.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and 6 <= summary["versions"] < 30
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["v000000003.ckpt", "v000000006.ckpt"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # nothing half-written beside it


def test_sigint_and_sigterm_ask_to_stop_and_a_second_signal_aborts() -> None:
    """In this process: each signal sets the request and the exit status (130, 143)."""
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with Interrupt() as interrupt:
            os.kill(os.getpid(), sig)
            assert interrupt.event.is_set() and interrupt.exit_code == code
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), sig)


def test_an_interrupted_run_resumes_from_disk_exactly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    interrupted(out, "SIGINT", 130)
    resumed = cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    reference, _ = run_experiment(tiny(*RUN, f"out_dir={tmp_path / 'reference'}"))
    assert reference["summary"]["versions"] == 30
    (m1, e1, x1), (m2, e2, x2) = frames(out), frames(tmp_path / "reference")
    pd.testing.assert_frame_equal(m1, m2, check_exact=True)
    pd.testing.assert_frame_equal(e1, e2, check_exact=True)
    np.testing.assert_array_equal(x1, x2)
    assert json.loads((out / "summary.json").read_text())["stop_reason"] == "max_versions"
    assert (out / "checkpoints").is_dir()  # kept with the results


def test_resume_refuses_another_config_and_a_folder_without_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experiment(tiny(*RUN, "stop.max_versions=6", f"out_dir={out}"))
    other = cli("--resume", str(out), *RUN, "stop.max_versions=6", "training.lr=0.9")
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "taken under another configuration (training differ)" in other.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = cli("--resume", str(empty))
    assert (
        missing.returncode == 2 and "no checkpoint in" in missing.stderr and missing.stderr.count("\n") == 1
    )

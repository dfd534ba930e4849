"""Whole in-process runs (executors.backend=local, no Ray) with clipped local steps
(``training.clip``): AutoClip runs are deterministic, differ from unclipped ones, and keep
each client's history of gradient norms as its client state, on disk as in memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from algorithms import ALGORITHMS
from engine.config import Config
from engine.worker.data import load_data
from tests.loop.test_costs import curve, rows, run, tiny

AUTOCLIP = ("training.clip.mode=autoclip", "training.clip.percentile=10", "stop.max_versions=6")


def same_run(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["events"] == b["events"]
    np.testing.assert_array_equal(a["model"], b["model"])
    assert curve(a) == curve(b)


def test_jobs_carry_the_configured_clipping() -> None:
    cfg = tiny(*AUTOCLIP, "training.clip.scope=job")
    algo = ALGORITHMS[cfg.algorithm.name](cfg.algorithm.params, cfg.training, load_data(cfg).shards.sizes)
    assert algo.task_for(0).clip == cfg.training.clip, "Algorithm.task_for must pass training.clip"


def test_autoclip_is_deterministic_clips_and_keeps_each_clients_history(tmp_path: Path) -> None:
    cfg: Config = tiny(*AUTOCLIP)
    assert cfg.training.clip.scope == "client" and cfg.server.client_state == "memory"
    first, second = run(cfg), run(cfg)
    same_run(first, second)
    plain = run(tiny("stop.max_versions=6"))
    # clipping changes the models (and losses), not the timing
    assert [e[:-1] for e in plain["events"]] == [e[:-1] for e in first["events"]]
    assert np.abs(plain["model"] - first["model"]).max() > 1e-4
    job = run(tiny(*AUTOCLIP, "training.clip.scope=job"))  # a history of each job's own norms
    assert np.abs(job["model"] - first["model"]).max() > 1e-4

    folder = tmp_path / "histories"
    disk = run(tiny(*AUTOCLIP, "server.client_state=disk", f"server.client_state_dir={folder}"))
    same_run(disk, first)
    # Each client's history holds one norm per local step of each of its applied jobs.
    applied = Counter(e["client"] for e in rows(first) if not e["dropped"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.npy" for c in applied)
    for client, jobs in applied.items():
        history = np.load(folder / f"{client}.npy", allow_pickle=False)
        assert history.dtype == np.float64 and history.shape == (jobs * cfg.training.local_steps,)
        assert (history > 0).all() and np.isfinite(history).all()

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


def test_global_history_is_the_servers_and_travels_with_the_jobs() -> None:
    """Scope global: one history on the server, copied into each job at dispatch (8 bytes
    a norm down) and grown by each applied job's norms (8 bytes a step up)."""
    cfg = tiny(*AUTOCLIP, "training.clip.scope=global")
    shared = run(cfg)
    same_run(shared, run(cfg))
    assert np.abs(shared["model"] - run(tiny(*AUTOCLIP))["model"]).max() > 1e-4  # not the client scope
    steps, model_bytes = cfg.training.local_steps, shared["model"].nbytes
    events = rows(shared)
    assert events and not any(e["dropped"] for e in events)
    assert {e["bytes_up"] for e in events} == {model_bytes + 8 * steps}
    for e in events:  # the norms of every job applied by the end of its dispatch instant
        before = sum(1 for o in events if o["finish_time"] <= e["dispatch_time"])
        assert e["bytes_down"] == model_bytes + 8 * steps * before

    windowed = rows(run(tiny(*AUTOCLIP, "training.clip.scope=global", "training.clip.window=7")))
    assert max(e["bytes_down"] for e in windowed) == model_bytes + 8 * 7


def test_global_history_resumes_from_a_checkpoint_identically() -> None:
    from engine.experiment import run_experiment

    cfg = tiny(
        *AUTOCLIP, "training.clip.scope=global", "stop.max_versions=8", "eval.every=4", "checkpoint.every=4"
    )
    seen: list[dict[str, Any]] = []
    one, _ = run_experiment(cfg, write=False, on_evaluation=seen.append)
    assert seen[1]["checkpoint"] is not None
    two, _ = run_experiment(cfg, write=False, resume=seen[1]["checkpoint"])
    same_run(one, two)

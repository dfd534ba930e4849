"""Experiment tracking without running anything: the track.* section, a missing package as
one config error (exit 2), what gets logged, where, tracking folders kept across the
results' rename, and the Ray Tune callbacks a sweep gets (no Ray started)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError, load_config, sections
from engine.config.sections import TRACKERS, TrackConfig, _installed
from engine.config.sweep_space import load_sweep
from engine.report import tracking
from engine.run import main


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tracker's package counts as installed: these tests only build configs."""
    monkeypatch.setattr(sections, "_installed", lambda module: True)


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides))
    return str(e.value)


def test_tracking_is_off_unless_asked_for() -> None:
    cfg = load_config()
    assert cfg.track == TrackConfig() and not cfg.track.enabled
    assert cfg.track.wandb_mode == "offline"  # nothing touches the network unless asked
    assert load_config(None, ["track.tensorboard=true"]).track.enabled  # tensorboardX comes with Ray


@pytest.mark.parametrize("tool", sorted(TRACKERS))
def test_a_missing_package_is_one_config_error_naming_the_extra(
    tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, TRACKERS[tool], None)  # as if not installed: imports fail too
    message = error_of(f"track.{tool}=true")
    assert message == f'track.{tool}=true needs the {TRACKERS[tool]} package: pip install -e ".[{tool}]"'
    load_config(None, [f"track.{tool}=false"])  # off: the package is not needed


def test_a_missing_package_exits_2_on_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    out = tmp_path / "run"
    assert main(["track.mlflow=true", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'fedray: error: track.mlflow=true needs the mlflow package: pip install -e ".[mlflow]"'
    assert not out.exists()


def test_bad_track_values() -> None:
    assert "track.wandb_mode must be one of offline, online, disabled" in error_of("track.wandb_mode=cloud")
    assert "track.mlflow_experiment must name an experiment" in error_of("track.mlflow_experiment=")
    assert "unknown key 'track.tensorbord'" in error_of("track.tensorbord=true")


def test_what_gets_logged(tmp_path: Path) -> None:
    cfg = load_config(None, ["clients.speed.tier_factors=[1, 100]"])
    flat = tracking.flat_config(cfg, str(tmp_path / "run"))
    assert flat["algorithm.name"] == "fedbuff" and flat["clients.num"] == 50
    assert flat["clients.speed.tier_factors"] == "[1.0, 100.0]"  # lists as text: params are scalars
    assert flat["out_dir"] == str((tmp_path / "run").resolve())  # the actual folder, not ""
    assert flat["track.tensorboard"] is False
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())

    row = {
        "version": 6,
        "accuracy": np.float64(0.5),
        "loss": float("nan"),
        "sim_time": 1.5,
        "updates": np.int64(30),
        "checkpoint": b"...",
        "flag": True,
        "note": "x",
    }
    assert tracking.row_metrics(row) == pytest.approx(
        {"accuracy": 0.5, "loss": float("nan"), "sim_time": 1.5, "updates": 30.0}, nan_ok=True
    )
    summary = {"final_accuracy": 0.7, "versions": 12, "stop_reason": "max_versions", "delays": {"a": 1.0}}
    assert tracking.headline(summary) == {"final_accuracy": 0.7, "versions": 12.0}


def test_where_trackers_write(tmp_path: Path, installed: None) -> None:
    out = str(tmp_path / "runs" / "r1")
    cfg = load_config(None, ["track.tensorboard=true", "track.mlflow=true"])
    assert tracking.tensorboard_dir(cfg, out) == Path(out) / "tensorboard"
    assert tracking.mlflow_uri(cfg, out) == (Path(out).resolve() / "mlruns").as_uri()
    assert tracking.local_store(tracking.mlflow_uri(cfg, out)) == Path(out).resolve() / "mlruns"
    shared = load_config(
        None,
        [f"track.tensorboard_dir={tmp_path / 'tb'}", "track.mlflow=true", "track.mlflow_uri=http://h:5000"],
    )
    assert tracking.tensorboard_dir(shared, out) == tmp_path / "tb" / "r1"  # one subfolder per run
    assert tracking.local_store("http://h:5000") is None
    assert tracking.local_store("./mlruns") == Path("mlruns")


def test_tracking_folders_survive_the_results_rename(tmp_path: Path) -> None:
    """The results writer replaces out_dir's folder: what the run wrote as it went
    (checkpoints, tracking) moves into the new folder; old result files are superseded."""
    from engine.report.results import write_results

    out = tmp_path / "run"
    for folder in ("tensorboard", "mlruns", "checkpoints"):
        (out / folder).mkdir(parents=True)
        (out / folder / "f").write_text(folder)
    (out / "metrics.csv").write_text("old\n")
    cfg = load_config(None, [])
    result = {"metrics": [], "events": [], "summary": {}, "model": np.zeros(2, np.float32)}
    write_results(str(out), cfg, result)
    names = sorted(p.name for p in out.iterdir())
    assert {"checkpoints", "mlruns", "tensorboard", "metrics.csv", "summary.json"} <= set(names)
    assert (out / "mlruns" / "f").read_text() == "mlruns" and (out / "metrics.csv").read_text() != "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no holding folder left


def test_a_sweep_logs_through_tunes_callbacks_and_its_trials_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.logger import TBXLoggerCallback

    from engine.tune import tracking_callbacks, untracked

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored afterwards
    monkeypatch.setenv("WANDB_MODE", "")
    tools = ["tensorboard"] + [t for t in ("mlflow", "wandb") if _installed(TRACKERS[t])]
    f = tmp_path / "space.yaml"
    f.write_text("space: {training.lr: {choice: [0.05, 0.1]}}\n")
    out = tmp_path / "sweep"
    sweep = load_sweep(str(f), [f"track.{t}=true" for t in tools], str(out))
    found = tracking_callbacks(sweep)
    kinds = [type(c) for c in found]
    assert kinds[0] is TBXLoggerCallback
    if "mlflow" in tools:
        (cb,) = [c for c in found if isinstance(c, MLflowLoggerCallback)]
        assert cb.tracking_uri == (out.resolve() / "mlruns").as_uri() and cb.experiment_name == "fedray"
    if "wandb" in tools:
        from ray.air.integrations.wandb import WandbLoggerCallback

        (wb,) = [c for c in found if isinstance(c, WandbLoggerCallback)]
        assert wb.project == "fedray" and wb.kwargs["mode"] == "offline"
        assert os.environ["WANDB_MODE"] == "offline"  # so Tune asks for no API key
    assert len(found) == len(tools)
    # the trials' own runs track nothing: no double logging
    trials = untracked(sweep)
    assert "track" not in trials.base_raw and not trials.base.track.enabled
    assert not trials.trial_config({"training.lr": 0.1}).track.enabled
    assert sweep.trial_config({"training.lr": 0.1}).track.enabled  # the sweep itself is unchanged
    assert tracking_callbacks(load_sweep(str(f), [], str(out))) == []
    import ray

    assert not ray.is_initialized()


def test_a_tracker_that_fails_is_dropped_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []

    class Flaky(tracking.Tracker):
        name = "tensorboard"

        def __init__(self, cfg: object, out_dir: str) -> None:
            pass

        def log(self, metrics: dict[str, float], step: int) -> None:
            calls.append(f"log {step}")
            raise OSError("server gone")

        def finish(self, summary: dict[str, object]) -> None:
            calls.append("finish")

        def close(self, status: str) -> None:
            calls.append(f"close {status}")

    monkeypatch.setattr(tracking, "KINDS", {"tensorboard": Flaky})
    trackers = tracking.Trackers(load_config(None, ["track.tensorboard=true"]), "unused")
    trackers.evaluation({"version": 0, "accuracy": 0.1})
    trackers.evaluation({"version": 3, "accuracy": 0.2})
    trackers.finish({"versions": 3})
    trackers.close()
    assert calls == ["log 0", "close FAILED"]  # dropped at once, its run ended as failed
    assert capsys.readouterr().err.count("tensorboard logging failed") == 1

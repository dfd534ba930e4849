"""Optional experiment tracking: TensorBoard, MLflow and Weights & Biases (``track.*``).

Each tool is off unless the config asks for it, and each logs the same three things: the
resolved configuration (TensorBoard: text and hparams; MLflow: params; W&B: config), every
evaluation row as it settles (accuracy, loss, local metrics, bytes, updates, virtual and
wall time, each its own metric at step = version) and the final summary's headline numbers
(``summary/<key>``; in W&B in the run's summary). The driver's ``Watcher``
(engine/experiment.py) feeds them, so they work the same for both backends and the
simulation never sees them.

Where they write (``out_dir`` being the run's results folder):

- TensorBoard: tensorboardX event files in ``out_dir/tensorboard`` (``tensorboard --logdir
  out_dir``); or, with ``track.tensorboard_dir``, in ``<tensorboard_dir>/<out_dir's name>``,
  so many runs can share one log folder.
- MLflow: a run named after ``out_dir`` in experiment ``track.mlflow_experiment`` at
  ``track.mlflow_uri``; by default a local file store, ``file:<out_dir>/mlruns``
  (``mlflow ui --backend-store-uri file:<out_dir>/mlruns``).
- W&B: a run in project ``track.wandb_project``, offline by default (under
  ``out_dir/wandb``; ``wandb sync`` uploads it later).

The results of a run are written at once into ``out_dir`` (engine/report/results.py); the
tracking folders already there move into the new folder. A sweep logs through Ray Tune's
own callbacks for the same tools (``tracking_callbacks``, end of this module), not these.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import sys
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from engine.config import Config, to_dict
from engine.config.sections import TrackConfig

if TYPE_CHECKING:
    from engine.config.sweep_space import Sweep

SKIP_ROW = ("version", "checkpoint")  # the step itself, and the loop's snapshot bytes
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call


# ---- what gets logged --------------------------------------------------------------------


def flat_config(cfg: Config, out_dir: str) -> dict[str, Any]:
    """The resolved configuration as dotted keys (``algorithm.name``), its values scalars:
    lists become their text. ``out_dir`` is the run's actual folder."""
    nested = to_dict(cfg)
    nested["out_dir"] = str(Path(out_dir).resolve())
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in _flatten(nested)}


def _flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's numbers too


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """An evaluation row's numbers (accuracy, loss, local metrics, sim_time, wall_time,
    updates, bytes, ...), each to be logged at step = the row's version."""
    return {k: float(v) for k, v in row.items() if k not in SKIP_ROW and _number(v)}


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's top-level numbers (final and best accuracy, times, updates, staleness,
    bytes, ...); nested sections and text are left to summary.json."""
    return {k: float(v) for k, v in summary.items() if _number(v)}


# ---- where ---------------------------------------------------------------------------------


def tensorboard_dir(cfg: Config, out_dir: str) -> Path:
    base = cfg.track.tensorboard_dir
    return Path(base).expanduser() / Path(out_dir).name if base else Path(out_dir) / "tensorboard"


def mlflow_uri(cfg: Config, out_dir: str) -> str:
    return cfg.track.mlflow_uri or (Path(out_dir).resolve() / "mlruns").as_uri()


def local_store(uri: str) -> Path | None:
    """The folder of a local MLflow file store (``file:...`` or a plain path); None otherwise."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(uri).expanduser()
    return None


def allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set (it is
    "in maintenance mode"); a local ``file:`` store is what fedray uses by default, with no
    server and no database, so opt in (an explicit setting in the environment wins)."""
    if local_store(uri) is not None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def wandb_dir(out_dir: str) -> Path:
    return Path(out_dir)  # W&B adds its own wandb/ folder


# ---- the trackers --------------------------------------------------------------------------


class Tracker(ABC):
    """One tool's run: ``log`` each evaluation, ``finish`` with the summary, ``close``."""

    name = ""

    @abstractmethod
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def finish(self, summary: dict[str, Any]) -> None: ...

    @abstractmethod
    def close(self, status: str) -> None:
        """``status``: FINISHED, KILLED (interrupted) or FAILED."""


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg: Config, out_dir: str) -> None:
        from tensorboardX import SummaryWriter

        self.params = flat_config(cfg, out_dir)
        self.writer = SummaryWriter(logdir=str(tensorboard_dir(cfg, out_dir)), flush_secs=10)
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # markdown: verbatim

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # evaluations are rare: TensorBoard shows each one at once

    def finish(self, summary: dict[str, Any]) -> None:
        from tensorboardX.summary import hparams

        step = int(summary.get("versions", 0))
        final = {f"summary/{k}": v for k, v in headline(summary).items()}
        for key, value in final.items():
            self.writer.add_scalar(key, value, step)
        # The HParams dashboard: this run's configuration against its headline numbers
        # (written into the run's own folder, as Tune's TBXLoggerCallback does).
        for part in hparams(self.params, final):
            self.writer.file_writer.add_summary(part)
        self.writer.add_text("stop_reason", str(summary.get("stop_reason", "")), step)

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg: Config, out_dir: str) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(cfg, out_dir)
        allow_file_store(uri)
        self.client = MlflowClient(tracking_uri=uri)
        name = cfg.track.mlflow_experiment
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                experiment = self.client.create_experiment(name)
            except MlflowException:  # another run created it meanwhile
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
                experiment = found.experiment_id
        else:
            experiment = found.experiment_id
        tags = {
            "fedray.out_dir": str(Path(out_dir).resolve()),
            "fedray.algorithm": cfg.algorithm.name,
            "fedray.workload": cfg.workload.name,
        }
        run = self.client.create_run(experiment, run_name=Path(out_dir).name, tags=tags)
        self.run_id: str = run.info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(cfg, out_dir).items()]
        for i in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH])
        self.client.log_text(self.run_id, yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._metrics(metrics, step)

    def finish(self, summary: dict[str, Any]) -> None:
        final = {f"summary/{k}": v for k, v in headline(summary).items()}
        self._metrics(final, int(summary.get("versions", 0)))
        self.client.set_tag(self.run_id, "fedray.stop_reason", str(summary.get("stop_reason", "")))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, cfg: Config, out_dir: str) -> None:
        import wandb

        mode: Any = cfg.track.wandb_mode  # checked by TrackConfig
        folder = wandb_dir(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        config = to_dict(cfg)
        config["out_dir"] = str(Path(out_dir).resolve())
        self.run = wandb.init(
            project=cfg.track.wandb_project,
            mode=mode,
            dir=str(folder),
            name=Path(out_dir).name,
            config=config,
            reinit="create_new",  # a run of its own, whatever else this process logs
            settings=wandb.Settings(console="off", silent=True),  # the progress bar's terminal stays ours
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        final = {f"summary/{k}": v for k, v in headline(summary).items()}  # the last rows' values stay
        self.run.summary.update({**final, "summary/stop_reason": str(summary.get("stop_reason", ""))})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


KINDS: dict[str, Callable[[Config, str], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MLflowTracker,
    "wandb": WandbTracker,
}


class Trackers:
    """The trackers ``cfg.track`` asks for, fed as one. A tracker that fails while logging
    (a tracking server gone away) is reported once on stderr and dropped: the run goes on."""

    def __init__(self, cfg: Config, out_dir: str) -> None:
        self.active: list[Tracker] = []
        self.status = "FAILED"  # until finish() says otherwise
        try:
            for name, kind in KINDS.items():
                if getattr(cfg.track, name):
                    self.active.append(kind(cfg, out_dir))
        except BaseException:
            self.close()
            raise

    def _each(self, what: str, *args: Any) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, what)(*args)
            except Exception as e:
                print(f"fedray: {tracker.name} logging failed; no more from it: {e!r}", file=sys.stderr)
                self.active.remove(tracker)
                with suppress(Exception):  # end its run (marked failed) and free its writer
                    tracker.close("FAILED")

    def evaluation(self, row: dict[str, Any]) -> None:
        self._each("log", row_metrics(row), int(row["version"]))  # NaN too: a diverged run's loss

    def finish(self, summary: dict[str, Any]) -> None:
        self._each("finish", summary)
        self.status = "KILLED" if summary.get("stop_reason") == "interrupted" else "FINISHED"

    def close(self) -> None:
        """End every tracker's run (FAILED unless ``finish`` came first); safe to call twice."""
        active, self.active = self.active, []
        for tracker in active:
            try:
                tracker.close(self.status)
            except Exception as e:
                print(f"fedray: closing the {tracker.name} run failed: {e!r}", file=sys.stderr)


# ---- sweeps: Ray Tune's own callbacks log each trial (engine/tune.py) ----------------------


def untracked(sweep: Sweep) -> Sweep:
    """The sweep as its trials run it: with ``track`` off, since Tune's callbacks
    (``tracking_callbacks``) log every trial from the driver instead."""
    raw = {k: v for k, v in sweep.base_raw.items() if k != "track"}
    return dataclasses.replace(sweep, base_raw=raw, base=dataclasses.replace(sweep.base, track=TrackConfig()))


def tracking_callbacks(sweep: Sweep) -> list[Any]:
    """Ray Tune's own logger callbacks for the tools the base experiment's ``track`` asks
    for: TensorBoard event files in each trial's folder (``tensorboard --logdir
    <out_dir>/trials``; ``track.tensorboard_dir`` is not used), one MLflow run per trial in
    ``track.mlflow_experiment`` at ``track.mlflow_uri`` (default ``file:<out_dir>/mlruns``),
    one W&B run per trial in ``track.wandb_project`` (``track.wandb_mode``; offline runs
    under ``<out_dir>/wandb``). Each logs the trial's sampled hyperparameters and every
    report (accuracy, loss, version, sim_time, ...) at step = Tune's training_iteration."""
    t, out = sweep.base.track, Path(sweep.out_dir).resolve()
    found: list[Any] = []
    if t.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        found.append(TBXLoggerCallback())
    if t.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = t.mlflow_uri or (out / "mlruns").as_uri()
        allow_file_store(uri)
        found.append(
            MLflowLoggerCallback(
                tracking_uri=uri, experiment_name=t.mlflow_experiment, tags={"fedray.sweep": sweep.name}
            )
        )
    if t.wandb:
        import wandb
        from ray.air.integrations.wandb import WandbLoggerCallback

        # Tune asks for an API key unless WANDB_MODE says the runs stay on this machine.
        os.environ["WANDB_MODE"] = t.wandb_mode
        out.mkdir(parents=True, exist_ok=True)
        quiet = wandb.Settings(silent=True, console="off")  # no run summaries printed by its actors
        found.append(
            WandbLoggerCallback(
                project=t.wandb_project,
                mode=t.wandb_mode,
                dir=str(out),
                settings=quiet,
                reinit="finish_previous",  # Tune's reinit=True, minus wandb's deprecation warning
            )
        )
    return found

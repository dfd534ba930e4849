"""What a run records as it goes: one row per client job, the bookkeeping of every global
version and evaluation, and at the end the result (metrics, events, summary) that
engine/report/results.py writes to ``out_dir``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

import algorithms.privacy as dp
from engine import __version__
from engine.core.evaluation import LOCAL_METRICS
from engine.core.serial import Plain

if TYPE_CHECKING:
    from algorithms.privacy import Spending
    from engine.config import Config
    from engine.core.jobs import InFlight

STALL_JOBS = 2000  # jobs ending with no new global version before the run is called stalled

METRICS_COLUMNS = [
    "version",
    "sim_time",
    "wall_time",
    "accuracy",
    "loss",
    "updates",
    "bytes_up",
    "bytes_down",
]
# With algorithm.privacy: the epsilon spent by each evaluated version, at the configured delta.
PRIVACY_METRICS = ("epsilon",)
EVENTS_COLUMNS = [
    "client",
    "job",
    "version_start",
    "dispatch_time",
    "finish_time",
    "staleness",
    "local_steps",
    "bytes_up",
    "bytes_down",
    "dropped",
    "rejected",
    "train_loss",
]


class RunRecorder(Plain):
    def __init__(self, cfg: Config, delays: dict[str, float]) -> None:
        self.cfg = cfg
        self.delays = delays
        self.events: list[tuple[Any, ...]] = []
        self.versions: dict[int, dict[str, float]] = {}
        self.evaluated: dict[int, dict[str, float]] = {}  # version -> accuracy, loss, ...
        self.pending_evals: set[int] = set()
        self.bytes_up = 0
        self.bytes_down = 0
        self.updates = 0
        self.discarded = 0  # jobs the algorithm dropped while in flight (deadline, quorum)
        self.last_version = -1
        self.jobs_since_version = 0
        self.truncated = False
        self.spent: dict[int, dp.Spent] = {}  # version -> privacy spent when it was published

    def job(
        self,
        f: InFlight,
        finish: float,
        staleness: int,
        bytes_up: int,
        dropped: bool,
        train_loss: float | None = None,
        rejected: bool = False,
    ) -> None:
        """One ended job; ``rejected``: its update was not finite and never applied (it
        counts as dropped too)."""
        self.updates += not dropped
        self.jobs_since_version += 1
        self.events.append(
            (
                f.client,
                f.job_index,
                f.version,
                f.dispatch_time,
                finish,
                staleness,
                f.task.steps,
                bytes_up,
                f.bytes_down,
                int(dropped),
                int(rejected),
                math.nan if train_loss is None else train_loss,
            )
        )

    def version(self, v: int, sim_time: float, wall_time: float, privacy: Spending | None = None) -> None:
        """A new global version; ``privacy``: the algorithm's privacy spent by then, if it has DP."""
        if privacy is not None:
            self.spent[v] = privacy.now
        self.last_version = v
        self.jobs_since_version = 0
        self.versions[v] = {
            "sim_time": sim_time,
            "wall_time": wall_time,
            "updates": self.updates,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "events": len(self.events),
        }

    def evaluation(self, v: int, scores: dict[str, float]) -> None:
        self.evaluated[v] = dict(scores)
        self.pending_evals.discard(v)

    def settled_evaluations(self) -> list[dict[str, Any]]:
        """Evaluation rows in version order, up to the first one still pending: a
        consumer that reads them as they come (Tune's reports) sees a stable sequence."""
        cut = min(self.pending_evals, default=None)
        rows = []
        for v in sorted(self.evaluated):
            if cut is not None and v > cut:
                break
            rows.append({"version": v, **self.evaluated[v], **self.versions[v], **self._privacy_row(v)})
        return rows

    def _epsilon(self, spent: dp.Spent) -> float:
        cfg = dp.configured(self.cfg.algorithm.params)
        assert cfg is not None, "privacy spent is reported only under algorithm.privacy"
        return dp.epsilon(spent, cfg.noise_multiplier, cfg.delta, cfg.accountant)

    def _privacy_row(self, v: int) -> dict[str, float]:
        return {"epsilon": self._epsilon(self.spent[v])} if v in self.spent else {}

    def target_version(self) -> int | None:
        """The first version reaching the target accuracy (see ``_first``)."""
        target = self.cfg.stop.target_accuracy
        return self._first(lambda scores: scores["accuracy"] >= target) if target else None

    def diverged_version(self) -> int | None:
        """The first version whose global loss is not finite (see ``_first``)."""
        return self._first(lambda scores: not math.isfinite(scores["loss"]))

    def _first(self, hit: Callable[[dict[str, float]], bool]) -> int | None:
        """The first evaluated version that ``hit``s, once every earlier evaluation is in:
        evaluations finish in any order, and the answer must not depend on it."""
        hits = [v for v, scores in self.evaluated.items() if hit(scores)]
        if not hits:
            return None
        first = min(hits)
        return first if not any(p < first for p in self.pending_evals) else None

    def stop_reason(self, version: int, diverging: bool, privacy: Spending | None = None) -> str:
        """The stop rule that holds now, or "" (``diverging``: some loss was not finite;
        ``privacy``: the algorithm's privacy spent, checked before every event)."""
        stop = self.cfg.stop
        if stop.max_versions and version >= stop.max_versions:
            return "max_versions"
        if stop.max_bytes and self._bytes_at_last_version() >= stop.max_bytes:
            return "max_bytes"
        if stop.max_epsilon and privacy is not None and self._epsilon(privacy.next) > stop.max_epsilon:
            # Before the release that would exceed the budget: no model beyond it is published.
            return "max_epsilon"
        if stop.target_accuracy and self.target_version() is not None:
            return "target_accuracy"
        if diverging and self.diverged_version() is not None:
            return "diverged"
        if self.jobs_since_version > max(STALL_JOBS, 20 * self.cfg.clients.num):
            # E.g. a round deadline shorter than every client's job: without this guard a
            # run bounded only by max_versions would go on forever.
            return "stalled: many jobs ended without a new global version"
        return ""

    def _bytes_at_last_version(self) -> float:
        """Bytes moved when the latest version was published: ``stop.max_bytes`` ends a run
        after the version (the round) that crosses it, as FSL-SAGE's ``comm_threshold_mb``."""
        at = self.versions.get(self.last_version)
        return 0.0 if at is None else at["bytes_up"] + at["bytes_down"]

    def progress(self, now: float, in_flight: int) -> dict[str, Any]:
        return {
            "version": self.last_version,
            "sim_time": now,
            "updates": self.updates,
            "in_flight": in_flight,
        }

    def result(
        self,
        stop_reason: str,
        now: float,
        wall_seconds: float,
        setup_seconds: float,
        algo_stats: dict[str, float],
        executors_replaced: int,
        privacy: Spending | None = None,
    ) -> dict[str, Any]:
        # A run stopped by its target or by divergence ends at the version that decided it,
        # whatever was still in flight when the loop saw it.
        cuts = {"target_accuracy": self.target_version, "diverged": self.diverged_version}
        cut = cuts[stop_reason]() if stop_reason in cuts else None
        self.truncated = cut is not None
        last = cut if cut is not None else self.last_version
        events = self.events[: int(self.versions[last]["events"])] if cut is not None else self.events
        metrics = [
            {
                "version": v,
                "sim_time": info["sim_time"],
                "wall_time": info["wall_time"],
                "updates": int(info["updates"]),
                "bytes_up": int(info["bytes_up"]),
                "bytes_down": int(info["bytes_down"]),
                **self.evaluated[v],
                **self._privacy_row(v),
            }
            for v, info in sorted(self.versions.items())
            if v in self.evaluated and v <= last
        ]
        ev = pd.DataFrame(events, columns=EVENTS_COLUMNS)
        applied = ev[ev.dropped == 0]
        sim_time = self.versions[last]["sim_time"] if cut is not None else now
        busy = float((ev.finish_time - ev.dispatch_time).sum())
        summary = {
            "fedray_version": __version__,
            "algorithm": self.cfg.algorithm.name,
            "workload": self.cfg.workload.name,
            "clients": self.cfg.clients.num,
            "seed": self.cfg.seed,
            "clock": self.cfg.clock.mode,
            "stop_reason": stop_reason,
            "versions": last,
            "final_accuracy": metrics[-1]["accuracy"] if metrics else None,
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "best_accuracy": max((m["accuracy"] for m in metrics), default=None),
            **{f"final_{k}": metrics[-1][k] for k in LOCAL_METRICS if metrics and k in metrics[-1]},
            "sim_time": sim_time,
            "wall_time": wall_seconds,
            "setup_seconds": setup_seconds,
            "updates_applied": len(applied),
            "jobs_dropped": int(len(ev) - len(applied)) - self.discarded,
            "jobs_discarded": self.discarded,
            "jobs_rejected": int(ev.rejected.sum()),  # non-finite updates, among the dropped
            "mean_staleness": float(applied.staleness.mean()) if len(applied) else 0.0,
            "max_staleness": int(applied.staleness.max()) if len(applied) else 0,
            "bytes_up": int(ev.bytes_up.sum()),
            "bytes_down": int(ev.bytes_down.sum()),
            "client_busy_fraction": busy / (self.cfg.clients.num * sim_time) if sim_time > 0 else 0.0,
            "executors_replaced": executors_replaced,
            "delays": self.delays,
            "algorithm_stats": algo_stats,
            # the attacked clients and how many of their updates were applied, when any attack
            **self.cfg.clients.byzantine.summary(self.cfg.clients.num, self.cfg.seed, applied.client),
        }
        if privacy is not None:
            # What the whole run spent, even past a version that truncates the results.
            summary["epsilon"] = self._epsilon(privacy.now)
            summary["privacy"] = self._privacy_summary()
        if self.cfg.stop.target_accuracy:
            hit = self.target_version()
            summary["target_accuracy"] = self.cfg.stop.target_accuracy
            summary["time_to_target"] = None if hit is None else self.versions[hit]["sim_time"]
            summary["wall_time_to_target"] = None if hit is None else self.versions[hit]["wall_time"]
        return {"metrics": metrics, "events": events, "summary": summary}

    def _privacy_summary(self) -> dict[str, Any]:
        cfg = dp.configured(self.cfg.algorithm.params)
        assert cfg is not None
        return {
            "mode": cfg.mode,
            "delta": cfg.delta,
            "accountant": cfg.accountant,
            "noise_multiplier": cfg.noise_multiplier,
            "clip": cfg.clip,
            "neighbouring": "one client's data replaced (replace-one)",
            "max_epsilon": self.cfg.stop.max_epsilon or None,
        }

"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (arXiv 1602.05629).

Synchronous rounds with partial participation: sample ``clients_per_round`` idle
clients, wait until each has returned or dropped, then step the server optimizer
(``server_opt``, default ``x <- x - server_lr * Delta``) with ``Delta = sum_i p_i Delta_i``
over the clients that returned, in arrival order. ``p_i = n_i / sum n`` ("samples") with
``server_lr`` 1 is the paper's weighted model average. A **version** is one aggregated
round; a round that closes with no update makes none.

Synchronous FL under stragglers (time-models.md §5):

* ``deadline`` (FLSim's round timeout): at ``dispatch + deadline`` the round aggregates
  whatever arrived and ``discard`` drops the late clients' jobs.
* ``over_selection`` (FedScale's over-commitment, 1.3 there): sample
  ``ceil(over_selection * clients_per_round)`` clients as one quorum of
  ``clients_per_round``; the first that many arrivals are aggregated, the rest discarded.
  The engine, not the algorithm, knows who is fastest, and never computes the others.
* The server's own time (``server_cost``): the aggregate goes to the server as a server
  job (its aggregation time, plus fine-tuning if configured); the version appears, and the
  next round is dispatched, when that job ends, so a round costs slowest client + aggregation.

Uploads (and with ``codec.direction=both`` the broadcast) can be compressed: ``codec``
(algorithms/codecs.py; through algorithms/base.py, shared with FedBuff and FedAsync).

Byzantine robustness: ``aggregator`` (algorithms/robust.py) combines the round's deltas by
a robust rule (median, trimmed mean, Krum, ...) instead of the weighted mean; the server
optimizer steps on the result as on the mean. ``mean`` (the default) is the plain FedAvg
average, bit for bit. A round with fewer updates than the rule needs (a deadline or drops
cut it short) makes no version (``robust_skipped``). ALIE colluders' updates
(``attacks.ColludingUpdate``) are replaced by mean - z * std of the round's honest ones
before the rule sees them.

Differential privacy: ``privacy`` (algorithms/privacy.py). Central: the round's decoded
deltas are clipped, summed, noised once (keyed by the version) and divided by the quorum,
in place of the weighted mean; local: each client noises its own upload. The state's
``ledger`` keeps what the accountant needs (rounds released, or uploads per client).

Partial sums (``executors.partial_sums``): with the plain weighted mean (no robust rule,
privacy, codec or deadline) executors may return one sum per group of a round's jobs
instead of every update; ``_close`` combines them (algorithms/partial_sums.py).

FedAvgM, FedAdagrad, FedAdam and FedYogi are presets of this class (algorithms/fedavg_presets.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

import algorithms.privacy as dp
import algorithms.robust as robust
from algorithms.aggregation import check_choice, release
from algorithms.attacks import ColludingUpdate, collude
from algorithms.base import Algorithm, Job, ServerJob, Task, Update, sample_clients
from algorithms.codecs import CodecConfig
from algorithms.idle import IdleClients
from algorithms.partial_sums import combined_mean
from algorithms.privacy import Ledger, PrivacyConfig
from algorithms.robust import AggregatorConfig
from algorithms.server_opt import ServerOptParams, ServerOptState

WEIGHTINGS = ("samples", "uniform")


@dataclass(frozen=True)
class FedAvgParams(ServerOptParams):
    clients_per_round: int = 10
    server_lr: float = 1.0  # eta_g; 1 is plain model averaging
    weighting: str = "samples"  # samples: n_i / sum n over the returned clients; uniform: 1/m
    deadline: float = 0.0  # virtual seconds from dispatch until the round closes; 0 = none
    over_selection: float = 1.0  # clients sampled per clients_per_round (FedScale: 1.3)
    codec: CodecConfig = field(default_factory=CodecConfig)  # update compression (algorithms/codecs.py)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)  # robust rule (robust.py)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # differential privacy (privacy.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        dp.check_params(self.privacy, self.aggregator.name, self.weighting)
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 (got {self.clients_per_round})")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0 (got {self.server_lr})")
        check_choice("weighting", self.weighting, WEIGHTINGS)
        if not self.deadline >= 0:
            raise ValueError(f"deadline must be >= 0, 0 for none (got {self.deadline})")
        if not self.over_selection >= 1:
            raise ValueError(f"over_selection must be >= 1 (got {self.over_selection})")

    def sampled_per_round(self) -> int:
        # round() first: 1.1 * 10 is 11.000000000000002 in floats and must not become 12
        return math.ceil(round(self.over_selection * self.clients_per_round, 9))


@dataclass(frozen=True, eq=False)
class FedAvgState:
    model: np.ndarray
    version: int = 0
    pending: tuple[int, ...] = ()  # clients of the open round still training; () = no round
    received: tuple[Update, ...] = ()  # the round's updates, in arrival order
    dropped: int = 0  # jobs over the whole run that ended without an update
    quorum: int = 0  # arrivals that close the open round: clients_per_round, or all sampled if fewer
    round_start: float = 0.0  # dispatch time of the open round: its deadline counts from it
    aggregating: ServerJob | None = None  # the round's aggregate, on the server until its job ends
    outbox: tuple[ServerJob, ...] = ()  # server work not yet handed to the engine
    unwanted: tuple[int, ...] = ()  # cut-off clients whose jobs ``discard`` hands the engine
    discarded: int = 0  # jobs cut off over the whole run (deadline passed, quorum full)
    robust_skipped: int = 0  # rounds too small for the robust aggregator: no version
    opt: ServerOptState = field(default_factory=ServerOptState)
    ledger: Ledger = field(default_factory=Ledger)  # the privacy accountant's inputs


class FedAvg(Algorithm[FedAvgState]):
    description: ClassVar[str] = (
        "FedAvg (McMahan et al. 2017): synchronous rounds, sample-weighted; deadline and over-selection"
    )
    name: ClassVar[str] = "fedavg"
    Params: ClassVar[type] = FedAvgParams
    models_server_time: ClassVar[bool] = True
    # Its aggregation replaces ALIE colluders' updates (attacks.ColludingUpdate).
    colludes: ClassVar[bool] = True
    params: FedAvgParams

    def init(self, model: np.ndarray) -> FedAvgState:
        self.model_size = int(np.size(model))  # decoding a codec's payload needs it
        ledger = dp.fresh(self.params.privacy, self.num_clients)
        return FedAvgState(model=np.array(model, dtype=np.float32), ledger=ledger)

    def jobs(
        self, state: FedAvgState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[FedAvgState, list[Job]]:
        if state.pending or state.aggregating is not None:
            return state, []  # synchronous: the next round starts only when this one is done
        chosen = [int(c) for c in sample_clients(rng, idle, self.params.sampled_per_round())]
        if not chosen:
            return state, []
        quorum = min(self.params.clients_per_round, len(chosen))
        # Only a real surplus is a quorum for the engine; otherwise every job is wanted.
        job_quorum = quorum if len(chosen) > quorum else 0
        tasks = self.round_tasks(chosen, rng)
        jobs = [Job(c, t, quorum=job_quorum) for c, t in zip(chosen, tasks, strict=True)]
        jobs = self.with_download_cost(jobs, state.model)
        ledger = dp.dispatched(self.params.privacy, state.ledger, rng, len(idle), len(chosen))
        state = replace(state, pending=tuple(sorted(chosen)), quorum=quorum, round_start=now)
        return replace(state, ledger=ledger), jobs

    def round_tasks(self, clients: list[int], rng: np.random.Generator) -> list[Task]:
        """The tasks of one round's clients (in draw order); ``rng`` is the round's stream,
        already used for sampling, so that subclasses can vary the work per client."""
        return [self.task_for(c) for c in clients]

    def on_update(self, state: FedAvgState, update: Update, now: float) -> FedAvgState:
        state = replace(state, ledger=dp.uploaded(self.params.privacy, state.ledger, update.client))
        if update.client in state.unwanted:  # arrived in the instant its round was cut off
            return replace(state, unwanted=tuple(c for c in state.unwanted if c != update.client))
        pending = release(state.pending, update.client)
        return self._close_if_done(replace(state, pending=pending, received=(*state.received, update)), now)

    def on_drop(self, state: FedAvgState, client: int, now: float) -> FedAvgState:
        if client in state.unwanted:
            return replace(state, unwanted=tuple(c for c in state.unwanted if c != client))
        pending = release(state.pending, client)
        return self._close_if_done(replace(state, pending=pending, dropped=state.dropped + 1), now)

    def discard(self, state: FedAvgState) -> tuple[FedAvgState, list[int]]:
        if not state.unwanted:
            return state, []
        return replace(state, unwanted=()), list(state.unwanted)

    def next_timer(self, state: FedAvgState) -> float | None:
        if state.pending and self.params.deadline > 0:
            return state.round_start + self.params.deadline
        return None

    def on_timer(self, state: FedAvgState, now: float) -> FedAvgState:
        if state.pending and self.params.deadline > 0 and now >= state.round_start + self.params.deadline:
            return self._close(state, now)
        return state

    def _close_if_done(self, state: FedAvgState, now: float) -> FedAvgState:
        if state.pending and len(state.received) < state.quorum:
            return state  # still waiting
        return self._close(state, now)

    def _close(self, state: FedAvgState, now: float) -> FedAvgState:
        """End the round: cut off whoever is still training, then aggregate; the new
        version appears at once or, when the server's work takes time, when it ends."""
        state = replace(
            state,
            pending=(),
            unwanted=(*state.unwanted, *state.pending),
            discarded=state.discarded + len(state.pending),
            ledger=dp.round_closed(self.params.privacy, state.ledger, bool(state.received)),
        )
        if not state.received:  # everyone dropped or was late: no version
            return state
        updates, p = state.received, self.params
        try:
            robust.check_feasible(p.aggregator, len(updates))
        except ValueError:
            return replace(state, received=(), robust_skipped=state.robust_skipped + 1)
        weights = [self.summand_weight(u.num_samples) for u in updates]
        deltas = round_deltas(updates)
        if p.privacy.mode == "central":  # DP-FedAvg's noised clipped sum in place of the mean
            direction = dp.noised_sum(p.privacy, state.ledger, deltas, state.quorum, state.version + 1)
        elif any(u.partial is not None for u in updates):  # summed on the executors
            partials = [u.partial for u in updates]
            direction = combined_mean(partials, deltas, weights, [u.client for u in updates])
        else:
            direction = robust.aggregate(p.aggregator, deltas, weights)
        model, opt = p.server_update(state.model, direction, state.opt, p.server_lr)
        state = replace(state, opt=opt, received=())
        # The simulated server adds every dense update, summed on executors or not.
        job = self.aggregation_job(state.version + 1, model, len(updates), state.model.nbytes)
        if job is None:
            return replace(state, model=model, version=state.version + 1)
        return replace(state, aggregating=job, outbox=(job,))

    @classmethod
    def partial_sums_refusal(cls, params: FedAvgParams) -> str:
        if (cls.on_update, cls.decode, cls.encode) != (FedAvg.on_update, Algorithm.decode, Algorithm.encode):
            return f"{cls.name} handles each update on its own"
        for key, value, plain in (
            ("aggregator", params.aggregator.name, "mean"),
            ("privacy", params.privacy.mode, "none"),
            ("codec", params.codec.name, "none"),
        ):
            if value != plain:
                return f"algorithm.{key}={value} needs each update, not their sum (set it to {plain})"
        if params.deadline > 0:
            return "algorithm.deadline cuts off jobs an executor may already have summed (set it to 0)"
        return ""

    def summand_weight(self, num_samples: int) -> float:
        return float(num_samples) if self.params.weighting == "samples" else 1.0

    def server_jobs(self, state: FedAvgState) -> tuple[FedAvgState, list[ServerJob]]:
        return (replace(state, outbox=()), list(state.outbox)) if state.outbox else (state, [])

    def on_server_job(self, state: FedAvgState, job: ServerJob, model: np.ndarray, now: float) -> FedAvgState:
        return replace(state, model=model, version=state.version + 1, aggregating=None)

    def privacy_spent(self, state: FedAvgState) -> dp.Spending | None:
        return dp.round_spending(self.params.privacy, state.ledger, (*state.pending, *state.unwanted))

    def stats(self, state: FedAvgState) -> dict[str, float]:
        out = {"dropped": float(state.dropped)}
        if self.params.deadline > 0 or self.params.over_selection > 1:
            out["discarded"] = float(state.discarded)  # cut off by the deadline or a full quorum
        if self.params.aggregator.name != "mean":
            out["robust_skipped"] = float(state.robust_skipped)
        return out


def round_deltas(updates: tuple[Update, ...]) -> list[np.ndarray]:
    """The deltas of one aggregate, ALIE colluders' replaced (attacks.collude)."""
    deltas = [u.delta for u in updates]
    colluders = [i for i, u in enumerate(updates) if isinstance(u, ColludingUpdate)]
    if not colluders:
        return deltas
    z = next(u.alie_z for u in updates if isinstance(u, ColludingUpdate))
    return collude(deltas, set(colluders), z)

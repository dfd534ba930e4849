"""HeteroFL: Diao, Ding, Tarokh, "HeteroFL: Computation and Communication Efficient Federated
Learning for Heterogeneous Clients", ICLR 2021 (arXiv 2010.01264).

Synchronous rounds as in FedAvg. Client ``i`` trains a sub-model of width rate ``r_i``: the
first ``ceil(r_i * d)`` channels or units of every hidden layer of width ``d``, input and
classifier dimensions whole (workloads/models.py ``WidthScalable``; index math and
aggregation in algorithms/heterofl_rules.py). The rate comes from

* ``rate_mode: tier``: the device class. The k-th fastest speed tier (the k-th smallest
  ``clients.speed`` factor, e.g. ``family: tiers``) trains at ``rates[k]``. The paper's server
  knows its clients' capabilities, so the engine hands HeteroFL each client's speed factor
  once (``bind``), never a finish time, an availability or a per-job draw.
* ``rate_mode: random``: drawn for every sampled client in every round with chances
  ``proportions``, from the round's keyed stream (the reference's ``dynamic`` mode).

The client trains its sub-model with the configured local SGD and uploads the change of its
entries only. The server averages each entry over the clients whose sub-model covers it (by
examples as FedAvg's ``samples``, or ``uniform``: the reference's plain count) and steps
``x <- x - server_lr * D``; entries nobody covered keep their value. Rate 1 for every client
is FedAvg bit for bit (tested).

Costs, measured on the model by ``bind``, not typed in: bytes down = 4 x the sub-model's
entries; bytes up = the real payload (those entries' float32 changes, plus one byte per
class with ``mask_classifier``); compute fraction = the sub-model's FLOPs over the full
model's (``forward_flops``: multiply-adds of convolutions and linear layers in one forward
pass), multiplied into the job's compute time by the delay model.

``scaler``: sub-models divide hidden outputs by their rate while training (the paper's
Scaler). ``mask_classifier`` (the reference's ``label_split``): a client zeroes the logits of
the classes it does not hold, so their output rows get no gradient, and the server leaves
those rows out of its coverage. Deviations: no static BatchNorm (no fedray model has
BatchNorm; ResNet-18's GroupNorm vectors are sliced like any channel vector, its widths
rounded up to even for its 2 groups); the server averages changes, not parameters (the same
at ``server_lr`` 1); the reference's ``fix`` mode (rates by client id) is ``tier`` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

import algorithms.heterofl_rules as rules
from algorithms.aggregation import check_choice, release
from algorithms.base import Algorithm, ClientResult, Job, JobCost, Payload, Task, Update, sample_clients
from algorithms.idle import IdleClients
from algorithms.task import extend_task
from workloads.base import ParamLayout

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData

RATE_MODES = ("tier", "random")
WEIGHTINGS = ("samples", "uniform")


@dataclass(frozen=True)
class HeteroFLParams:
    clients_per_round: int = 10
    server_lr: float = 1.0  # 1: the reference's average of the covering clients' models
    rate_mode: str = "tier"  # tier: rates[k] for the k-th fastest speed tier; random: drawn per round
    rates: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)  # the paper's levels a-e
    proportions: tuple[float, ...] = ()  # rate_mode random: each rate's chance; () = equal
    weighting: str = "samples"  # samples: by shard size, as FedAvg; uniform: the reference's count
    scaler: bool = True  # divide hidden outputs by the rate while training (the paper's Scaler)
    mask_classifier: bool = False  # train and aggregate only the output rows of the client's labels

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 (got {self.clients_per_round})")
        if not (self.server_lr > 0 and math.isfinite(self.server_lr)):
            raise ValueError(f"server_lr must be a finite number > 0 (got {self.server_lr})")
        check_choice("rate_mode", self.rate_mode, RATE_MODES)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        rules.check_rates(self.rates, self.proportions, self.rate_mode == "random")


@dataclass(frozen=True)
class WidthTask(Task):
    """A task for a sub-model: ``rate`` is its width rate (1: the whole model)."""

    rate: float = 1.0


@dataclass(frozen=True, eq=False)
class SubModelUpload:
    """What ``client_update`` hands ``encode`` (on the executor, never stored)."""

    index: np.ndarray | None  # the sub-model's entries; None: the whole model
    labels: np.ndarray | None  # mask_classifier: which classes the client holds


@dataclass(frozen=True, eq=False)
class HeteroFLState:
    model: np.ndarray
    version: int = 0
    pending: tuple[int, ...] = ()  # clients of the open round still training; () = no round
    assigned: tuple[tuple[int, float], ...] = ()  # the open round's (client, rate)
    received: tuple[Update, ...] = ()  # the round's updates, in arrival order
    dropped: int = 0  # jobs over the whole run that ended without an update
    rate_sum: float = 0.0  # sum of the rates of the updates aggregated so far (stats)
    updates: int = 0  # updates aggregated so far


class HeteroFL(Algorithm[HeteroFLState]):
    description: ClassVar[str] = (
        "HeteroFL (Diao et al. 2021): width-scaled sub-models by speed tier or drawn per round"
    )
    name: ClassVar[str] = "heterofl"
    Params: ClassVar[type] = HeteroFLParams
    params: HeteroFLParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shapes: tuple[tuple[int, ...], ...] = ()  # the model's tensor shapes (bind)
        self.subs: dict[float, rules.SubModel] = {}  # per rate (bind)
        self.client_rates: np.ndarray | None = None  # rate_mode tier: each client's (bind)
        self.modules: dict[float, tuple[Any, np.ndarray]] = {}  # executor: narrow module, index

    # ---- what the engine tells the server (engine/core/loop.py) --------------------------
    def bind(
        self, model: Callable[[], torch.nn.Module], input_shape: tuple[int, ...], speed: np.ndarray
    ) -> None:
        """Measure every rate's sub-model on the workload's model (``model()`` builds it) and
        map the clients' speed factors to rates. The engine calls it before the run starts."""
        import torch

        from workloads.models import forward_flops, narrow

        with torch.random.fork_rng(devices=[]):  # its initial draws do not matter: keep them off the stream
            full = model()
        total = forward_flops(full, input_shape)
        self.shapes = ParamLayout.of(full).shapes
        for r in self.params.rates:
            sub = narrow(full, r, self.params.scaler)
            self.subs[r] = rules.SubModel(_index(full, sub), forward_flops(sub, input_shape) / total)
        if self.params.rate_mode == "tier":
            self.client_rates = rules.tier_rates(speed, self.params.rates)

    def _sub(self, rate: float) -> rules.SubModel:
        if not self.subs:
            raise RuntimeError("heterofl measures its sub-models on the model: the engine calls bind() first")
        return self.subs[rate]

    # ---- server side ------------------------------------------------------------------
    def init(self, model: np.ndarray) -> HeteroFLState:
        self.model_size = int(np.size(model))
        return HeteroFLState(model=np.array(model, dtype=np.float32))

    def jobs(
        self, state: HeteroFLState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[HeteroFLState, list[Job]]:
        if state.pending:
            return state, []  # synchronous: the next round starts when this one is done
        chosen = [int(c) for c in sample_clients(rng, idle, self.params.clients_per_round)]
        if not chosen:
            return state, []
        p = self.params
        if p.rate_mode == "random":
            rates = [float(r) for r in rules.draw_rates(rng, len(chosen), p.rates, p.proportions)]
        elif self.client_rates is None:
            raise RuntimeError("heterofl maps speed tiers to rates: the engine calls bind() first")
        else:
            rates = [float(self.client_rates[c]) for c in chosen]
        jobs = []
        for c, r in zip(chosen, rates, strict=True):
            sub, base = self._sub(r), self.task_for(c)
            task = extend_task(base, WidthTask, rate=r)
            cost = JobCost(bytes_down=4 * sub.index.size, compute_fraction=sub.flops_fraction)
            jobs.append(Job(c, task, cost=cost))
        return replace(
            state, pending=tuple(sorted(chosen)), assigned=tuple(zip(chosen, rates, strict=True))
        ), jobs

    def decode(self, payload: Payload, client: int) -> np.ndarray:
        """The upload's entries in place in a full-size delta (heterofl_rules.py ``expand``)."""
        return rules.expand(payload["delta"], list(self.subs.values()), self.model_size or 0)

    def on_update(self, state: HeteroFLState, update: Update, now: float) -> HeteroFLState:
        pending = release(state.pending, update.client)
        state = replace(state, pending=pending, received=(*state.received, update))
        return self._close(state) if not state.pending else state

    def on_drop(self, state: HeteroFLState, client: int, now: float) -> HeteroFLState:
        state = replace(state, pending=release(state.pending, client), dropped=state.dropped + 1)
        return self._close(state) if not state.pending else state

    def _close(self, state: HeteroFLState) -> HeteroFLState:
        rates = dict(state.assigned)
        state = replace(state, assigned=())
        if not state.received:  # everyone dropped: no version
            return state
        covers = [  # the entries each client trained
            rules.coverage(self._sub(rates[u.client]).index, u.payload, self.shapes) for u in state.received
        ]
        samples = self.params.weighting == "samples"
        weights = [float(u.num_samples) if samples else 1.0 for u in state.received]
        model = rules.aggregate(
            state.model, [u.delta for u in state.received], covers, weights, self.params.server_lr
        )
        return replace(
            state,
            model=model,
            version=state.version + 1,
            received=(),
            rate_sum=state.rate_sum + sum(rates[u.client] for u in state.received),
            updates=state.updates + len(state.received),
        )

    def stats(self, state: HeteroFLState) -> dict[str, float]:
        out = {"dropped": float(state.dropped)}
        if state.updates:
            out["mean_rate"] = state.rate_sum / state.updates
        return out

    # ---- client side (on an executor) -------------------------------------------------
    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Task,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        import torch

        from engine.worker.training import local_sgd
        from workloads.models import narrow

        if not isinstance(task, WidthTask):
            raise TypeError(f"{self.name} needs its sub-model's rate with the job (a WidthTask)")
        labels = None
        if self.params.mask_classifier:
            _, weight, _ = rules.classifier(ParamLayout.of(model).shapes)
            held = torch.zeros(weight[0], dtype=torch.bool, device=data.y.device)
            held[data.y] = True
            labels = held.cpu().numpy()
            # The reference's masked_fill: absent classes' logits are 0, so their rows get no gradient.
            loss_fn = data.loss_fn

            def masked(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return loss_fn(logits.masked_fill(~held, 0), y)

            data = replace(data, loss_fn=masked)
        if task.rate == 1:
            loss = local_sgd(model, data, task, generator)
            return ClientResult(SubModelUpload(None, labels), {"train_loss": loss})
        if task.rate not in self.modules:
            sub = narrow(model, task.rate, self.params.scaler)
            self.modules[task.rate] = (sub, _index(model, sub))
        sub, index = self.modules[task.rate]
        layout, sub_layout = ParamLayout.of(model), ParamLayout.of(sub)
        start = layout.flatten(model)
        sub_layout.load(sub, start[index])
        loss = local_sgd(sub, data, task, generator)
        end = start.copy()
        end[index] = sub_layout.flatten(sub)
        layout.load(model, end)  # the model's other entries are untouched: their delta is 0
        return ClientResult(SubModelUpload(index, labels), {"train_loss": loss})

    def encode(self, delta: np.ndarray, client_state: Any, rng: np.random.Generator) -> tuple[Payload, Any]:
        if not isinstance(client_state, SubModelUpload):
            raise TypeError(f"{self.name} encodes what its client_update returned")
        values = delta if client_state.index is None else delta[client_state.index]
        payload: dict[str, np.ndarray] = {"delta": values}
        if client_state.labels is not None:
            payload["labels"] = client_state.labels
        return payload, None


def _index(full: Any, sub: Any) -> np.ndarray:
    """Flat indices of the sub-model ``sub``'s entries in ``full``'s vector."""
    a, b = ParamLayout.of(full), ParamLayout.of(sub)
    if a.names != b.names:
        raise ValueError(f"the sub-model's tensors are not the model's: {b.names} vs {a.names}")
    return rules.leading_block_indices(a.shapes, b.shapes)

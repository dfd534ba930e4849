"""GWPF: Yang et al., "Gradient-Wise Parameter Freezing", Computer Networks 255:110886,
2024; reference code Dora233/GWPF@60651c3 (specs: seed-methods.md §3, wave2-notes.md §2).
The per-scalar rules and the encodings are algorithms/gwpf_rules.py.

Synchronous rounds (a sync of the reference): ``clients_per_round`` clients train
``training.local_steps`` steps (5 in the reference), then the server merges. It keeps,
per scalar, EMAs (``alpha``) of the change of the averaged value between syncs and of its
magnitude; an active entry whose ratio ``|EMA(Delta)| / EMA(|Delta|)`` falls below ``T_s``
freezes for good, and ``T_s`` halves at every sync ending with more than ``tighten_above``
of all entries frozen. Frozen entries are not merged: each client trains its own values of
them, never rolled back (its client state). During a job a client keeps EMAs of its
per-step changes of the frozen entries and votes ``r_f >= T_s`` on each; an entry with any
vote gets ``thaw_cnt += 1``, else ``thaw_cnt //= 2``, and is merged while ``thaw_cnt > 0``.

Bytes are the real payloads: up, the active and thawed values plus one vote per frozen
entry (``vote_bits``: 1, the paper's binary signal, or 32, the reference's int32); down (in
the task), only what changed for that client since its last applied job: the values
written since, which of its frozen entries were merged, the newly frozen entries, this
round's thaw set and T_s. A client's first job receives every value.

Deviations from the reference: a round's votes thaw entries in the *next* round (a client
uploads once per round; the reference all-reduces votes before values in one sync); a
client's EMAs span all steps of its job (the reference's span the non-sync steps); clients
may be sampled; every entry of the flat model is treated alike, buffers too (the reference
never synchronises buffers; the built-in models have none).

``reference_ema_on_values`` (off by default) reproduces a bug of the reference: an active
entry's change and its last value alias one tensor, so the server's EMAs are fed the
averaged *values* instead of their changes (wave2-notes.md §2).

A client's state is one uint8 array (``gwpf_rules.client_record``: its values, then its
frozen set), so that ``server.client_state=disk`` can hold it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

import algorithms.gwpf_rules as rules
from algorithms.aggregation import check_choice, release
from algorithms.base import (
    Algorithm,
    ClientResult,
    Job,
    JobCost,
    Payload,
    Task,
    Update,
    payload_bytes,
    sample_clients,
)
from algorithms.fedavg import WEIGHTINGS
from algorithms.idle import IdleClients
from algorithms.task import extend_task

if TYPE_CHECKING:
    import torch

    from engine.worker.training import ClientData


@dataclass(frozen=True)
class GwpfParams:
    clients_per_round: int = 10
    alpha: float = 0.99  # EMA decay (the reference's ema_alpha)
    stable_threshold: float = 0.5  # T_s at the start
    tighten_above: float = 0.8  # T_s halves at every round ending with more than this share frozen
    vote_bits: int = 1  # 1: the paper's binary vote; 32: the reference's int32
    weighting: str = "uniform"  # uniform: the reference's mean over workers; samples: n_i / sum n
    reference_ema_on_values: bool = False  # compat: the reference's aliasing bug (see above)

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 (got {self.clients_per_round})")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1) (got {self.alpha})")
        if not self.stable_threshold >= 0:
            raise ValueError(f"stable_threshold must be >= 0 (got {self.stable_threshold})")
        if not 0 <= self.tighten_above <= 1:
            raise ValueError(f"tighten_above must be in [0, 1] (got {self.tighten_above})")
        if self.vote_bits not in rules.VOTE_BITS:
            raise ValueError(f"vote_bits must be 1 or 32 (got {self.vote_bits!r})")
        check_choice("weighting", self.weighting, WEIGHTINGS)


@dataclass(frozen=True, eq=False)
class GwpfState:
    model: np.ndarray  # float32; a frozen entry holds its last merged value
    ema: np.ndarray  # float32: EMA of the change of each active entry between syncs
    abs_ema: np.ndarray  # float32: EMA of its absolute value
    frozen_at: np.ndarray  # int32: the version whose sync froze the entry; -1 while active
    thaw_count: np.ndarray  # int32: thaw_cnt of each frozen entry
    written_at: np.ndarray  # int32: the version whose sync last wrote the entry (0: the initial model)
    synced: np.ndarray  # int32 per client: the version its last applied job started from; -1 none
    threshold: float  # T_s
    version: int = 0
    pending: tuple[int, ...] = ()  # clients of the open round still training; () = no round
    received: tuple[Update, ...] = ()  # the round's updates, in arrival order
    dropped: int = 0  # jobs over the whole run that ended without an update


@dataclass(frozen=True)
class GwpfTask(Task):
    """A task carrying the server's down payload (``gwpf_rules.down_payload``); not part of
    the task's identity, only of what travels."""

    down: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class GwpfUpload:
    """What ``client_update`` hands ``encode`` on the executor (never stored)."""

    received: np.ndarray  # the global model the engine loaded: the job's delta is taken against it
    end: np.ndarray  # the client's values after training
    sync: np.ndarray  # bool: active and thawed entries, uploaded
    votes: np.ndarray  # bool, one per frozen entry
    frozen: np.ndarray  # bool


class GWPF(Algorithm[GwpfState]):
    description: ClassVar[str] = (
        "GWPF (Yang et al. 2024): synchronous rounds; oscillating scalars freeze, client votes thaw them"
    )
    name: ClassVar[str] = "gwpf"
    Params: ClassVar[type] = GwpfParams
    params: GwpfParams

    # ---- server side ------------------------------------------------------------------
    def init(self, model: np.ndarray) -> GwpfState:
        d = int(np.size(model))
        self.model_size = d
        zeros = np.zeros(d, dtype=np.float32)
        return GwpfState(
            model=np.array(model, dtype=np.float32),
            ema=zeros,
            abs_ema=zeros,
            frozen_at=np.full(d, -1, dtype=np.int32),
            thaw_count=np.zeros(d, dtype=np.int32),
            written_at=np.zeros(d, dtype=np.int32),
            synced=np.full(self.num_clients, -1, dtype=np.int32),
            threshold=float(self.params.stable_threshold),
        )

    def jobs(
        self, state: GwpfState, now: float, idle: IdleClients, rng: np.random.Generator
    ) -> tuple[GwpfState, list[Job]]:
        if state.pending:
            return state, []  # synchronous: the next round starts when this one is done
        chosen = [int(c) for c in sample_clients(rng, idle, self.params.clients_per_round)]
        if not chosen:
            return state, []
        thawed = (state.frozen_at >= 0) & (state.thaw_count > 0)
        jobs = []
        for c in chosen:
            down = rules.down_payload(
                state.model, state.written_at, state.frozen_at, thawed, int(state.synced[c]), state.threshold
            )
            plain = self.task_for(c)
            task = extend_task(plain, GwpfTask, down=down)
            jobs.append(Job(c, task, cost=JobCost(bytes_down=payload_bytes(down))))
        return replace(state, pending=tuple(sorted(chosen))), jobs

    def on_update(self, state: GwpfState, update: Update, now: float) -> GwpfState:
        synced = state.synced.copy()  # its client state now holds what this job received
        synced[update.client] = update.version_start
        state = replace(
            state,
            pending=release(state.pending, update.client),
            received=(*state.received, update),
            synced=synced,
        )
        return self._close(state) if not state.pending else state

    def on_drop(self, state: GwpfState, client: int, now: float) -> GwpfState:
        state = replace(state, pending=release(state.pending, client), dropped=state.dropped + 1)
        return self._close(state) if not state.pending else state

    def _close(self, state: GwpfState) -> GwpfState:
        """The sync: merge, tally the votes, update the EMAs, freeze, maybe halve T_s."""
        if not state.received:  # everyone dropped: no version
            return state
        p, v, updates = self.params, state.version, state.received
        frozen = state.frozen_at >= 0
        sync = ~frozen | (frozen & (state.thaw_count > 0))
        for u in updates:
            if u.delta.size != int(sync.sum()):
                raise ValueError(f"client {u.client} sent {u.delta.size} values for {sync.sum()} entries")
        weights = [float(u.num_samples) if p.weighting == "samples" else 1.0 for u in updates]
        model = state.model.copy()
        model[sync] = rules.merge([u.delta for u in updates], weights)
        # Votes of this round decide the next round's thaw set (see the module docstring).
        n_frozen = int(frozen.sum())
        vote_sum = np.zeros(n_frozen, dtype=np.int64)
        for u in updates:
            vote_sum += rules.decode_votes(u.payload["votes"], n_frozen, p.vote_bits)
        thaw_count = state.thaw_count.copy()
        thaw_count[frozen] = rules.tally(thaw_count[frozen], vote_sum)
        # Active entries (thawed ones excluded, as in the reference) feed the server's EMAs.
        active = ~frozen
        new = model[active].astype(np.float64)
        change = new if p.reference_ema_on_values else new - state.model[active]
        ema, abs_ema = state.ema.copy(), state.abs_ema.copy()
        ema[active], abs_ema[active] = rules.ema_update(ema[active], abs_ema[active], change, p.alpha)
        newly = np.zeros_like(frozen)
        newly[active] = rules.freezes(rules.stability_ratio(ema[active], abs_ema[active]), state.threshold)
        frozen_at = np.where(newly, v + 1, state.frozen_at).astype(np.int32)
        share = float(np.mean(frozen_at >= 0)) if frozen_at.size else 0.0
        return replace(
            state,
            model=model,
            version=v + 1,
            received=(),
            ema=ema,
            abs_ema=abs_ema,
            frozen_at=frozen_at,
            thaw_count=thaw_count,
            written_at=np.where(sync, v + 1, state.written_at).astype(np.int32),
            threshold=rules.next_threshold(state.threshold, share, p.tighten_above),
        )

    def stats(self, state: GwpfState) -> dict[str, float]:
        frozen = state.frozen_at >= 0
        return {
            "dropped": float(state.dropped),
            "frozen_fraction": float(np.mean(frozen)) if frozen.size else 0.0,
            "thawed": float(np.sum(frozen & (state.thaw_count > 0))),  # merged in the next round
            "stable_threshold": state.threshold,
        }

    # ---- client side (on an executor) ---------------------------------------------------
    def client_update(
        self,
        model: torch.nn.Module,
        data: ClientData,
        task: Task,
        client_state: Any,
        generator: torch.Generator,
    ) -> ClientResult:
        from workloads.base import ParamLayout

        if not isinstance(task, GwpfTask):
            raise TypeError(f"{self.name} needs the server's down payload with the job (a GwpfTask)")
        layout = ParamLayout.of(model)
        received = layout.flatten(model)
        d = received.size
        held, known = (None, None) if client_state is None else rules.read_client_record(client_state, d)
        start, frozen, thawed, threshold = rules.client_view(task.down, held, known, d)
        layout.load(model, start)
        loss, ema, abs_ema = rules.tracked_sgd(
            model, data, task, generator, layout, frozen, self.params.alpha
        )
        votes = rules.votes(rules.stability_ratio(ema, abs_ema), threshold)
        up = GwpfUpload(received, layout.flatten(model), ~frozen | thawed, votes, frozen)
        return ClientResult(client_state=up, metrics={"train_loss": loss})

    def encode(self, delta: np.ndarray, client_state: Any, rng: np.random.Generator) -> tuple[Payload, Any]:
        if not isinstance(client_state, GwpfUpload):
            raise TypeError(f"{self.name} encodes what its client_update returned (got {type(client_state)})")
        up = client_state
        end = up.end
        if not np.array_equal(delta, np.subtract(up.received, up.end, dtype=np.float32), equal_nan=True):
            # An executor-side attack altered the delta: upload the values it stands for.
            end = (up.received.astype(np.float64) - delta).astype(np.float32)
        payload = {"values": end[up.sync], "votes": rules.encode_votes(up.votes, self.params.vote_bits)}
        return payload, rules.client_record(up.end, up.frozen)

    def decode(self, payload: Payload, client: int) -> np.ndarray:
        """The client's values of the round's synchronised entries (what GWPF merges)."""
        return payload["values"]

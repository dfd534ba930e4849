"""GWPF (algorithms/gwpf.py, gwpf_rules.py) on hand-built sequences of updates.

The server is driven with hand-made uploads (values and votes); the client side runs on a
two-entry model ``w`` with loss ``0.5 * ||w - a||^2``: full-batch steps at rate 0.5 give
``w <- (w + a) / 2``, so with dyadic numbers every value below is exact in float32."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

import algorithms.gwpf_rules as rules
from algorithms import ALGORITHMS
from algorithms.base import Job, LocalTraining, Update, payload_bytes
from algorithms.gwpf import GWPF, GwpfParams, GwpfState, GwpfTask, GwpfUpload
from engine.core import serial
from engine.worker.training import ClientData
from workloads.base import ParamLayout

TRAINING = LocalTraining(local_steps=2, batch_size=0, lr=0.5)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def make(num_clients: int = 2, **params: Any) -> tuple[GWPF, GwpfState]:
    size = params.pop("size", 2)
    alg = GWPF(GwpfParams(**params), TRAINING, np.ones(num_clients, dtype=np.int64))
    return alg, alg.init(np.zeros(size, dtype=np.float32))


def sync(
    alg: GWPF,
    state: GwpfState,
    values: Mapping[int, Sequence[float]],
    votes: Mapping[int, Sequence[int]] | None = None,
) -> tuple[GwpfState, list[Any]]:
    """One round: the clients of ``values`` upload those values (of the round's active and
    thawed entries) and their ``votes`` on its frozen entries (none by default)."""
    state, jobs = alg.jobs(state, 0.0, np.array(sorted(values)), np.random.default_rng(0))
    assert sorted(j.client for j in jobs) == sorted(values)
    n_frozen = int((state.frozen_at >= 0).sum())
    for c in sorted(values):
        v = f32(*values[c])
        cast = np.array((votes or {}).get(c, [0] * n_frozen), dtype=bool)
        payload = {"values": v, "votes": rules.encode_votes(cast, alg.params.vote_bits)}
        state = alg.on_update(state, Update(c, v, 1, state.version, state.model, payload), 0.0)
    return state, jobs


def down(job: Job) -> dict[str, np.ndarray]:
    assert isinstance(job.task, GwpfTask)
    return job.task.down


def test_registered_and_params_checked() -> None:
    assert ALGORITHMS["gwpf"] is GWPF
    for bad, match in (
        ({"vote_bits": 8}, "vote_bits must be 1 or 32"),
        ({"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
        ({"stable_threshold": -0.1}, "stable_threshold must be >= 0"),
        ({"tighten_above": 1.5}, r"tighten_above must be in \[0, 1\]"),
        ({"weighting": "median"}, "weighting must be one of"),
        ({"clients_per_round": 0}, "clients_per_round must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            GwpfParams(**bad)


def test_rules_by_hand() -> None:
    ema, abs_ema = f32(0, 0), f32(0, 0)
    for change in ((1, 1), (-1, 1), (1, 1), (-1, 1)):  # entry 0 oscillates, entry 1 drifts
        ema, abs_ema = rules.ema_update(ema, abs_ema, f32(*change), 0.5)
    np.testing.assert_array_equal(ema, f32(-0.3125, 0.9375))  # 0.5, -0.25, 0.375, -0.3125
    np.testing.assert_array_equal(abs_ema, f32(0.9375, 0.9375))
    r = rules.stability_ratio(np.append(ema, 0), np.append(abs_ema, 0))  # a third never moved
    np.testing.assert_allclose(r[:2], [1 / 3, 1.0])
    assert np.isnan(r[2])
    assert rules.freezes(r, 0.5).tolist() == [True, False, False]  # no ratio: no freeze...
    assert rules.votes(r, 0.5).tolist() == [False, True, False]  # ...and no vote
    assert rules.tally(np.array([0, 3, 3, 1]), np.array([2, 1, 0, 0])).tolist() == [1, 4, 1, 0]
    assert rules.next_threshold(0.5, 0.81, 0.8) == 0.25
    assert rules.next_threshold(0.5, 0.8, 0.8) == 0.5  # "more than" 80%
    np.testing.assert_array_equal(rules.merge([f32(1, 2), f32(3, 6)], [1.0, 3.0]), f32(2.5, 5))


def test_subset_and_vote_encodings_take_the_smaller_form() -> None:
    member = np.zeros(40, dtype=bool)
    member[[3, 7]] = True  # 2 members: 8 bytes of indices > 5 bytes of bitmap
    sent = rules.encode_subset("x", member)
    assert list(sent) == ["x_bits"] and payload_bytes(sent) == 5 == rules.subset_bytes(2, 40)
    np.testing.assert_array_equal(rules.decode_subset(sent, "x", 40), member)
    one = rules.encode_subset("x", np.arange(9) == 3)  # 1 of 9: 4 bytes of index > 2 of bitmap
    assert list(one) == ["x_bits"] and payload_bytes(one) == 2
    sparse = rules.encode_subset("x", np.arange(100) == 42)  # 1 of 100: 4 < 13 bytes
    assert sparse["x_idx"].tolist() == [42] and sparse["x_idx"].dtype == np.uint32
    v = np.array([1, 0, 1], dtype=bool)
    assert rules.encode_votes(v, 1).tolist() == [0b10100000]
    assert rules.encode_votes(v, 32).nbytes == 12
    for bits in (1, 32):
        assert rules.decode_votes(rules.encode_votes(v, bits), 3, bits).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="3 votes of 32 bit"):
        rules.decode_votes(np.zeros(2, np.int32), 3, 32)  # 8 bytes, not 12


def test_an_oscillating_entry_freezes_and_a_drifting_one_stays_active() -> None:
    alg, state = make(alpha=0.5)
    state, _ = sync(alg, state, {0: [1, 1], 1: [1, 1]})  # both moved +1: ratio 1
    assert state.frozen_at.tolist() == [-1, -1] and state.version == 1
    state, _ = sync(alg, state, {0: [0, 3], 1: [0, 1]})  # entry 0 back by 1, entry 1 on by 1
    np.testing.assert_array_equal(state.model, f32(0, 2))
    np.testing.assert_array_equal(state.ema, f32(-0.25, 0.75))  # 0.5*0.5 - 0.5*1; 0.25 + 0.5
    np.testing.assert_array_equal(state.abs_ema, f32(0.75, 0.75))  # ratios 1/3 and 1
    assert state.frozen_at.tolist() == [2, -1]  # frozen by the sync that made version 2
    assert alg.stats(state)["frozen_fraction"] == 0.5
    # At the reference's alpha 0.99 one reversal is enough too: |0.0099 - 0.01| / 0.0199.
    alg99, s99 = make()
    s99, _ = sync(alg99, s99, {0: [1, 1], 1: [1, 1]})
    s99, _ = sync(alg99, s99, {0: [0, 2], 1: [0, 2]})
    assert s99.frozen_at.tolist() == [2, -1]
    np.testing.assert_allclose(s99.ema, [-1e-4, 0.0199], rtol=1e-4)


def test_the_reference_ema_on_values_flag_freezes_by_values_not_changes() -> None:
    """Entry 0 goes 2 then 1 (its change reverses, its value keeps its sign); entry 1 goes
    -1 then 1 (a drift across zero). Changes: ratios 0 and 0.6; values: 1 and 1/3."""
    ends = {}
    for flag in (False, True):
        alg, state = make(num_clients=1, alpha=0.5, reference_ema_on_values=flag)
        state, _ = sync(alg, state, {0: [2, -1]})
        state, _ = sync(alg, state, {0: [1, 1]})
        ends[flag] = state.frozen_at.tolist()
    assert ends[False] == [2, -1]  # the paper's rule: the oscillating change freezes
    assert ends[True] == [-1, 2]  # the reference's aliasing: the sign change of the value


def test_threshold_halves_at_every_sync_while_most_entries_are_frozen() -> None:
    alg, state = make(alpha=0.5, size=6)
    state, _ = sync(alg, state, {0: [1] * 6, 1: [1] * 6})
    assert state.threshold == 0.5
    state, _ = sync(alg, state, {0: [0] * 5 + [2], 1: [0] * 5 + [2]})  # five reverse, one drifts
    assert state.frozen_at.tolist() == [2] * 5 + [-1]
    assert state.threshold == 0.25  # 5/6 frozen > 0.8
    state, _ = sync(alg, state, {0: [3], 1: [3]})  # only the active entry is synchronised
    assert state.threshold == 0.125 and state.model.tolist() == [0] * 5 + [3]
    # The votes of that round were judged against 0.25; the next round's job carries 0.125.
    _, jobs = alg.jobs(state, 0.0, np.array([0]), np.random.default_rng(0))
    assert down(jobs[0])["threshold"].tolist() == [0.125]


def test_votes_thaw_an_entry_for_the_next_round_where_it_is_merged() -> None:
    alg, state = make(alpha=0.5)
    state, _ = sync(alg, state, {0: [1, 1], 1: [1, 1]})
    state, _ = sync(alg, state, {0: [0, 2], 1: [0, 2]})  # entry 0 freezes (version 2)
    ema_frozen = state.ema[0]
    state, jobs = sync(alg, state, {0: [3], 1: [3]}, votes={0: [1], 1: [0]})  # one vote is enough
    assert state.thaw_count.tolist() == [1, 0] and alg.stats(state)["thawed"] == 1
    assert state.model.tolist() == [0, 3] and state.written_at.tolist() == [2, 3]
    # Round 4 thaws entry 0: both entries go up, the clients' diverged values are merged.
    state, jobs = sync(alg, state, {0: [5, 4], 1: [7, 4]})
    sent = down(jobs[0])  # synced at 2: entry 1's value, entry 0 in the thaw set
    assert sent["values"].tolist() == [3] and rules.decode_subset(sent, "thawed", 1).tolist() == [True]
    assert state.model.tolist() == [6, 4] and state.written_at.tolist() == [4, 4]
    assert state.thaw_count.tolist() == [0, 0]  # no vote this time: 1 // 2
    assert state.frozen_at.tolist() == [2, -1]  # still frozen: thawing is temporary
    assert state.ema[0] == ema_frozen  # a thawed entry does not feed the server's EMAs
    state, jobs = sync(alg, state, {0: [5], 1: [5]})  # round 5: frozen again, not merged
    assert state.model.tolist() == [6, 5]
    start, frozen, thawed, _ = rules.client_view(down(jobs[0]), f32(9, 9), np.array([True, False]), 2)
    assert start.tolist() == [6, 4] and frozen.tolist() == [True, False] and not thawed.any()
    # Votes in three rounds in a row keep an entry thawed for two more after they stop.
    counts = []
    for i, vote in enumerate((1, 1, 1, 0, 0, 0)):
        thawed_now = [0.0] if state.thaw_count[0] > 0 else []  # entry 1 keeps drifting
        state, _ = sync(alg, state, {0: [*thawed_now, 6.0 + i]}, votes={0: [vote]})
        counts.append(int(state.thaw_count[0]))
    assert counts == [1, 2, 3, 1, 0, 0]


def test_down_and_up_bytes_are_the_hand_computed_sizes() -> None:
    """40 entries at version 6: 0-9 frozen at version 2, 10-11 at version 5, the rest
    active (written at 6); entry 3 was thawed and merged at 6; thaw set now {0, 1, 2, 10}."""
    for bits, up_bytes in ((1, 4 * 32 + 2), (32, 4 * 32 + 4 * 12)):
        alg, state = make(num_clients=3, size=40, vote_bits=bits, stable_threshold=0.25)
        model = np.arange(40, dtype=np.float32)
        frozen_at = np.full(40, -1, dtype=np.int32)
        frozen_at[:10], frozen_at[10:12] = 2, 5
        written = np.full(40, 6, dtype=np.int32)
        written[:10], written[3], written[10:12] = 2, 6, 5
        thaw = np.zeros(40, dtype=np.int32)
        thaw[[0, 1, 2, 10]] = [1, 2, 1, 3]
        state = replace(
            state, model=model, frozen_at=frozen_at, written_at=written, thaw_count=thaw, version=6
        )
        state = replace(state, synced=np.array([-1, 5, 3], dtype=np.int32))
        state, jobs = alg.jobs(state, 0.0, np.array([0, 1, 2]), np.random.default_rng(0))
        sizes = {j.client: payload_bytes(down(j)) for j in jobs}
        assert {j.client: j.cost.bytes_down for j in jobs} == sizes
        # new: 40 values + frozen 12 of 40 (bitmap 5) + thawed 4 of 12 (bitmap 2) + T_s;
        # synced at 5: 29 values (active + entry 3) + merged 1 of 12 (2) + frozen 0 of 28 (0) + 2 + 4;
        # synced at 3: 31 values (+ entries 10, 11) + merged 1 of 10 (2) + frozen 2 of 30 (4) + 2 + 4.
        assert sizes == {0: 160 + 5 + 2 + 4, 1: 116 + 2 + 0 + 2 + 4, 2: 124 + 2 + 4 + 2 + 4}
        frozen = frozen_at >= 0
        for job, held_frozen in zip(
            sorted(jobs, key=lambda j: j.client), (None, frozen, frozen_at == 2), strict=True
        ):
            held = None if held_frozen is None else np.full(40, -1.0, dtype=np.float32)
            start, got_frozen, thawed, t_s = rules.client_view(down(job), held, held_frozen, 40)
            changed = written > int(state.synced[job.client])
            np.testing.assert_array_equal(start, np.where(changed, model, -1))
            assert (got_frozen == frozen).all() and np.flatnonzero(thawed).tolist() == [0, 1, 2, 10]
            assert t_s == 0.25
        # Up: the 28 active and 4 thawed values, and 12 votes (1 or 32 bits each).
        sync_mask = ~frozen | (thaw > 0)
        upload = GwpfUpload(model, model - 1, sync_mask, np.ones(12, dtype=bool), frozen)
        payload, kept = alg.encode(f32(*[1] * 40), upload, np.random.default_rng(0))
        assert payload_bytes(payload) == up_bytes
        np.testing.assert_array_equal(payload["values"], model[sync_mask] - 1)
        assert kept.dtype == np.uint8 and kept.nbytes == 4 * 40 + 5  # its values and frozen set
        values, kept_frozen = rules.read_client_record(kept, 40)
        np.testing.assert_array_equal(values, model - 1)
        np.testing.assert_array_equal(kept_frozen, frozen)


def quadratic(a: tuple[float, float]) -> tuple[torch.nn.Module, ClientData]:
    class Vec(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w.expand(x.shape[0], 2)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - y) ** 2).sum(dim=1).mean()

    return Vec(), ClientData(torch.zeros(1, 1), torch.tensor([a]), loss)


def run_job(alg: GWPF, job: Any, global_model: np.ndarray, a: tuple[float, float], held: Any) -> tuple:
    """What an executor does with a job (engine/worker/worker.py ``_run_one``)."""
    model, data = quadratic(a)
    layout = ParamLayout.of(model)
    layout.load(model, global_model)
    result = alg.client_update(model, data, job.task, held, torch.Generator().manual_seed(0))
    delta = np.subtract(global_model, layout.flatten(model), dtype=np.float32)
    payload, state = alg.encode(delta, result.client_state, np.random.default_rng(0))
    return payload, state


def test_a_client_trains_its_frozen_entries_keeps_them_and_votes() -> None:
    """Entry 0 frozen (at version 1), the client's own value 10 against the server's 4.
    From start (10, 8) toward a = (0, 0): w -> (5, 4) -> (2.5, 2); entry 0 moved -5 then
    -2.5: ratio 1, a vote. Only entry 1 goes up; the client keeps 2.5, never the server's 4."""
    alg, state = make(num_clients=1)
    state = replace(
        state,
        model=f32(4, 8),
        frozen_at=np.array([1, -1], dtype=np.int32),
        written_at=np.array([1, 2], dtype=np.int32),
        synced=np.array([1], dtype=np.int32),
        version=2,
    )
    held = rules.client_record(f32(10, 6), np.array([True, False]))
    state, jobs = alg.jobs(state, 0.0, np.array([0]), np.random.default_rng(0))
    assert isinstance(jobs[0].task, GwpfTask) and down(jobs[0])["values"].tolist() == [8]
    payload, kept = run_job(alg, jobs[0], state.model, (0.0, 0.0), held)
    assert payload["values"].tolist() == [2] and payload["votes"].tolist() == [0b10000000]
    assert rules.read_client_record(kept, 2)[0].tolist() == [2.5, 2]
    state = alg.on_update(state, Update(0, payload["values"], 1, 2, state.model, payload), 0.0)
    assert state.model.tolist() == [4, 2] and state.thaw_count.tolist() == [1, 0]
    # Next round entry 0 is thawed: the client starts from its own 2.5 (never rolled back
    # to 4) and trains (2.5, 2) -> (1.25, 1) -> (0.625, 0.5); both values go up.
    state, jobs = alg.jobs(state, 0.0, np.array([0]), np.random.default_rng(0))
    payload, kept = run_job(alg, jobs[0], state.model, (0.0, 0.0), kept)
    assert payload["values"].tolist() == [0.625, 0.5]
    assert rules.read_client_record(kept, 2)[0].tolist() == [0.625, 0.5]
    state = alg.on_update(state, Update(0, payload["values"], 1, 3, state.model, payload), 0.0)
    assert state.model.tolist() == [0.625, 0.5]  # merged


def test_an_altered_delta_is_uploaded_as_the_values_it_stands_for() -> None:
    """Executor-side attacks change the engine's delta (received - end); GWPF then sends
    received - delta, so a sign flip sends 2 * received - end."""
    alg, _ = make(num_clients=1)
    up = GwpfUpload(f32(4, 8), f32(3, 6), np.array([True, True]), np.zeros(0, dtype=bool), np.zeros(2, bool))
    honest, _ = alg.encode(f32(1, 2), up, np.random.default_rng(0))
    flipped, _ = alg.encode(f32(-1, -2), up, np.random.default_rng(0))
    assert honest["values"].tolist() == [3, 6] and flipped["values"].tolist() == [5, 10]


def test_state_client_state_and_task_survive_a_checkpoint() -> None:
    alg, state = make(alpha=0.5)
    state, _ = sync(alg, state, {0: [1, 1], 1: [1, 1]})
    state, jobs = sync(alg, state, {0: [0, 3], 1: [0, 1]})
    kept = rules.client_record(f32(1, 2), np.array([True, False]))
    back = serial.loads(serial.dumps((state, kept, jobs[0])))
    assert back[0].frozen_at.tolist() == state.frozen_at.tolist() and back[0].threshold == 0.5
    assert rules.read_client_record(back[1], 2)[0].tolist() == [1, 2] and isinstance(back[2].task, GwpfTask)
    assert down(back[2]).keys() == down(jobs[0]).keys()

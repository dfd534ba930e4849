"""HeteroFL (algorithms/heterofl.py, heterofl_rules.py; widths in workloads/models.py): index
math on hand-computed small models, per-entry aggregation by hand, rate 1 is FedAvg, byte
counts and compute fractions per rate, the client update and the masked classifier."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import algorithms.heterofl_rules as rules
from algorithms.aggregation import descend, weighted_average
from algorithms.base import LocalTraining, Update
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.heterofl import HeteroFL, HeteroFLParams, WidthTask
from engine.worker.training import ClientData, local_sgd
from workloads.base import ParamLayout
from workloads.models import MLP, CifarCNN, MnistCNN, ResNet18, ShapesCNN, forward_flops, hidden_width, narrow


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- widths and index math ---------------------------------------------------------------


def test_hidden_width_is_the_ceiling_of_rate_times_width() -> None:
    assert [hidden_width(64, r) for r in (1, 0.5, 0.25, 0.125, 0.0625)] == [64, 32, 16, 8, 4]
    assert hidden_width(10, 0.25) == 3  # ceil(2.5)
    assert hidden_width(30, 0.1) == 3  # 0.1 * 30 is 3.0000000000000004 in floats
    assert hidden_width(64, 0.1, multiple=2) == 8  # ceil(6.4) = 7, up to even for GroupNorm(2)
    assert hidden_width(4, 0.01) == 1  # never empty
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\]"):
        hidden_width(8, 1.5)


def test_leading_blocks_of_a_matrix_and_a_vector() -> None:
    # A (3, 2) matrix is entries 0..5 (rows [0 1] [2 3] [4 5]), a (3,) vector 6..8.
    index = rules.leading_block_indices([(3, 2), (3,)], [(2, 2), (2,)])
    assert index.tolist() == [0, 1, 2, 3, 6, 7]
    # a (2, 3, 2) tensor: its leading (2, 2, 1) block is [0, 2, 6, 8]; then a scalar at 12
    assert rules.leading_block_indices([(2, 3, 2), ()], [(2, 2, 1), ()]).tolist() == [0, 2, 6, 8, 12]
    with pytest.raises(ValueError, match="no leading block"):
        rules.leading_block_indices([(3, 2)], [(4, 2)])


def test_index_of_a_half_width_mlp_by_hand() -> None:
    """MLP 3-4-2 at rate 0.5 keeps 2 hidden units. The full vector: layers.0.weight (4, 3) is
    entries 0..11, layers.0.bias 12..15, layers.1.weight (2, 4) 16..23, layers.1.bias 24..25."""
    full = MLP(3, (4,), 2)
    sub = narrow(full, 0.5)
    assert ParamLayout.of(sub).shapes == ((2, 3), (2,), (2, 2), (2,))
    index = rules.leading_block_indices(ParamLayout.of(full).shapes, ParamLayout.of(sub).shapes)
    # hidden units 0, 1 (rows 0-1 of W0), their biases, columns 0-1 of W1's two rows, both biases
    assert index.tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 16, 17, 20, 21, 24, 25]
    # The sub-model is the full model with hidden units 2 and 3 switched off.
    flat = ParamLayout.of(full).flatten(full)
    ParamLayout.of(sub).load(sub, flat[index])
    off = flat.copy()
    off[[6, 7, 8, 9, 10, 11, 14, 15]] = 0.0  # units 2, 3: in-weights and biases
    ParamLayout.of(full).load(full, off)
    full.eval(), sub.eval()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sub(x), full(x), rtol=0, atol=1e-6)


def test_index_of_a_half_width_cnn_by_hand() -> None:
    """The Shapes CNN on 8x8 inputs, 3 classes, at rate 0.5: conv1 16 -> 8 channels, conv2
    32 -> 16, dense 64 -> 32 units; dense inputs 32 * 2 * 2 = 128 -> 16 * 2 * 2 = 64 (the
    flatten is channel-major, so the leading channels are the leading inputs)."""
    full = ShapesCNN(1, 8, 8, 3)
    sub = narrow(full, 0.5)
    shapes = ParamLayout.of(full).shapes
    assert shapes == ((16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (64, 128), (64,), (3, 64), (3,))
    sub_shapes = ParamLayout.of(sub).shapes
    assert sub_shapes == ((8, 1, 5, 5), (8,), (16, 8, 5, 5), (16,), (32, 64), (32,), (3, 32), (3,))
    index = rules.leading_block_indices(shapes, sub_shapes)
    assert index.size == 200 + 8 + 3200 + 16 + 2048 + 32 + 96 + 3 == 5603
    assert index[:200].tolist() == list(range(200))  # conv1: the first 8 filters, whole
    assert index[200:208].tolist() == list(range(400, 408))  # conv1 bias starts at 16 * 25
    # conv2 weight starts at 416; filter o, input channel i, tap k is 416 + 400 o + 25 i + k.
    conv2 = index[208:3408].reshape(16, 8, 25)
    assert conv2[0, 0, 0] == 416 and conv2[0, 7, 24] == 416 + 7 * 25 + 24
    assert conv2[15, 0, 0] == 416 + 15 * 400
    # dense weight starts at 416 + 12800 + 32 = 13248; row j keeps columns 0..63 of 128.
    dense = index[3424:5472].reshape(32, 64)
    assert dense[0, 0] == 13248 and dense[1, 0] == 13248 + 128 and dense[31, 63] == 13248 + 31 * 128 + 63
    # Equivalent to the full CNN with channels 8-15, 16-31 and units 32-63 switched off.
    flat = ParamLayout.of(full).flatten(full)
    ParamLayout.of(sub).load(sub, flat[index])
    keep = np.zeros(flat.size, dtype=bool)
    keep[index] = True
    keep[-(3 * 64 + 3) :] = True  # the classifier: inputs of switched-off units meet zeros
    ParamLayout.of(full).load(full, np.where(keep, flat, 0.0).astype(np.float32))
    full.eval(), sub.eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sub(x), full(x), rtol=0, atol=1e-5)


BUILDERS = {
    "mnist_cnn": lambda: MnistCNN(1, 28, 28, 10),
    "cifar_cnn": lambda: CifarCNN(3, 32, 32, 10),
    "resnet18": lambda: ResNet18(3, 10),
    "mlp": lambda: MLP(60, (64, 64), 10),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_every_tensor_of_a_sub_model_is_a_leading_block(name: str) -> None:
    model = BUILDERS[name]()
    full_layout = ParamLayout.of(model)
    flat = full_layout.flatten(model)
    for rate in (0.5, 0.1):
        sub = narrow(model, rate)
        layout = ParamLayout.of(sub)
        assert layout.names == full_layout.names
        index = rules.leading_block_indices(full_layout.shapes, layout.shapes)
        layout.load(sub, flat[index])
        big, small = model.state_dict(), sub.state_dict()
        for name in layout.names:
            block = big[name][tuple(slice(0, n) for n in small[name].shape)]
            assert torch.equal(small[name], block), name
        assert sub(torch.zeros(2, *_input(model))).shape == (2, 10)
    # ResNet-18 rounds 0.1 x 64 = 6.4 up to 7, then to 8 for its two GroupNorm groups.
    if isinstance(model, ResNet18):
        assert narrow(model, 0.1).stem[0].out_channels == 8


def _input(model: torch.nn.Module) -> tuple[int, ...]:
    return {MnistCNN: (1, 28, 28), CifarCNN: (3, 32, 32), ResNet18: (3, 32, 32), MLP: (60,)}[type(model)]


def test_the_scaler_divides_hidden_outputs_by_the_rate_in_training_only() -> None:
    full = MLP(2, (4,), 2)
    sub, unscaled = narrow(full, 0.5), narrow(full, 0.5, scaler=False)
    unscaled.load_state_dict(sub.state_dict())
    x = torch.randn(3, 2)
    h = sub.layers[0](x)
    sub.train()
    expected = sub.layers[1](torch.relu(h / 0.5))
    torch.testing.assert_close(sub(x), expected, rtol=0, atol=0)
    sub.eval(), unscaled.eval()
    torch.testing.assert_close(sub(x), unscaled(x), rtol=0, atol=0)


def test_flops_per_rate_by_hand() -> None:
    # MLP 60-64-64-10: 2 FLOPs per multiply-add; at rate 0.25 the hidden layers have 16 units.
    mlp = MLP(60, (64, 64), 10)
    assert forward_flops(mlp, (60,)) == 2 * (60 * 64 + 64 * 64 + 64 * 10) == 17152
    assert forward_flops(narrow(mlp, 0.25), (60,)) == 2 * (60 * 16 + 16 * 16 + 16 * 10) == 2752
    # Shapes CNN 28x28: conv1 28*28*16 outputs x 25 taps, conv2 14*14*32 x 16*25, dense, out.
    cnn = ShapesCNN(1, 28, 28, 10)
    full = 2 * (28 * 28 * 16 * 25 + 14 * 14 * 32 * 16 * 25 + 1568 * 64 + 64 * 10)
    assert forward_flops(cnn, (1, 28, 28)) == full == 5_846_784
    quarter = 2 * (28 * 28 * 4 * 25 + 14 * 14 * 8 * 4 * 25 + 392 * 16 + 16 * 10)
    assert forward_flops(narrow(cnn, 0.25), (1, 28, 28)) == quarter == 483_264


# ---- server rules -------------------------------------------------------------------------


def test_classifier_rows_of_the_small_mlp() -> None:
    shapes = ParamLayout.of(MLP(3, (4,), 2)).shapes
    assert rules.classifier(shapes) == (16, (2, 4), 24)
    class_1 = rules.class_entries(shapes, np.array([False, True]))
    assert np.flatnonzero(class_1).tolist() == [20, 21, 22, 23, 25]  # row 1 of the (2, 4) weight, bias 1
    # A half-width client holding class 1 only trained its sub-model less class 0's row.
    half = np.array([0, 1, 2, 3, 4, 5, 12, 13, 16, 17, 20, 21, 24, 25])
    upload = {"delta": np.arange(14, dtype=np.float32), "labels": np.array([False, True])}
    covered = [0, 1, 2, 3, 4, 5, 12, 13, 20, 21, 25]  # all but 16, 17 (class 0's row) and 24 (its bias)
    assert np.flatnonzero(rules.coverage(half, upload, shapes)).tolist() == covered
    sub = rules.SubModel(half, 0.5)
    expanded = rules.expand(upload["delta"], [sub], 26)
    assert expanded[half].tolist() == list(range(14))
    assert not expanded[np.setdiff1d(np.arange(26), half)].any()
    with pytest.raises(ValueError, match="matches no rate's sub-model"):
        rules.expand(np.zeros(5, np.float32), [sub], 26)


def test_aggregate_averages_each_entry_over_the_clients_that_trained_it() -> None:
    model = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    deltas = [np.array([0.5, 1.0, 0.0, 0.0], np.float32), np.array([0.25, 0.0, 0.75, 0.0], np.float32)]
    covers = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)]
    # entry 0: (1 * 0.5 + 3 * 0.25) / 4 = 0.3125; entry 1: A alone; entry 2: B alone; entry 3: nobody
    new = rules.aggregate(model, deltas, covers, [1.0, 3.0])
    np.testing.assert_array_equal(new, np.array([0.6875, 1.0, 2.25, 4.0], np.float32))
    half = rules.aggregate(model, deltas, covers, [1.0, 3.0], server_lr=0.5)
    np.testing.assert_array_equal(half, np.array([0.84375, 1.5, 2.625, 4.0], np.float32))


def test_aggregate_with_full_coverage_is_fedavgs_step_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    model = rng.standard_normal(1000).astype(np.float32)
    deltas = [rng.standard_normal(1000).astype(np.float32) for _ in range(7)]
    weights = [float(w) for w in rng.integers(1, 500, 7)]
    covers = [np.ones(1000, bool)] * 7
    fedavg = descend(model, weighted_average(deltas, weights), 1.0)
    np.testing.assert_array_equal(rules.aggregate(model, deltas, covers, weights), fedavg)


def test_rates_from_speed_tiers_and_drawn() -> None:
    # factors 1 < 4 < 10 are the 1st, 2nd, 3rd fastest tiers
    rates = rules.tier_rates(np.array([10.0, 1.0, 1.0, 10.0, 4.0]), [1.0, 0.5, 0.25])
    assert rates.tolist() == [0.25, 1.0, 1.0, 0.25, 0.5]
    with pytest.raises(ValueError, match="3 distinct speed factors and rates has 2"):
        rules.tier_rates(np.array([1.0, 2.0, 3.0]), [1.0, 0.5])
    assert rules.tier_rates(np.array([1.0, 2.0, 3.0]), [0.5]).tolist() == [0.5] * 3
    assert rules.draw_rates(np.random.default_rng(0), 4, [1.0, 0.5], [0.0, 1.0]).tolist() == [0.5] * 4
    a = rules.draw_rates(np.random.default_rng(7), 50, [1.0, 0.5, 0.25], ())
    assert np.array_equal(a, rules.draw_rates(np.random.default_rng(7), 50, [1.0, 0.5, 0.25], ()))
    assert set(a.tolist()) == {1.0, 0.5, 0.25}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"rates": (1.0, 0.0)}, r"rates must be width rates in \(0, 1\]"),
        ({"rates": ()}, "rates must be"),
        ({"rate_mode": "fixed"}, "rate_mode must be one of tier, random"),
        ({"proportions": (1.0, 1.0)}, "proportions are rate_mode=random's"),
        ({"rate_mode": "random", "rates": (1.0, 0.5), "proportions": (1.0,)}, "proportions must give"),
        ({"weighting": "count"}, "weighting must be one of samples, uniform"),
        ({"clients_per_round": 0}, "clients_per_round must be >= 1"),
    ],
)
def test_params_validation(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeteroFLParams(**kw)


# ---- the algorithm on a small MLP ---------------------------------------------------------

SIZES = (6, 9, 12, 15)


def small(**kw: object) -> tuple[HeteroFL, torch.nn.Module]:
    """HeteroFL over 4 clients of an MLP 3-4-2; clients 0, 2 are fast, 1, 3 ten times slower."""
    params = HeteroFLParams(clients_per_round=4, rates=(1.0, 0.5), **kw)  # type: ignore[arg-type]
    alg = HeteroFL(params, LocalTraining(local_steps=3, batch_size=4, lr=0.1), np.array(SIZES))
    torch.manual_seed(0)
    model = MLP(3, (4,), 2)
    alg.bind(lambda: MLP(3, (4,), 2), (3,), np.array([1.0, 10.0, 1.0, 10.0]))
    return alg, model


def shard(client: int, classes: tuple[int, ...] = (0, 1)) -> ClientData:
    g = torch.Generator().manual_seed(client)
    n = SIZES[client]
    y = torch.tensor(classes)[torch.randint(0, len(classes), (n,), generator=g)]
    return ClientData(torch.randn(n, 3, generator=g), y, F.cross_entropy)


def test_jobs_carry_the_tier_rate_and_cost_the_sub_model() -> None:
    alg, model = small()
    w = ParamLayout.of(model).flatten(model)
    state, jobs = alg.jobs(alg.init(w), 0.0, np.arange(4), np.random.default_rng(0))
    by_client = {j.client: j for j in jobs}
    assert sorted(by_client) == [0, 1, 2, 3]
    for c, job in by_client.items():
        assert isinstance(job.task, WidthTask)
        assert job.task.rate == (1.0 if c in (0, 2) else 0.5)
    # 26 entries in all, 14 in the half-width sub-model; FLOPs 2 * (3*4 + 4*2) = 40 and 2 * (3*2 + 2*2) = 20.
    assert by_client[0].cost.bytes_down == 4 * 26 and by_client[0].cost.compute_fraction == 1.0
    assert by_client[1].cost.bytes_down == 4 * 14 and by_client[1].cost.compute_fraction == 0.5
    assert dict(state.assigned) == {0: 1.0, 1: 0.5, 2: 1.0, 3: 0.5}


def run_job(alg: HeteroFL, model: torch.nn.Module, w: np.ndarray, client: int, rate: float, data: ClientData):  # type: ignore[no-untyped-def]
    layout = ParamLayout.of(model)
    layout.load(model, w)
    task = WidthTask(steps=3, batch_size=4, lr=0.1, rate=rate)
    result = alg.client_update(model, data, task, None, torch.Generator().manual_seed(client))
    delta = np.subtract(w, layout.flatten(model), dtype=np.float32)
    payload, state = alg.encode(delta, result.client_state, np.random.default_rng(0))
    assert state is None
    return delta, payload


def test_a_sub_model_job_trains_the_leading_block_only_and_uploads_it() -> None:
    alg, model = small()
    w = ParamLayout.of(model).flatten(model)
    delta, payload = run_job(alg, model, w, 1, 0.5, shard(1))
    index = rules.leading_block_indices(ParamLayout.of(model).shapes, ((2, 3), (2,), (2, 2), (2,)))
    outside = np.setdiff1d(np.arange(26), index)
    assert np.all(delta[outside] == 0) and np.any(delta[index] != 0)
    assert set(payload) == {"delta"} and payload["delta"].nbytes == 4 * 14  # bytes up: the sub-model
    np.testing.assert_array_equal(payload["delta"], delta[index])
    # Exactly the standalone half-width model trained from the leading blocks.
    sub = narrow(model, 0.5)
    ParamLayout.of(sub).load(sub, w[index])
    task = WidthTask(steps=3, batch_size=4, lr=0.1, rate=0.5)
    local_sgd(sub, shard(1), task, torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(w[index] - ParamLayout.of(sub).flatten(sub), payload["delta"])
    # The server puts the entries back in place.
    alg.init(w)
    np.testing.assert_array_equal(alg.decode(payload, 1), delta)


def test_a_round_averages_each_entry_over_its_trainers() -> None:
    alg, model = small()
    w = ParamLayout.of(model).flatten(model)
    state, _ = alg.jobs(alg.init(w), 0.0, np.arange(4), np.random.default_rng(0))
    deltas = {}
    for c in (3, 0, 1, 2):  # arrival order
        rate = dict(state.assigned)[c]
        _, payload = run_job(alg, model, w, c, rate, shard(c))
        deltas[c] = alg.decode(payload, c)
        state = alg.on_update(state, Update(c, deltas[c], SIZES[c], 0, w, payload), 1.0)
    assert state.version == 1 and not state.pending
    index = alg.subs[0.5].index
    # Entries of the half-width sub-model: all four clients; the rest: clients 0 and 2 only.
    inner = (6 * deltas[0] + 9 * deltas[1] + 12 * deltas[2] + 15 * deltas[3]) / 42
    outer = (6 * deltas[0] + 12 * deltas[2]) / 18
    expected = np.where(np.isin(np.arange(26), index), w - inner, w - outer)
    np.testing.assert_allclose(state.model, expected, rtol=0, atol=1e-6)
    assert alg.stats(state) == {"dropped": 0.0, "mean_rate": 0.75}


def test_rate_one_for_everyone_is_fedavg_exactly() -> None:
    alg, model = small(rate_mode="random", proportions=(1.0, 0.0))  # always rate 1
    fedavg = FedAvg(FedAvgParams(clients_per_round=4), alg.training, np.array(SIZES))
    w = ParamLayout.of(model).flatten(model)
    s_h, jobs_h = alg.jobs(alg.init(w), 0.0, np.arange(4), np.random.default_rng(3))
    s_f, jobs_f = fedavg.jobs(fedavg.init(w), 0.0, np.arange(4), np.random.default_rng(3))
    assert [j.client for j in jobs_h] == [j.client for j in jobs_f]
    for jh, jf in zip(jobs_h, jobs_f, strict=True):
        c = jh.client
        delta, payload = run_job(alg, model, w, c, jh.task.rate, shard(c))
        ParamLayout.of(model).load(model, w)
        fedavg.client_update(model, shard(c), jf.task, None, torch.Generator().manual_seed(c))
        delta_f = np.subtract(w, ParamLayout.of(model).flatten(model), dtype=np.float32)
        np.testing.assert_array_equal(delta, delta_f)
        s_h = alg.on_update(s_h, Update(c, alg.decode(payload, c), SIZES[c], 0, w, payload), 1.0)
        s_f = fedavg.on_update(s_f, Update(c, delta_f, SIZES[c], 0, w, {"delta": delta_f}), 1.0)
    np.testing.assert_array_equal(s_h.model, s_f.model)


def test_a_masked_classifier_trains_and_sends_only_the_clients_classes() -> None:
    alg, model = small(mask_classifier=True)
    w = ParamLayout.of(model).flatten(model)
    data = shard(0, classes=(1,))  # client 0 holds class 1 only
    delta, payload = run_job(alg, model, w, 0, 1.0, data)
    assert payload["labels"].tolist() == [False, True]
    assert payload["delta"].nbytes + payload["labels"].nbytes == 4 * 26 + 2  # one byte per class
    row0 = [16, 17, 18, 19, 24]  # class 0's output row and bias: no gradient through a zero logit
    assert np.all(delta[row0] == 0) and np.any(delta[[20, 21, 22, 23, 25]] != 0)
    state, _ = alg.jobs(alg.init(w), 0.0, np.arange(4), np.random.default_rng(0))
    state = replace_assigned(state, {0: 1.0})
    state = alg.on_update(state, Update(0, alg.decode(payload, 0), SIZES[0], 0, w, payload), 1.0)
    # client 0 alone in the round: class 0's row keeps its value, the rest moves by its delta
    np.testing.assert_array_equal(state.model[row0], w[row0])
    np.testing.assert_allclose(state.model, w - delta, rtol=0, atol=1e-7)


def replace_assigned(state, assigned: dict[int, float]):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(state, pending=tuple(sorted(assigned)), assigned=tuple(assigned.items()))


def test_unbound_and_unscalable_models_are_refused() -> None:
    alg = HeteroFL(HeteroFLParams(), LocalTraining(), np.array(SIZES))
    with pytest.raises(RuntimeError, match="bind"):
        alg.jobs(alg.init(np.zeros(3, np.float32)), 0.0, np.arange(4), np.random.default_rng(0))
    with pytest.raises(TypeError, match="takes a width"):
        alg.bind(lambda: torch.nn.Linear(3, 2), (3,), np.ones(4))

"""Gradient clipping of local steps (``training.clip``): fixed clipping is
``torch.nn.utils.clip_grad_norm_``; AutoClip's threshold is ``np.percentile`` of the norms
so far, the current one included, checked on a one-parameter model whose gradients are
known by hand; its history is the job's or, kept as the client state, the client's."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms.base import ClientResult, LocalTraining, Task
from algorithms.codecs import CodecConfig
from algorithms.fedavg import FedAvg, FedAvgParams
from algorithms.task import Clipping
from engine.config import ConfigError, load_config
from engine.worker.stacked import stacked_rows, stacked_sgd
from engine.worker.training import ClientData, GradClip, batch_indices, local_sgd
from workloads.base import ParamLayout

AUTOCLIP = Clipping(mode="autoclip", percentile=10, scope="job")
W0, LR = 0.5, 0.1


def linear_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(out.squeeze(1) * y).mean()


def scalar_model() -> torch.nn.Module:
    """One parameter w; with x = 1 and ``linear_loss`` an example's gradient is -y."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(W0)
    return model


def scalar_data(*y: float) -> ClientData:
    return ClientData(torch.ones(len(y), 1), torch.tensor(y), linear_loss)


# batch_indices(4, 4, 1, seed 0) visits examples 0, 1, 3, 2: with these targets the four
# steps' gradients are -4, 1, -2, -8 whatever w is, so their norms are 4, 1, 2, 8.
Y = (4.0, -1.0, 8.0, 2.0)
NORMS = [4.0, 1.0, 2.0, 8.0]


def weight(model: torch.nn.Module) -> float:
    (w,) = model.parameters()
    return float(w.detach().reshape(()))


def run_scalar(task: Task, data: ClientData, clip: GradClip | None = None) -> float:
    model = scalar_model()
    local_sgd(model, data, task, torch.Generator().manual_seed(0), clip)
    return weight(model)


def test_the_visit_order_the_hand_computations_assume() -> None:
    order = batch_indices(4, 4, 1, torch.Generator().manual_seed(0))
    assert [int(i) for i in order] == [0, 1, 3, 2]
    assert [abs(Y[int(i)]) for i in order] == NORMS


def test_autoclip_thresholds_are_the_percentile_of_the_history_with_the_current_norm() -> None:
    clip = GradClip(AUTOCLIP)
    thresholds = [clip.threshold(n) for n in NORMS]
    # By hand, linear interpolation between order statistics at rank p/100 * (k - 1):
    # [4] -> 4; [1, 4] at 0.1 -> 1.3; [1, 2, 4] at 0.2 -> 1.2; [1, 2, 4, 8] at 0.3 -> 1.3
    assert thresholds == pytest.approx([4.0, 1.3, 1.2, 1.3], abs=1e-12)
    assert thresholds == [float(np.percentile(NORMS[: k + 1], 10)) for k in range(4)]
    np.testing.assert_array_equal(clip.state(), np.array(NORMS))
    assert clip.state().dtype == np.float64
    # p = 0 clips to the smallest norm seen, p = 50 to the median
    smallest = GradClip(Clipping("autoclip", percentile=0))
    assert [smallest.threshold(n) for n in NORMS] == [4.0, 1.0, 1.0, 1.0]
    median = GradClip(Clipping("autoclip", percentile=50))
    assert [median.threshold(n) for n in NORMS] == [4.0, 2.5, 2.0, 3.0]
    # a window keeps only the last norms: [4], [4, 1], [1, 2], [2, 8] at the 50th percentile
    windowed = GradClip(Clipping("autoclip", percentile=50, window=2))
    assert [windowed.threshold(n) for n in NORMS] == [4.0, 2.5, 1.5, 5.0]
    assert windowed.history == [2.0, 8.0]


def test_autoclip_one_parameter_by_hand() -> None:
    task = Task(steps=4, batch_size=1, lr=LR, clip=AUTOCLIP)
    # torch's scaling: g * min(1, threshold / (norm + 1e-6)), thresholds as above
    scale = [min(1.0, t / (n + 1e-6)) for t, n in zip([4.0, 1.3, 1.2, 1.3], NORMS, strict=True)]
    assert scale[1] == 1.0 and scale[2] == pytest.approx(0.6) and scale[3] == pytest.approx(0.1625)
    assert 0 < 1 - scale[0] < 1e-6  # the first norm is its own threshold: scaled by 4 / (4 + 1e-6)
    grads = [-4.0, 1.0, -2.0, -8.0]
    expected = W0 - LR * sum(s * g for s, g in zip(scale, grads, strict=True))  # 0.5 + 0.55
    assert expected == pytest.approx(1.05, abs=1e-6)
    assert run_scalar(task, scalar_data(*Y)) == pytest.approx(expected, abs=1e-6)
    unclipped = W0 - LR * sum(grads)  # 0.5 + 1.3
    assert run_scalar(Task(steps=4, batch_size=1, lr=LR), scalar_data(*Y)) == pytest.approx(unclipped)


def test_fixed_clipping_after_the_proximal_term_by_hand() -> None:
    # full batch of one example y = 3: the loss's gradient is -3 at every step, and
    # FedProx adds mu (w - w0); the sum is clipped to norm 1, then the step is taken.
    mu, clip = 0.5, Clipping(mode="fixed", max_norm=1.0)
    w, expected = W0, []
    for _ in range(3):
        g = -3.0 + mu * (w - W0)
        w -= LR * g * min(1.0, 1.0 / (abs(g) + 1e-6))
        expected.append(w)
    task = Task(steps=3, batch_size=0, lr=LR, prox_mu=mu, clip=clip)
    assert run_scalar(task, scalar_data(3.0)) == pytest.approx(expected[-1], abs=1e-6)
    # clipping the loss's gradient alone (-3 -> -1) and adding the pull after would differ
    w_other = W0
    for _ in range(3):
        w_other -= LR * (-1.0 + mu * (w_other - W0))
    assert abs(w_other - expected[-1]) > 1e-3


def _multi_param_setup() -> tuple[torch.nn.Module, ParamLayout, np.ndarray, ClientData]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    g = torch.Generator().manual_seed(1)
    data = ClientData(
        torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g), F.cross_entropy
    )
    layout = ParamLayout.of(model)
    return model, layout, layout.flatten(model), data


def _reference(task: Task, clip_fn: object) -> tuple[np.ndarray, list[float]]:
    """local_sgd written out with torch's own clipping called as a user would."""
    model, layout, _w0, data = _multi_param_setup()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay)
    history: list[float] = []
    for idx in batch_indices(len(data), task.steps, task.batch_size, torch.Generator().manual_seed(5)):
        opt.zero_grad(set_to_none=True)
        data.loss_fn(model(data.x[idx]), data.y[idx]).backward()
        clip_fn(params, history)  # type: ignore[operator]
        opt.step()
    return layout.flatten(model), history


def _ours(task: Task, clip: GradClip | None = None) -> np.ndarray:
    model, layout, _w0, data = _multi_param_setup()
    local_sgd(model, data, task, torch.Generator().manual_seed(5), clip)
    return layout.flatten(model)


def test_fixed_clipping_equals_torch_clip_grad_norm() -> None:
    task = Task(steps=6, batch_size=4, lr=0.5, momentum=0.9, weight_decay=1e-3)
    clipped = replace(task, clip=Clipping(mode="fixed", max_norm=0.3))
    expected, _ = _reference(clipped, lambda ps, _h: torch.nn.utils.clip_grad_norm_(ps, 0.3))
    np.testing.assert_array_equal(_ours(clipped), expected)
    assert np.abs(_ours(task) - expected).max() > 1e-3  # the norms exceed 0.3: it clipped


def test_autoclip_equals_clip_grad_norm_at_the_percentile_of_the_history() -> None:
    task = Task(steps=8, batch_size=4, lr=0.5, momentum=0.9, clip=AUTOCLIP)

    def autoclip(ps: list[torch.Tensor], history: list[float]) -> None:
        # the reference's handler: record the norm, then clip to the percentile
        history.append(float(torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None])))
        torch.nn.utils.clip_grad_norm_(ps, float(np.percentile(history, 10)))

    expected, history = _reference(task, autoclip)
    clip = GradClip(task.clip)
    np.testing.assert_array_equal(_ours(task, clip), expected)
    assert clip.history == history and len(history) == 8
    np.testing.assert_array_equal(_ours(task), expected)  # by default a history of the job's own
    plain = Task(steps=8, batch_size=4, lr=0.5, momentum=0.9)
    assert np.abs(_ours(plain) - expected).max() > 1e-3


def test_autoclip_at_the_100th_percentile_is_no_clipping_at_all() -> None:
    plain = Task(steps=8, batch_size=4, lr=0.5, momentum=0.9)
    for scope in ("job", "client"):
        off = replace(plain, clip=Clipping(mode="autoclip", percentile=100, scope=scope))
        assert not off.clip.enabled and not off.clip.keeps_client_history
        np.testing.assert_array_equal(_ours(off), _ours(plain))
    # nor does it keep a history: the client state passes through untouched
    algo = FedAvg(FedAvgParams(), LocalTraining(), np.array([4]))
    task = Task(steps=4, batch_size=1, lr=LR, clip=Clipping(mode="autoclip", percentile=100))
    result = algo.client_update(scalar_model(), scalar_data(*Y), task, None, torch.Generator().manual_seed(0))
    assert result.client_state is None


def client_job(task: Task, data: ClientData, state: object) -> tuple[float, ClientResult]:
    algo = FedAvg(FedAvgParams(), LocalTraining(clip=task.clip), np.array([4]))
    model = scalar_model()
    result = algo.client_update(model, data, task, state, torch.Generator().manual_seed(0))
    return weight(model), result


def test_client_history_continues_across_the_clients_jobs() -> None:
    task = Task(steps=4, batch_size=1, lr=LR, clip=Clipping(mode="autoclip", percentile=10, scope="client"))
    w1, first = client_job(task, scalar_data(*Y), None)
    assert w1 == pytest.approx(1.05, abs=1e-6)  # the first job is the by-hand job above
    np.testing.assert_array_equal(first.client_state, np.array(NORMS))
    assert first.client_state.dtype == np.float64 and first.client_state.ndim == 1

    # Second job (from w0 again), every gradient -3: the history is [4, 1, 2, 8] + [3] * k,
    # so the 10th percentiles of the four steps are 1.4, 1.5, 1.6, 1.7 (sorted
    # [1, 2, 3, 3, ..., 4, 8] at rank 0.1 * (len - 1) = 0.4, 0.5, 0.6, 0.7).
    second_data = scalar_data(3.0, 3.0, 3.0, 3.0)
    w2, second = client_job(task, second_data, first.client_state)
    assert [float(np.percentile(second.client_state[: 5 + k], 10)) for k in range(4)] == pytest.approx(
        [1.4, 1.5, 1.6, 1.7], abs=1e-12
    )
    by_hand = W0 + LR * sum(t / (3 + 1e-6) * 3 for t in (1.4, 1.5, 1.6, 1.7))  # 0.5 + 0.62
    assert w2 == pytest.approx(by_hand, abs=1e-6)
    np.testing.assert_array_equal(second.client_state, np.array([*NORMS, 3.0, 3.0, 3.0, 3.0]))
    # the state round-trips a .npy file (server.client_state=disk) bit for bit
    assert second.client_state.tobytes() == np.array([*NORMS, 3, 3, 3, 3], dtype=np.float64).tobytes()


def test_job_history_starts_empty_every_job() -> None:
    task = Task(steps=4, batch_size=1, lr=LR, clip=AUTOCLIP)
    second_data = scalar_data(3.0, 3.0, 3.0, 3.0)
    w, result = client_job(task, second_data, None)
    assert result.client_state is None  # no state kept: passed through as it came
    # thresholds [3, 3, 3, 3]: every step scaled by 3 / (3 + 1e-6)
    assert w == pytest.approx(W0 + LR * 4 * 3 * 3 / (3 + 1e-6), abs=1e-6)
    residual = np.ones(3, dtype=np.float32)  # another method's state is left alone
    w_again, again = client_job(task, second_data, residual)
    assert w_again == w and again.client_state is residual


def test_client_history_refuses_another_state_and_a_codec() -> None:
    task = Task(steps=4, batch_size=1, lr=LR, clip=Clipping(mode="autoclip", scope="client"))
    with pytest.raises(TypeError, match=r"AutoClip history must be a 1-D float64 array \(got a float32"):
        client_job(task, scalar_data(*Y), np.zeros(4, dtype=np.float32))
    training = LocalTraining(clip=task.clip)
    algo = FedAvg(FedAvgParams(codec=CodecConfig("topk")), training, np.array([4]))
    with pytest.raises(ValueError, match=r"codec topk uses for its upload: set training\.clip\.scope=job$"):
        algo.client_update(scalar_model(), scalar_data(*Y), task, None, torch.Generator())


def test_clip_config_defaults_and_one_line_errors() -> None:
    cfg = load_config(None, ["training.clip.mode=autoclip"])
    assert cfg.training.clip == Clipping(mode="autoclip", percentile=10.0, scope="client", window=0)
    assert load_config(None, []).training.clip.mode == "none"
    cases = {
        "training.clip.mode=fixed": r"^training\.clip\.max_norm must be a finite number > 0 with mode fixed",
        "training.clip.mode=clipped": r"^training\.clip\.mode must be one of none, fixed, autoclip",
        "training.clip.percentile=101": r"^training\.clip\.percentile must be in \[0, 100\] \(got 101\.0\)$",
        "training.clip.window=-1": r"^training\.clip\.window must be >= 0",
        "training.clip.scope=everyone": r"^training\.clip\.scope must be one of client, job, global",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    assert load_config(
        None, ["training.clip.mode=autoclip", "training.clip.scope=global"]
    ).training.clip.shares_history
    with pytest.raises(ValueError, match=r"max_norm must be a finite number"):
        Clipping(mode="fixed", max_norm=math.inf)


# ---- stacked training: each slot clipped by its own norm --------------------------------------


def _stack_clients() -> list[ClientData]:
    g = torch.Generator().manual_seed(2)
    return [
        ClientData(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), F.cross_entropy)
        for n in (9, 16, 5)
    ]


@pytest.mark.parametrize(
    "clip", [Clipping(mode="fixed", max_norm=0.2), Clipping(mode="autoclip", percentile=25, scope="job")]
)
def test_stacked_slots_are_clipped_by_their_own_norms_as_one_at_a_time(clip: Clipping) -> None:
    model, layout, w0, _ = _multi_param_setup()
    clients = _stack_clients()
    task = Task(steps=7, batch_size=4, lr=0.5, momentum=0.5, weight_decay=1e-3, prox_mu=0.1, clip=clip)
    expected, histories = [], []
    for i, data in enumerate(clients):
        layout.load(model, w0)
        one = GradClip(clip)
        local_sgd(model, data, task, torch.Generator().manual_seed(10 + i), one)
        expected.append(layout.flatten(model))
        histories.append(one.history)

    def slots() -> list[tuple[ClientData, torch.Generator]]:  # fresh job generators
        return [(d, torch.Generator().manual_seed(10 + i)) for i, d in enumerate(clients)]

    layout.load(model, w0)
    clips = [GradClip(clip) for _ in clients]
    params, _ = stacked_sgd(model, [*slots(), None], task, 4, [*clips, None])  # a padding slot
    rows = stacked_rows(model, layout.names, params).numpy()
    for i in range(len(clients)):
        np.testing.assert_allclose(rows[i], expected[i], atol=2e-6, rtol=0)
        np.testing.assert_allclose(clips[i].history, histories[i], rtol=1e-5)
        assert len(clips[i].history) == (7 if clip.mode == "autoclip" else 0)
    layout.load(model, w0)
    default, _ = stacked_sgd(
        model, [*slots(), None], task, 4
    )  # without clips: each slot's history is its job's
    np.testing.assert_array_equal(stacked_rows(model, layout.names, default).numpy(), rows)
    layout.load(model, w0)
    plain, _ = stacked_sgd(model, [*slots(), None], replace(task, clip=Clipping()), 4)
    assert np.abs(stacked_rows(model, layout.names, plain).numpy() - rows)[:3].max() > 1e-3


def test_stacked_client_history_needs_the_slots_histories() -> None:
    model, *_ = _multi_param_setup()
    slots = [(d, torch.Generator().manual_seed(i)) for i, d in enumerate(_stack_clients())]
    task = Task(steps=2, batch_size=4, lr=0.5, clip=Clipping(mode="autoclip", scope="client"))
    with pytest.raises(ValueError, match=r"AutoClip with scope client needs each slot's history"):
        stacked_sgd(model, slots, task, 4)
    clips = [GradClip(task.clip, np.array([5.0, 6.0])) for _ in slots]
    stacked_sgd(model, slots, task, 4, clips)
    assert [len(c.history) for c in clips] == [4, 4, 4] and all(c.history[:2] == [5.0, 6.0] for c in clips)

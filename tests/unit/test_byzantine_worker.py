"""Client-side attacks on the executor (engine/worker/worker.py): a Byzantine client's
upload is its honest delta manipulated exactly as algorithms/attacks.py says, and label
flipping changes the labels of the attackers' shards and of no one else's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from algorithms.attacks import attacked_set, flip_labels, scale
from engine.core.backend import JobSpec
from engine.core.rng import stream
from engine.worker.data import load_data
from engine.worker.worker import ExecutorSpec, Worker
from tests import conftest

START: dict[int, np.ndarray] = {}  # each worker's seeded initial model (jobs change its own)


def worker(*overrides: str) -> Worker:
    cfg = conftest.tiny("executors.backend=local", *overrides)
    w = Worker(0.0)
    w.setup(ExecutorSpec.of(cfg), load_data(cfg))
    START[id(w)] = w.initial_params()
    return w


def job(w: Worker, client: int, job_index: int = 3) -> JobSpec:
    return JobSpec(uid=1, client=client, job_index=job_index, task=w.algorithm.task_for(client), param_slot=0)


def upload(w: Worker, client: int, job_index: int = 3) -> np.ndarray:
    (out,) = w.compute([(job(w, client, job_index), START[id(w)])])
    return np.asarray(out.payload["delta"])


@pytest.fixture(scope="module")
def honest() -> Worker:
    return worker()


def attackers(w: Worker) -> tuple[int, int]:
    """One Byzantine and one honest client of ``w``'s run."""
    bad = sorted(w.byzantine)
    good = [c for c in range(12) if c not in w.byzantine]
    assert bad and good
    return bad[0], good[0]


ATTACK = ("clients.byzantine.fraction=0.25",)


def test_the_worker_draws_the_runs_attackers() -> None:
    w = worker(*ATTACK, "clients.byzantine.attack=sign_flip")
    assert w.byzantine == attacked_set(w.spec.byzantine, 12, w.spec.seed) and len(w.byzantine) == 3


def test_sign_flip_and_scale_manipulate_only_the_attackers_delta(honest: Worker) -> None:
    flip = worker(*ATTACK, "clients.byzantine.attack=sign_flip")
    bad, good = attackers(flip)
    np.testing.assert_array_equal(upload(flip, bad), -upload(honest, bad))
    np.testing.assert_array_equal(upload(flip, good), upload(honest, good))
    boost = worker(*ATTACK, "clients.byzantine.attack=scale", "clients.byzantine.scale=-3")
    np.testing.assert_array_equal(upload(boost, bad), scale(upload(honest, bad), -3.0))
    np.testing.assert_array_equal(upload(boost, good), upload(honest, good))


def test_gaussian_noise_comes_from_the_jobs_keyed_stream(honest: Worker) -> None:
    w = worker(*ATTACK, "clients.byzantine.attack=gaussian", "clients.byzantine.noise_std=0.5")
    bad, good = attackers(w)
    size = START[id(honest)].size
    for k in (3, 4):
        expected = stream(0, "byzantine_noise", bad, k).normal(0.0, 0.5, size).astype(np.float32)
        np.testing.assert_array_equal(upload(w, bad, k), expected)
    # another executor, other jobs run before: the same noise
    other = worker(*ATTACK, "clients.byzantine.attack=gaussian", "clients.byzantine.noise_std=0.5")
    upload(other, good, 9)
    np.testing.assert_array_equal(upload(other, bad, 4), upload(w, bad, 4))
    np.testing.assert_array_equal(upload(w, good), upload(honest, good))


def test_label_flip_changes_only_the_attackers_labels(honest: Worker) -> None:
    w = worker(*ATTACK, "clients.byzantine.attack=label_flip")
    classes = w.meta.num_classes
    for client in range(12):
        data, _ = w._client_data(job(w, client))
        y = data.y.numpy()
        truth = np.asarray(w.dataset.y_train[w.shards.shard(client)], dtype=np.int64)
        if client in w.byzantine:
            np.testing.assert_array_equal(y, flip_labels(truth, classes))
            assert (y != truth).any()
        else:
            np.testing.assert_array_equal(y, truth)
    bad, good = attackers(w)
    assert not np.array_equal(upload(w, bad), upload(honest, bad))  # it trained on the lies
    np.testing.assert_array_equal(upload(w, good), upload(honest, good))


@pytest.mark.parametrize("attack", ["alie", "none"])
def test_no_executor_side_change_for_alie_or_no_attack(attack: str, honest: Worker) -> None:
    extra: tuple[str, ...] = (*ATTACK, f"clients.byzantine.attack={attack}") if attack != "none" else ()
    w: Any = worker(*extra)
    for client in range(4):
        np.testing.assert_array_equal(upload(w, client), upload(honest, client))

"""AutoClip's global history on the server (engine/core/clip_history.py), by hand."""

from __future__ import annotations

import numpy as np

from algorithms.task import CLIP_NORMS_KEY, Clipping, Task
from engine.core import clip_history

SHARED = Clipping(mode="autoclip", scope="global")


def test_a_task_carries_the_history_only_when_its_clipping_shares_it() -> None:
    history = np.array([1.0, 2.0, 3.0])
    task, extra = clip_history.attach(Task(steps=2, batch_size=4, lr=0.1, clip=SHARED), history)
    assert task.clip_history is history and extra == 24  # three float64 norms
    plain, none = clip_history.attach(Task(steps=2, batch_size=4, lr=0.1), history)
    assert plain.clip_history is None and none == 0


def test_norms_are_appended_in_order_and_the_window_keeps_the_last() -> None:
    history = np.array([1.0, 2.0])
    sent = {CLIP_NORMS_KEY: np.array([3.0, 4.0, 5.0])}
    np.testing.assert_array_equal(clip_history.merge(history, sent, SHARED), [1, 2, 3, 4, 5])
    windowed = Clipping(mode="autoclip", scope="global", window=3)
    np.testing.assert_array_equal(clip_history.merge(history, sent, windowed), [3, 4, 5])
    assert clip_history.merge(history, {}, SHARED) is history  # nothing sent: nothing changes
    per_client = Clipping(mode="autoclip", scope="client")
    assert clip_history.merge(history, sent, per_client) is history

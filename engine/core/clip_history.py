"""AutoClip's global history (``training.clip.scope=global``), kept by the server.

Every client clips against one history of gradient norms. The server holds it; a job
takes a copy at dispatch (its ``Task.clip_history``, charged on the download: 8 bytes a
norm) and returns the norms of its own steps beside its update (charged on the upload);
they join the history when the update is applied, in virtual-time order, so the history
and every threshold drawn from it are the same on any backend and executor count. Jobs
in flight at the same time do not see each other's norms, as real clients would not.
A dropped or rejected job's norms never arrive. ``training.clip.window`` bounds what is
kept, and so what each download costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from algorithms.task import CLIP_NORMS_KEY, Clipping, Task

EMPTY = np.zeros(0, dtype=np.float64)


def attach(task: Task, history: np.ndarray) -> tuple[Task, int]:
    """``task`` carrying the global history if its clipping shares one, and the bytes
    that adds to its download (0 when it does not share)."""
    if not task.clip.shares_history:
        return task, 0
    return dataclasses.replace(task, clip_history=history), int(history.nbytes)


def merge(history: np.ndarray, extra: Mapping[str, np.ndarray], clip: Clipping) -> np.ndarray:
    """``history`` with a job's norms (``extra``, its side upload) appended, the window
    applied; unchanged when the job sent none."""
    norms = extra.get(CLIP_NORMS_KEY)
    if norms is None or not clip.shares_history:
        return history
    merged = np.concatenate([history, np.asarray(norms, dtype=np.float64)])
    return merged[-clip.window :] if clip.window and len(merged) > clip.window else merged

"""Where per-client state lives between a client's jobs.

Some methods keep state per client that is as large as the model (error-feedback
residuals, control variates, a client's own frozen parameters). The loop hands a client's
state to its next job and stores what the job returns; any executor can run any client.

* ``memory``: a dict on the server (the default; right for small states or few clients).
* ``disk``: one ``.npy`` file per client in a folder, read when the job is sent and written
  when its result is applied, so the server holds only the states of jobs in flight:
  10,000 clients x 4 MB of state live on disk, not in memory (benchmarks/client_state.py).
  States must then be float/int arrays (data only: nothing is unpickled).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class MemoryStates:
    def __init__(self) -> None:
        self._states: dict[int, Any] = {}

    def get(self, client: int) -> Any:
        return self._states.get(client)

    def put(self, client: int, state: Any) -> None:
        self._states[client] = state

    def snapshot(self) -> dict[int, Any]:
        return dict(self._states)

    def restore(self, states: dict[int, Any]) -> None:
        self._states = dict(states)

    def close(self) -> None:
        self._states.clear()


class DiskStates:
    """States as ``<folder>/<client>.npy``; a folder it made itself is removed on close."""

    def __init__(self, folder: str = "") -> None:
        self._own = not folder
        self.folder = Path(folder or tempfile.mkdtemp(prefix="fedray-client-state-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._have = np.zeros(0, dtype=bool)  # which clients have a state file

    def _path(self, client: int) -> Path:
        return self.folder / f"{client}.npy"

    def get(self, client: int) -> Any:
        if client >= len(self._have) or not self._have[client]:
            return None
        return np.load(self._path(client), allow_pickle=False)

    def put(self, client: int, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, np.ndarray) or state.dtype == object:
            raise TypeError(
                f"server.client_state=disk stores numeric arrays only; client {client}'s state is "
                f"{type(state).__name__}: use server.client_state=memory"
            )
        if client >= len(self._have):
            self._have = np.concatenate([self._have, np.zeros(client + 1 - len(self._have), dtype=bool)])
        tmp = self._path(client).with_suffix(".tmp.npy")
        np.save(tmp, state, allow_pickle=False)
        os.replace(tmp, self._path(client))  # a crash never leaves a half-written state
        self._have[client] = True

    def snapshot(self) -> dict[int, Any]:
        raise ValueError("checkpoints of a run whose client states are on disk are not supported")

    def restore(self, states: dict[int, Any]) -> None:
        for client, state in states.items():
            self.put(client, state)

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.folder, ignore_errors=True)


ClientStates = MemoryStates | DiskStates


def client_states(kind: str, folder: str = "") -> ClientStates:
    return DiskStates(folder) if kind == "disk" else MemoryStates()

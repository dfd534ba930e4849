"""Where per-client state lives between a client's jobs.

Some methods keep state per client that is as large as the model (error-feedback
residuals, control variates, a client's own frozen parameters). The loop hands a client's
state to its next job and stores what the job returns; any executor can run any client.

* ``memory``: a dict on the server (the default; right for small states or few clients).
* ``disk``: one ``.npy`` file per client in a folder, read when the job is handed to an
  executor (not at dispatch), so the server holds only the states of jobs computing:
  10,000 clients x 4 MB of state live on disk, not in memory (benchmarks/client_state.py).
  States must then be float/int arrays (data only: nothing is unpickled).

A job's new state is *staged* when its result arrives (written to its own file at once,
so results waiting for their virtual finish time hold no state in memory) and *committed*
as the client's state only if the update is applied; a dropped or discarded job's state
is thrown away, as the client's work never reached the server.
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
        self._staged: dict[int, Any] = {}  # by job uid

    def get(self, client: int) -> Any:
        return self._states.get(client)

    def put(self, client: int, state: Any) -> None:
        self._states[client] = state

    def stage(self, uid: int, state: Any) -> None:
        self._staged[uid] = state

    def commit(self, uid: int, client: int) -> None:
        self._states[client] = self._staged.pop(uid)

    def discard(self, uid: int) -> None:
        self._staged.pop(uid, None)

    def snapshot(self) -> dict[int, Any]:
        return dict(self._states)

    def restore(self, states: dict[int, Any]) -> None:
        self._states = dict(states)

    def close(self) -> None:
        self._states.clear()
        self._staged.clear()


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
        tmp = self.folder / f"put-{client}.npy"
        self._write(tmp, state, client)
        self._install(tmp, client)

    def stage(self, uid: int, state: Any) -> None:
        self._write(self.folder / f"staged-{uid}.npy", state, None)

    def commit(self, uid: int, client: int) -> None:
        self._install(self.folder / f"staged-{uid}.npy", client)

    def discard(self, uid: int) -> None:
        (self.folder / f"staged-{uid}.npy").unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, state: Any, client: int | None) -> None:
        if not isinstance(state, np.ndarray) or state.dtype == object:
            who = "a client" if client is None else f"client {client}"
            raise TypeError(
                f"server.client_state=disk stores numeric arrays only; {who}'s state is "
                f"{type(state).__name__}: use server.client_state=memory"
            )
        np.save(path, state, allow_pickle=False)

    def _install(self, path: Path, client: int) -> None:
        if client >= len(self._have):
            self._have = np.concatenate([self._have, np.zeros(client + 1 - len(self._have), dtype=bool)])
        os.replace(path, self._path(client))  # atomic: a crash never leaves a half-written state
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

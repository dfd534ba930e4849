"""Checkpoint and resume of a virtual-time run.

A checkpoint is the server's whole state at an instant boundary (every event of the
instant applied, its dispatch done): the algorithm's explicit state, the recorder, the
job counters and client states, and the jobs in flight with the model versions they
start from. Results of in-flight jobs are *not* saved: a job's result depends only on
its spec and start model, so a resumed run computes them again and continues exactly
as the uninterrupted run would (tested: identical events and metrics).

Checkpoints are plain pickles of this module's dataclass, so Tune (or a user) can store
them anywhere; ``resume`` accepts one taken under another config of the same algorithm
and workload (Population Based Training continues a trial from another's checkpoint
with mutated hyperparameters).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.clock import Priority

if TYPE_CHECKING:
    from engine.jobs import InFlight
    from engine.server import Server

FORMAT = 2  # 2: evaluations hold a dict of metrics (local test splits)


@dataclass(frozen=True)
class Checkpoint:
    format: int
    algorithm: str
    workload: str
    clients: int
    state: Any  # the algorithm's frozen state dataclass
    now: float
    next_seq: int
    dispatch_calls: int
    job_counter: np.ndarray
    client_states: dict[int, Any]
    in_flight: tuple[tuple[InFlight, bool], ...]  # (job without its result, held back)
    params: dict[int, np.ndarray]  # the versions in-flight jobs and pending evaluations start from
    pending_evals: tuple[int, ...]
    target_models: dict[int, np.ndarray]
    recorder: Any  # RunRecorder

    @property
    def version(self) -> int:
        return int(self.state.version)


def snapshot(server: Server) -> bytes:
    """The server's state now (call at an instant boundary, in virtual mode)."""
    cfg = server.cfg
    jobs = []
    versions = set(server.rec.pending_evals)
    for f in sorted(server.in_flight.by_seq.values(), key=lambda f: f.seq):
        versions.add(f.version)
        jobs.append((dataclasses.replace(f, output=None, held=None), f.held is not None))
    ckpt = Checkpoint(
        format=FORMAT,
        algorithm=cfg.algorithm.name,
        workload=cfg.workload.name,
        clients=cfg.clients.num,
        state=server.state,
        now=server.now,
        next_seq=server.ready.seq,
        dispatch_calls=server.dispatch_calls,
        job_counter=server.job_counter.copy(),
        client_states=dict(server.client_states),
        in_flight=tuple(jobs),
        params={v: server.versions.params(v) for v in sorted(versions)},
        pending_evals=tuple(sorted(server.rec.pending_evals)),
        target_models=dict(server.target_models),
        recorder=server.rec,
    )
    return pickle.dumps(ckpt, protocol=pickle.HIGHEST_PROTOCOL)


class Snapshots:
    """The server's snapshots: one is due at every ``every``-th version (0 = never) and is
    taken at the end of that instant (every event applied, dispatch done), keyed by the due
    version even if the instant made more. The latest few wait for a reader that lags."""

    KEEP = 4

    def __init__(self, every: int) -> None:
        self.every = every
        self.due: int | None = None
        self.taken: dict[int, bytes] = {}

    def on_version(self, version: int) -> None:
        if self.every and version > 0 and version % self.every == 0:
            self.due = version

    def take_if_due(self, server: Server) -> None:
        if self.due is not None:
            self.taken[self.due] = snapshot(server)
            self.due = None
            self.taken = dict(sorted(self.taken.items())[-self.KEEP :])

    def pop(self, version: int) -> bytes | None:
        return self.taken.pop(version, None)


def load(data: bytes, cfg: Any) -> Checkpoint:
    """Unpickle ``data`` and check it can continue under ``cfg``; ValueError says why not."""
    try:
        ckpt = pickle.loads(data)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"not a fedray checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, Checkpoint) or ckpt.format != FORMAT:
        raise ValueError("not a fedray checkpoint of this version")
    theirs = (ckpt.algorithm, ckpt.workload, ckpt.clients)
    ours = (cfg.algorithm.name, cfg.workload.name, cfg.clients.num)
    if theirs != ours:
        raise ValueError(
            f"the checkpoint is of (algorithm, workload, clients) = {theirs} but the config has {ours}; "
            "resume under the same three"
        )
    return ckpt


def restore(server: Server, ckpt: Checkpoint) -> None:
    """Put ``ckpt`` into a server whose loop structures are freshly built, and send its
    in-flight jobs to the pool again."""
    server.state = ckpt.state
    server.now = ckpt.now
    server.dispatch_calls = ckpt.dispatch_calls
    server.job_counter = ckpt.job_counter.copy()
    server.client_states = dict(ckpt.client_states)
    server.target_models = dict(ckpt.target_models)
    server.ready.restore_seq(ckpt.next_seq)
    rec = ckpt.recorder
    rec.cfg = server.cfg  # PBT may resume under mutated hyperparameters
    rec.pending_evals = set()
    server.rec = rec
    server.versions.set_current(server.state.version, server.state.model)
    for v, params in ckpt.params.items():
        server.versions.add(v, params)
    for f, held in ckpt.in_flight:
        server.in_flight.add(f, computed=not f.dropped)
        if f.dropped:
            server.ready.push(f.lower_bound, Priority.COMPLETION, f, seq=f.seq)
        else:
            server._send(f, hold=held)
    for v in ckpt.pending_evals:
        server._evaluate(v)

"""Checkpoint and resume of a virtual-time run.

A checkpoint is the loop's whole state (engine/core/state.py) at an instant boundary
(every event of the instant applied, its dispatch done): the algorithm's explicit state,
the recorder, the job counters and client states, the server queue and its work, and the
jobs in flight with the model versions they start from. Results of in-flight jobs are
*not* saved: a job's result depends only on its spec and start model, so a resumed run
computes them again and continues exactly as the uninterrupted run would (tested:
identical events and metrics).

Checkpoints are data only (engine/core/serial.py: a JSON tree and numpy arrays in one
``.npz``, read without unpickling), so loading one from someone else cannot run code. Tune
(or a user) can store them anywhere. ``load`` accepts one taken under another config of the
same algorithm, workload and client count (Population Based Training continues a trial
from another's checkpoint
with mutated hyperparameters).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine import __version__
from engine.config import to_dict
from engine.core import serial
from engine.core.clock import Priority
from engine.core.server_queue import ServerQueue

if TYPE_CHECKING:
    from engine.core.jobs import InFlight, ServerWork
    from engine.core.state import LoopState


class Simulation(Protocol):
    """What a checkpoint needs of the loop (engine/core/loop.py): its config and state,
    and the way back to the backend for work that was in flight."""

    cfg: Any
    s: LoopState

    def send(self, f: InFlight, hold: bool = False) -> None: ...

    def send_server_work(self, w: ServerWork) -> None: ...

    def evaluate(self, version: int) -> None: ...


FORMAT = 6  # 4: data only (engine/core/serial.py), with the fedray version and config; 5: clip_history;
# 6: job costs with streamed uploads, server jobs computed by the algorithm (split learning)


@dataclass(frozen=True)
class Checkpoint:
    format: int
    fedray_version: str
    config: dict[str, Any]  # the run's resolved configuration (config.yaml's content)
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
    server: ServerQueue
    server_work: tuple[ServerWork, ...]  # results computed on the pool are computed again on resume
    server_seq: int
    clip_history: np.ndarray  # AutoClip's global history (engine/core/clip_history.py)

    @property
    def version(self) -> int:
        return int(self.state.version)


def snapshot(sim: Simulation) -> bytes:
    """The loop's state now (call at an instant boundary, in virtual mode)."""
    cfg, s = sim.cfg, sim.s
    jobs = []
    versions = set(s.recorder.pending_evals)
    for f in sorted(s.jobs.by_seq.values(), key=lambda f: f.seq):
        versions.add(f.version)
        jobs.append((dataclasses.replace(f, output=None, held=None, staged=False), f.held is not None))
    work = tuple(
        dataclasses.replace(w, model=None if w.job.on_pool else w.model)
        for w in sorted(s.server_work.values(), key=lambda w: w.seq)
    )
    ckpt = Checkpoint(
        format=FORMAT,
        fedray_version=__version__,
        config=to_dict(cfg),
        algorithm=cfg.algorithm.name,
        workload=cfg.workload.name,
        clients=cfg.clients.num,
        state=s.algorithm,
        now=s.now,
        next_seq=s.ready.seq,
        dispatch_calls=s.dispatch_calls,
        job_counter=s.job_counter.copy(),
        client_states=s.client_states.snapshot(),
        in_flight=tuple(jobs),
        params={v: s.versions.params(v) for v in sorted(versions)},
        pending_evals=tuple(sorted(s.recorder.pending_evals)),
        target_models=dict(s.target_models),
        recorder=s.recorder,
        server=dataclasses.replace(s.server, free_at=list(s.server.free_at)),
        server_work=work,
        server_seq=s.server_seq,
        clip_history=s.clip_history,
    )
    return serial.dumps(ckpt)


class Snapshots:
    """The loop's snapshots: one is due at every ``every``-th version (0 = never) and is
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

    def take_if_due(self, sim: Simulation) -> None:
        if self.due is not None:
            self.taken[self.due] = snapshot(sim)
            self.due = None
            self.taken = dict(sorted(self.taken.items())[-self.KEEP :])

    def pop(self, version: int) -> bytes | None:
        return self.taken.pop(version, None)


def read(data: bytes) -> Checkpoint:
    """A checkpoint from its bytes; ValueError says why not."""
    try:
        ckpt = serial.loads(data)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"not a fedray checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, Checkpoint) or ckpt.format != FORMAT:
        raise ValueError("not a fedray checkpoint of this format")
    if ckpt.fedray_version != __version__:
        raise ValueError(
            f"the checkpoint is from fedray {ckpt.fedray_version}, this is {__version__}; "
            "resume it with that version"
        )
    return ckpt


def load(data: bytes, cfg: Any, same_config: bool = False) -> Checkpoint:
    """``data`` as a checkpoint that can continue under ``cfg``; ValueError says why not.
    ``same_config``: the whole configuration must be the one it was taken under (out_dir
    aside); otherwise only the algorithm, workload and client count."""
    ckpt = read(data)
    if same_config:
        mine, stored = to_dict(cfg), dict(ckpt.config)
        mine.pop("out_dir"), stored.pop("out_dir", None)
        diff = sorted(k for k in mine.keys() | stored.keys() if mine.get(k) != stored.get(k))
        if diff:
            raise ValueError(
                f"the checkpoint was taken under another configuration ({', '.join(diff)} differ)"
            )
    theirs = (ckpt.algorithm, ckpt.workload, ckpt.clients)
    ours = (cfg.algorithm.name, cfg.workload.name, cfg.clients.num)
    if theirs != ours:
        raise ValueError(
            f"the checkpoint is of (algorithm, workload, clients) = {theirs} but the config has {ours}; "
            "resume under the same three"
        )
    return ckpt


def restore(sim: Simulation, ckpt: Checkpoint) -> None:
    """Put ``ckpt`` into a loop whose state is freshly built, and send its in-flight jobs
    and fine-tuning to the backend again."""
    s = sim.s
    s.algorithm = ckpt.state
    s.now = ckpt.now
    s.dispatch_calls = ckpt.dispatch_calls
    s.job_counter = ckpt.job_counter.copy()
    s.client_states.restore(ckpt.client_states)
    s.target_models = dict(ckpt.target_models)
    s.ready.restore_seq(ckpt.next_seq)
    rec = ckpt.recorder
    rec.cfg = sim.cfg  # PBT may resume under mutated hyperparameters
    rec.pending_evals = set()
    s.recorder = rec
    s.server = dataclasses.replace(ckpt.server, free_at=list(ckpt.server.free_at))
    s.server_seq = ckpt.server_seq
    s.clip_history = ckpt.clip_history
    s.versions.set_current(s.algorithm.version, s.algorithm.model)
    for v, params in ckpt.params.items():
        s.versions.add(v, params)
    for f, held in ckpt.in_flight:
        s.jobs.add(f, computed=not f.dropped)
        if f.dropped:
            s.ready.push(f.lower_bound, Priority.COMPLETION, f, seq=f.seq)
        else:
            sim.send(f, hold=held)
    for w in ckpt.server_work:
        w = dataclasses.replace(w)
        s.server_work[w.uid] = w
        if w.model is None:
            sim.send_server_work(w)
        else:
            s.ready.push(w.finish, Priority.TIMER, w, seq=w.seq)  # checkpoints are virtual-time
    for v in ckpt.pending_evals:
        sim.evaluate(v)

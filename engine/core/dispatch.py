"""What dispatching costs: a job's timing and bytes from its own ``JobCost`` and the
client's delay model, the message the backend gets, and server work on the server queue.

A job lasts ``download + compute + exchanges + upload``: download of its ``bytes_down``
(default the whole model), compute over its share of the model (``compute_fraction``) on
the examples it processes, ``round_trips`` blocking exchanges (latency both ways plus
their bytes) plus the server seconds it waits for, and the upload of what it really sends
(the encoded payload, known only once it computed, unless the job fixed ``bytes_up``).
"""

from __future__ import annotations

from typing import Any

import engine.core.clip_history as clip_history
from algorithms.base import Job, ServerJob
from engine.core.backend import FINETUNE, SERVER, JobOutput, JobSpec
from engine.core.delays import DelayModel
from engine.core.jobs import InFlight, ServerWork
from engine.core.state import LoopState


def in_flight(s: LoopState, delays: DelayModel, shard_size: int, model_bytes: int, job: Job) -> InFlight:
    """The bookkeeping of ``job`` dispatched now: its sequence, timing and bytes."""
    c = job.client
    k = int(s.job_counter[c])
    s.job_counter[c] += 1
    cost = job.cost
    task, history_bytes = clip_history.attach(job.task, s.clip_history)
    down_bytes = (model_bytes if cost.bytes_down is None else cost.bytes_down) + history_bytes
    down = delays.download_time(c, down_bytes)
    compute = delays.compute_time(c, k, job.task.samples(shard_size))
    if cost.compute_fraction != 1.0:
        compute *= cost.compute_fraction
    exchange = cost.server_seconds
    if cost.round_trips:
        trip = delays.round_trip_time(c, cost.round_trip_bytes_up, cost.round_trip_bytes_down)
        exchange += cost.round_trips * trip
    if cost.stream_uploads:
        each = cost.stream_bytes_up / delays.up_rate(c)
        exchange += stream_overrun(compute, cost.stream_uploads, each)
    # With no exchange this adds 0.0, which leaves the float sum exactly as without it.
    bound = s.now + down + compute + exchange + float(delays.latency[c])
    return InFlight(
        seq=s.ready.next_seq(),
        client=c,
        job_index=k,
        task=task,
        version=s.algorithm.version,
        dispatch_time=s.now,
        download=down,
        compute=compute,
        bytes_down=down_bytes + cost.round_trips * cost.round_trip_bytes_down,
        lower_bound=bound,
        exchange=exchange,
        cost=cost,
    )


def stream_overrun(compute: float, uploads: int, seconds_each: float) -> float:
    """How long the uplink stays busy after the compute ends, for ``uploads`` streamed
    uploads of ``seconds_each`` on the wire, evenly spaced from the compute's start (the
    k-th of n ready at k/n of it, k from 0: every Q-th step from the first), each waiting
    for the one before it."""
    busy_until = 0.0
    for k in range(uploads):
        busy_until = max(busy_until, compute * k / uploads) + seconds_each
    return max(0.0, busy_until - compute)


def final_upload(f: InFlight, out: JobOutput) -> int:
    """The bytes of the upload that ends ``f``: what it really sent, or what its cost fixed."""
    return out.bytes_up if f.cost.bytes_up is None else f.cost.bytes_up


def bytes_uploaded(f: InFlight, out: JobOutput) -> int:
    """Everything ``f`` sent: its final upload, its exchanges' and its streamed uploads."""
    cost = f.cost
    return (
        final_upload(f, out)
        + cost.round_trips * cost.round_trip_bytes_up
        + cost.stream_uploads * cost.stream_bytes_up
    )


def finish_time(delays: DelayModel, f: InFlight, out: JobOutput) -> float:
    """When ``f`` ends: its upload of what it really sent follows its compute."""
    return (
        f.dispatch_time
        + f.download
        + f.compute
        + f.exchange
        + delays.upload_time(f.client, final_upload(f, out))
    )


def expected_finish(delays: DelayModel, model_bytes: int, f: InFlight) -> float:
    """When ``f`` would finish if its upload were a dense model (or its fixed size): the
    engine's own estimate for over-selection (no algorithm ever sees it)."""
    up = model_bytes if f.cost.bytes_up is None else f.cost.bytes_up
    return f.lower_bound - float(delays.latency[f.client]) + delays.upload_time(f.client, up)


def job_spec(cfg: Any, s: LoopState, delays: DelayModel, loop_wall_start: float, f: InFlight) -> JobSpec:
    wall = cfg.clock.mode == "wall"
    scale = cfg.clock.wall_scale
    pad = loop_wall_start + (f.dispatch_time + f.download + f.compute + f.exchange) * scale if wall else 0.0
    up = delays.up_rate(f.client) / scale if wall else 0.0
    return JobSpec(
        f.seq,
        f.client,
        f.job_index,
        f.task,
        0,
        None,  # its client state is read by the backend when the job is handed to an executor
        urgency=f.lower_bound,
        pad_until=pad,
        up_bytes_per_s=float(up),
        stack=f.stack,
        group=f.group,
    )


def server_work(s: LoopState, job: ServerJob) -> ServerWork:
    """Put ``job`` on the server queue now. Unless it is computed on the pool, its result is
    its own model, known at once and due at its finish."""
    w = ServerWork(s.server_seq, job, s.now, *s.server.schedule(s.now, job.seconds))
    s.server_seq += 1
    s.server_work[w.uid] = w
    if not job.on_pool:
        w.model = job.model
    return w


def server_spec(cfg: Any, w: ServerWork) -> JobSpec:
    """The pool's job for server work ``w``: fine-tuning on the server's examples, or the
    algorithm's ``server_update`` with the job's inputs (they travel as its client state)."""
    if w.job.compute:
        return JobSpec(w.uid, -1, w.job.key, cfg.server.finetune_task, 0, w.job.inputs, w.finish, kind=SERVER)
    return JobSpec(w.uid, -1, w.job.key, cfg.server.finetune_task, 0, urgency=w.finish, kind=FINETUNE)

"""Run one experiment: ``python -m engine.run [--config FILE] [key=value ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Ray 2.5x token auth: keep it on and say so explicitly (Ray warns when it is left implicit).
# Ray reads this when it is imported, so it is set only if nothing imported ray yet (setting
# it later desynchronises the driver from the processes it starts). A cluster that runs
# with auth disabled on a private network exports RAY_AUTH_MODE itself.
if "ray" not in sys.modules:
    os.environ.setdefault("RAY_AUTH_MODE", "token")

from engine.config import OPEN_SECTIONS, Config, ConfigError, describe_keys, load_config
from engine.results import default_out_dir, write_results

if TYPE_CHECKING:
    from engine.pool import Placement  # imports ray: only after RAY_AUTH_MODE is settled

EXAMPLES = """\
examples:
  python -m engine.run                                  # FedBuff, synthetic, 50 lognormal-speed clients
  python -m engine.run --config configs/fedasync.yaml
  python -m engine.run algorithm.name=fedavg algorithm.clients_per_round=20 clients.num=200
  python -m engine.run clients.speed.family=tiers clients.speed.tier_factors=[1,100] executors.num=2
  python -m engine.run ray.address=auto out_dir=results/run1   # on a cluster made by `ray up`

keys (dotted, with defaults; --list shows each algorithm's and workload's own keys):
"""


def _parser() -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k:<34} {v!r}" for k, v in describe_keys())
    p = argparse.ArgumentParser(
        prog="python -m engine.run",
        description="Run one federated-learning experiment in virtual time on Ray and write its results "
        "(metrics.csv, events.csv, summary.json, config.yaml, plots) under out_dir.",
        epilog=EXAMPLES + keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML experiment file (see configs/)")
    p.add_argument("--list", action="store_true", help="list algorithms, workloads, partitions, delay models")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. clients.num=100")
    return p


def list_components() -> str:
    from engine.delays import describe_families
    from workloads.partition import PARTITIONS

    lines = []
    for section, registry in OPEN_SECTIONS.items():
        lines.append(f"{section}s ({section}.name=...):")
        for name, cls in registry.items():
            doc = (getattr(cls, "description", "") or (cls.__doc__ or "")).strip().splitlines()
            lines.append(f"  {name:<12} {doc[0] if doc else ''}")
            params = ", ".join(
                f"{f.name}={getattr(cls.Params(), f.name)!r}" for f in dataclasses.fields(cls.Params)
            )
            lines.append(f"  {'':<12} keys: {params}")
    lines.append("partitions (partition.name=...): " + ", ".join(PARTITIONS))
    lines.append("client speed families (clients.speed.family=...):")
    lines.extend(f"  {name:<12} {text}" for name, text in describe_families())
    return "\n".join(lines)


def connect_ray(cfg: Config) -> bool:
    """Start a local Ray or attach to a cluster. Returns True if this call started it
    (and so must shut it down); a Ray that was already running is left alone."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus or None,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    return True


def resolve_executors(cfg: Config) -> int:
    """Check the cluster can host the executors; fail fast instead of pending forever."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    ex = cfg.executors
    if ex.num_gpus > 0 and gpus == 0:
        raise ConfigError(
            f"executors.num_gpus={ex.num_gpus} but the Ray cluster has no GPU; set executors.num_gpus=0 "
            "or attach to a cluster with GPUs (ray.address=auto)"
        )
    usable = cpus - cfg.server.num_cpus
    num = ex.num or max(1, int(usable // ex.num_cpus))
    if ex.num_gpus > 0 and not ex.num:
        num = min(num, max(1, int(gpus // ex.num_gpus)))
    if num * ex.num_cpus > usable + 1e-9:
        raise ConfigError(
            f"executors.num={num} x executors.num_cpus={ex.num_cpus} needs {num * ex.num_cpus:g} CPUs "
            f"but the cluster has {usable:g} free for executors; lower executors.num or executors.num_cpus"
        )
    if num * ex.num_gpus > gpus + 1e-9:
        raise ConfigError(
            f"executors.num={num} x executors.num_gpus={ex.num_gpus} needs {num * ex.num_gpus:g} GPUs "
            f"but the cluster has {gpus:g}; lower executors.num or executors.num_gpus"
        )
    return num


ProgressHook = Callable[[dict[str, Any]], None]


def _near_driver(cfg: Config) -> Any:
    """The server on the driver's node (on a cluster, the head): worker nodes may come and
    go (autoscaling, spot) and a run survives losing executors, not its server. A server
    that asks for no CPU always fits there (Ray's soft affinity still moved it away);
    one that asks for CPUs may go elsewhere if that node has none free."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return NodeAffinitySchedulingStrategy(node, soft=cfg.server.num_cpus > 0)


def run_experiment(
    cfg: Config,
    *,
    show_progress: bool = False,
    on_progress: ProgressHook | None = None,
    on_evaluation: ProgressHook | None = None,
    write: bool = True,
    placement: Placement | None = None,
    resume: bytes | None = None,
    executors: list[Any] | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """Run ``cfg`` on the connected Ray; write its results; return (result, out_dir).

    ``on_progress`` gets the server's progress dict about four times a second;
    ``on_evaluation`` gets every evaluation row exactly once, in version order
    (``version, accuracy, loss, sim_time, wall_time, updates, bytes_up, ...``).
    ``placement`` pins the server and each executor to its own bundle of a placement
    group (a Tune trial's); the group reserved them, so the cluster is not checked.
    ``resume`` continues from a checkpoint (engine/checkpoint.py): with ``checkpoint.every``
    set, evaluation rows carry one under ``"checkpoint"`` (bytes) every that many versions.
    ``executors``: executor actors (``engine.pool.bare_executor``) this run sets up and
    uses instead of starting its own, and leaves running for the caller's next run.
    """
    import ray
    from tqdm import tqdm

    from engine.server import Server

    if resume is not None:
        from engine import checkpoint

        try:  # fail here, in one line, rather than in the server actor's constructor
            checkpoint.load(resume, cfg)
        except ValueError as e:
            raise ConfigError(f"cannot resume: {e}") from None
    num = resolve_executors(cfg) if placement is None else placement.executors
    if executors is not None and len(executors) != num:
        raise ValueError(f"{len(executors)} executors handed in for a run of {num}")
    run_id = uuid.uuid4().hex[:8]
    out_dir = default_out_dir(cfg, f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:4]}")
    where = {"scheduling_strategy": placement.server() if placement else _near_driver(cfg)}
    args = (cfg, run_id, num, placement, resume, executors)
    server = Server.options(num_cpus=cfg.server.num_cpus, **where).remote(*args)  # type: ignore[attr-defined]
    bar = tqdm(
        total=cfg.stop.max_versions or None, unit="version", disable=not show_progress, file=sys.stderr
    )
    seen = 0

    def evaluations() -> None:
        nonlocal seen
        if on_evaluation is not None:
            rows = ray.get(server.evaluations.remote(seen))
            seen += len(rows)
            for row in rows:
                on_evaluation(row)

    try:
        ref = server.run.remote()
        while not ray.wait([ref], timeout=0.25)[0]:
            evaluations()
            info = ray.get(server.progress.remote())
            if on_progress is not None:
                on_progress(info)
            bar.set_description(info.get("phase", ""), refresh=False)
            if "version" in info:
                bar.update(max(0, info["version"] - bar.n))
                post = {
                    "sim_t": f"{info['sim_time']:.4g}",
                    "acc": f"{info.get('accuracy', float('nan')):.3f}",
                }
                bar.set_postfix(post, refresh=False)
        result = ray.get(ref)
        if "config_error" in result:
            raise ConfigError(result["config_error"])
        evaluations()
        bar.update(max(0, result["summary"]["versions"] - bar.n))
    finally:
        bar.close()
        ray.kill(server)
    path = write_results(out_dir, cfg, result) if write else None
    return result, path


def closing_table(summary: dict[str, Any], path: Path | None) -> str:
    def num(x: Any, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    rows = [
        (
            "final accuracy",
            f"{num(summary['final_accuracy'], '.4f')} (best {num(summary['best_accuracy'], '.4f')})",
        ),
        ("virtual time", f"{summary['sim_time']:.6g} s"),
        ("wall time", f"{summary['wall_time']:.1f} s (of which start-up {summary['setup_seconds']:.1f} s)"),
        ("updates applied", f"{summary['updates_applied']} ({summary['jobs_dropped']} jobs dropped)"),
        ("mean staleness", f"{summary['mean_staleness']:.2f} (max {summary['max_staleness']})"),
        ("global versions", f"{summary['versions']} (stopped by {summary['stop_reason']})"),
    ]
    if "time_to_target" in summary:
        rows.append(("time to target", f"{num(summary['time_to_target'], '.6g')} s virtual"))
    head = (
        f"{summary['algorithm']} on {summary['workload']}, {summary['clients']} clients, "
        f"seed {summary['seed']}"
    )
    body = "\n".join(f"  {k:<16} {v}" for k, v in rows)
    return f"{head}\n{body}\nresults: {path}" if path else f"{head}\n{body}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)  # options may come after key=value pairs
    if args.list:
        print(list_components())
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    import ray

    started = connect_ray(cfg)
    try:
        result, path = run_experiment(cfg, show_progress=not args.quiet)
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    except ray.exceptions.RayTaskError as e:
        print(f"fedray: the run failed: {e.cause!r}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()
    print(closing_table(result["summary"], path))
    return 0


if __name__ == "__main__":
    sys.exit(main())

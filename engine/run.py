"""Run one experiment: ``python -m engine.run [--config FILE] [key=value ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from engine.config import OPEN_SECTIONS, Config, ConfigError, build_config, describe_keys, load_config
from engine.experiment import Interrupt, RunFailedError, run_experiment

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
    p.add_argument(
        "--resume",
        metavar="OUT_DIR",
        help="continue the run whose results folder is OUT_DIR from its latest checkpoint "
        "(checkpoint.every > 0 writes them to OUT_DIR/checkpoints/); its configuration comes "
        "from the checkpoint, and --config or key=value, if given, must match it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. clients.num=100")
    return p


def _keys(params: Any, prefix: str = "") -> list[str]:
    """``key=default`` for --list; a nested section's keys dotted (``codec.name='none'``),
    each at its declared default (``None`` where the section resolves it from others)."""
    out = []
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.extend(_keys(value, f"{prefix}{f.name}."))
            continue
        if prefix and f.default is not dataclasses.MISSING:
            value = f.default
        out.append(f"{prefix}{f.name}={value!r}")
    return out


def list_components() -> str:
    from engine.core.delays import SPEED_PLUGINS, describe_families
    from workloads.partition import PARTITION_PLUGINS, PARTITIONS

    lines = []
    for section, registry in OPEN_SECTIONS.items():
        lines.append(f"{section}s ({section}.name=...; or a plug-in: package.module:Class, ./file.py:Class):")
        for name, cls in registry.discover():  # built-ins, then installed entry points
            doc = (getattr(cls, "description", "") or (cls.__doc__ or "")).strip().splitlines()
            lines.append(f"  {name:<12} {doc[0] if doc else ''}")
            params = ", ".join(_keys(cls.Params()))
            lines.append(f"  {'':<12} keys: {params}")
    partitions = [*PARTITIONS, *(name for name, _ in PARTITION_PLUGINS.discover())]
    lines.append("partitions (partition.name=...; or a plug-in): " + ", ".join(partitions))
    lines.append("client speed families (clients.speed.family=...; or a plug-in):")
    lines.extend(f"  {name:<12} {text}" for name, text in describe_families())
    lines.extend(f"  {name:<12} (plug-in)" for name, _ in SPEED_PLUGINS.discover())
    return "\n".join(lines)


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
        if args.resume:
            cfg, resume = resume_from(args.resume, args.config, args.overrides)
        else:
            cfg, resume = load_config(args.config, args.overrides), None
    except ConfigError as e:
        print(f"fedray: error: {e}", file=sys.stderr)
        return 2
    with Interrupt() as interrupt:
        try:
            result, path = run_experiment(
                cfg, show_progress=not args.quiet, resume=resume, interrupt=interrupt, resume_same_config=True
            )
        except ConfigError as e:
            print(f"fedray: error: {e}", file=sys.stderr)
            return 2
        except RunFailedError as e:
            print(f"fedray: the run failed: {e}", file=sys.stderr)
            return 1
    print(closing_table(result["summary"], path))
    return interrupt.exit_code if interrupt.event.is_set() else 0


def resume_from(out_dir: str, config: str | None, overrides: list[str]) -> tuple[Config, bytes]:
    """The configuration and latest checkpoint of the run in ``out_dir``; its results go
    there again. A configuration given as well must be the checkpoint's (out_dir aside)."""
    from engine.core import checkpoint
    from engine.report.results import latest_checkpoint

    path = latest_checkpoint(out_dir)
    if path is None:
        raise ConfigError(
            f"no checkpoint in {out_dir}/checkpoints/; a run writes them with checkpoint.every > 0"
        )
    data = path.read_bytes()
    try:
        ckpt = checkpoint.read(data)
    except ValueError as e:
        raise ConfigError(f"cannot resume from {path}: {e}") from None
    raw = {**ckpt.config, "out_dir": ""}  # the folder exists: it is checked as the checkpoint's
    cfg = build_config(raw) if config is None and not overrides else load_config(config, overrides)
    return dataclasses.replace(cfg, out_dir=str(Path(out_dir))), data


if __name__ == "__main__":
    sys.exit(main())

"""pfl-research's CIFAR-10 benchmark shape on 2 cores: engine samples/s against plain PyTorch.

pfl-research's CIFAR-10 baseline (benchmarks/image_classification/configs/baseline.yaml):
1000 users x 50 images (iid), a cohort of 50 per round, 1 local epoch at batch 10 (5 local
steps), local lr 0.1, FedAvg with server lr 1, its CIFAR CNN (workloads.models cifar_cnn).
Here the same shape runs on generated CIFAR-shaped images (workload shapes with side=32,
channels=3, model=cifar_cnn: 50,000 uint8 (3, 32, 32) images), for 25 rounds instead of
1500, on a 2-CPU Ray with 2 executors x 1 CPU. Engine samples/s is taken in steady state:
between the first evaluated version after warm-up (round 5) and the last one, samples =
sum of the applied jobs' local_steps x 10 (from the events), seconds = difference of the
metrics' wall_time. The plain loop trains the same model class with SGD at batch 10 on the
same images, for the same number of steps, without Ray, in one process with
torch.set_num_threads(2); as a stricter baseline also two 1-thread processes side by side.
Plain and engine runs alternate. Efficiency = engine / plain. Target: >= 0.9.

The engine runs twice per repeat, side by side: as configured, and with partial sums
(``executors.partial_sums``, default half the cohort: each executor returns one sum of its
25 updates per round instead of each 6.5 MB update; ``--partial-sums 0`` skips it).

Extra ``key=value`` arguments are engine overrides, applied after the benchmark's own
(e.g. ``executors.max_batch=4``) and recorded in the JSON.

    python -m benchmarks.pfl_cifar [--quick] [--repeats N] [--no-write] [--partial-sums K] [key=value ...]
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from benchmarks._common import (
    config,
    engine_stats,
    local_ray,
    loop_seconds,
    machine_shares,
    parse_args,
    run,
    shares_table,
    table,
    write_json,
)
from benchmarks._plain import PlainLoop
from engine.config import ConfigError
from engine.report.results import EVENTS_COLUMNS
from workloads.shapes import Shapes, ShapesParams

TARGET = 0.9
BATCH = 10  # pfl-research's local_batch_size
PER_CLIENT = 50  # its mean_datapoints_per_user (constant): 1 epoch = 5 steps
LOCAL_LR = 0.1  # its local_learning_rate
SEED = 0
WORKLOAD = ("workload.name=shapes", "workload.side=32", "workload.channels=3", "workload.model=cifar_cnn")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the engine's key=value overrides) of ``argv``."""
    own = [a for a in argv if a.startswith("-") or "=" not in a]
    return own, [a for a in argv if a not in own]


def engine_overrides(size: dict[str, int]) -> list[str]:
    """The benchmark's own engine settings (the command line's come after them)."""
    return [
        *WORKLOAD,
        f"workload.train_samples={size['clients'] * PER_CLIENT}",
        f"workload.test_samples={size['test']}",  # evaluation stays a small share of the window
        "partition.name=iid",  # equal shards of 50: every job is 5 full batches of 10
        f"clients.num={size['clients']}",
        "algorithm.name=fedavg",
        f"algorithm.clients_per_round={size['cohort']}",
        "training.epochs=1",
        f"training.batch_size={BATCH}",
        f"training.lr={LOCAL_LR}",
        f"eval.every={size['eval_every']}",
        f"stop.max_versions={size['rounds']}",
        "executors.num=2",
        "executors.num_cpus=1",
        f"seed={SEED}",
    ]


def engine_throughput(size: dict[str, int], overrides: list[str]) -> dict[str, Any]:
    cfg = config(*engine_overrides(size), *overrides)
    result = run(cfg)
    metrics = {m["version"]: m for m in result["metrics"]}
    first, last = metrics[size["eval_every"]], metrics[max(metrics)]  # rounds 0 .. eval_every: warm-up
    steps_col, dropped_col = EVENTS_COLUMNS.index("local_steps"), EVENTS_COLUMNS.index("dropped")
    applied = [e[steps_col] for e in result["events"] if not e[dropped_col]]
    steps = int(sum(applied[first["updates"] : last["updates"]]))
    seconds = last["wall_time"] - first["wall_time"]
    executors = cfg.executors.num * cfg.executors.num_cpus
    return {
        "window_versions": [first["version"], last["version"]],
        "window_seconds": seconds,
        "steps": steps,
        "samples_per_s": steps * BATCH / seconds,
        "final_accuracy": last["accuracy"],
        # Executors' CPU seconds over the whole loop / the CPUs they were given: below 1,
        # they waited (for the server, or for a machine busy with other work).
        "executor_cpu_util": result["cpu"].get("Executor", float("nan"))
        / (loop_seconds(result["summary"]) * executors),
        # The server actor's CPU seconds per loop second: on 2 cores its aggregation of
        # every update (50 x 6.5 MB a round) takes CPU from the executors.
        "server_cpu_share": result["cpu"].get("Server", float("nan")) / loop_seconds(result["summary"]),
        # Where both cores went between the first and the last version (adds up to 1).
        "machine_shares": machine_shares(result["cpu_window"]),
        "engine": engine_stats(result["summary"]),
    }


def plain_baseline(size: dict[str, int]) -> PlainLoop:
    params = ShapesParams(
        train_samples=size["clients"] * PER_CLIENT,
        test_samples=size["test"],
        side=32,
        channels=3,
        model="cifar_cnn",
    )
    return PlainLoop(Shapes(params), size["clients"], BATCH, lr=LOCAL_LR, seed=SEED)


def _range(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def _partial_sums_flag(p: Any) -> None:
    p.add_argument(
        "--partial-sums",
        type=int,
        metavar="K",
        help="also run the engine with executors.partial_sums=K, side by side (default: half the "
        "cohort, one sum per executor and round; 0: do not)",
    )


def main() -> None:
    # parse_args knows only the script's flags: the key=value overrides are taken out first.
    argv, overrides = split_overrides(sys.argv[1:])
    sys.argv[1:] = argv
    description = str(__doc__).splitlines()[0] + " Extra key=value arguments: engine overrides."
    args = parse_args(description, extra=_partial_sums_flag)
    size = (
        {"clients": 100, "cohort": 10, "eval_every": 2, "rounds": 6, "test": 200}
        if args.quick
        else {"clients": 1000, "cohort": 50, "eval_every": 5, "rounds": 25, "test": 500}
    )
    k = size["cohort"] // 2 if args.partial_sums is None else args.partial_sums
    name = "engine 2x1 CPU" + "".join(f", {o}" for o in overrides)
    variants = {name: overrides}
    if k:
        variants[f"{name}, partial sums of {k}"] = [*overrides, f"executors.partial_sums={k}"]
    try:  # a bad override fails here, in one line, before any measurement
        for variant in variants.values():
            config(*engine_overrides(size), *variant)
    except ConfigError as e:
        sys.exit(f"pfl_cifar: error: {e}")
    # Every round is exactly `cohort` jobs of 5 steps, so the window's step count is known upfront.
    steps = (size["rounds"] - size["eval_every"]) * size["cohort"] * (PER_CLIENT // BATCH)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    plain: dict[str, list[float]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    with local_ray(2):
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every setup alike
            plain["1 process x 2 threads"].append(plain_baseline(size).samples_per_s(steps, 2))
            plain["2 processes x 1 thread"].append(plain_baseline(size).two_processes_samples_per_s(steps))
            for v, v_overrides in variants.items():
                runs[v].append(engine_throughput(size, v_overrides))
    med = {setup: statistics.median(values) for setup, values in plain.items()}
    base, best = med["1 process x 2 threads"], max(med.values())
    rows: list[list[Any]] = []
    efficiency: dict[str, dict[str, float]] = {}
    for v, v_runs in runs.items():
        values = [r["samples_per_s"] for r in v_runs]
        sps = statistics.median(values)
        util = statistics.median(r["executor_cpu_util"] for r in v_runs)
        rows.append([v, sps, _range(values), sps / base, sps / best, util])
        efficiency[v] = {"vs_plain_2_threads": sps / base, "vs_best_plain": sps / best}
    rows += [[f"plain {setup}", m, _range(plain[setup]), m / base, m / best, "-"] for setup, m in med.items()]
    print(
        f"\npfl-research CIFAR-10 shape: {size['clients']} clients x {PER_CLIENT} generated "
        f"(3, 32, 32) images, cohort {size['cohort']}, 1 epoch at batch {BATCH}, FedAvg, cifar_cnn; "
        f"{steps} steps in the window, rounds {size['eval_every']}-{size['rounds']} "
        f"(median of {args.repeats})\n"
    )
    print(
        table(["setup", "samples/s", "range", "vs plain 2 threads", "vs best plain", "exec CPU util"], rows)
    )
    for v, v_runs in runs.items():
        server = statistics.median(r["server_cpu_share"] for r in v_runs)
        print(f"\nserver actor CPU, {v}: {server:.3f} of one core over the loop")
    print("\n" + shares_table(runs))
    print(f"target: engine 2x1 >= {TARGET} x plain 1 process x 2 threads")
    for v, v_runs in runs.items():
        if any(r["steps"] != steps for r in v_runs):  # e.g. an override that changes the local work
            print(f"note: {v}'s window ran {[r['steps'] for r in v_runs]} steps, the plain loops {steps}")
    write_json(
        "pfl_cifar",
        {
            "size": size,
            "overrides": overrides,
            "engine_config": engine_overrides(size),
            "window_steps": steps,
            "repeats": args.repeats,
            "target": TARGET,
            "engine": runs,
            "plain_samples_per_s": plain,
            "efficiency": efficiency,
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()

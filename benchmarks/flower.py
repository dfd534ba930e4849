"""Optional: fedray against Flower's simulation engine on the same workload (wall-time ratio).

Flower is never a dependency of fedray: it pins its own Ray, so it lives in its own virtual
environment, and this script runs Flower's side there, in a subprocess
(benchmarks/_flower_side.py). Both sides build the same data from this repository's code:
the shapes workload's images (iid over 100 clients), its small CNN with the same seeded
initial weights, and fedray's local SGD in every client call. FedAvg with 10 clients per
round (sample-weighted average), 10 local steps at batch 32 and lr 0.05, 20 rounds,
evaluation of the global model on the 2000 test images every 5 rounds and at the end, on a
local Ray with 2 CPUs and 1 CPU per client actor (fedray: 2 executors x 1 CPU; Flower: its
actor pool, 2 actors x 1 CPU). The same runs with 0 local steps and 50 test images (so
evaluation costs next to nothing) show what a round and a client call cost each engine
when it trains nothing.

Times, per side, from each side's own clock in its own process (interpreter start and
library imports excluded on both): end to end = Ray start, data generation, actor
start-up, every round, the last evaluation and Ray's shutdown; rounds window = from the
moment round 5's model exists to the moment round 20's does (15 rounds, 150 client calls,
start-up excluded). Each repeat also times plain single-thread SGD steps under each environment's
torch build (they differ), so that raw compute speed is not read as engine overhead.

    python3 -m venv ~/venv-flower && ~/venv-flower/bin/pip install "flwr[simulation]" torch numpy
    python -m benchmarks.flower --flower-python ~/venv-flower/bin/python [--quick] [--repeats N] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, config, local_ray, table, write_json

HERE = Path(__file__).resolve().parent
FLOWER_SIDE = HERE / "_flower_side.py"
SGD_SPEED = HERE / "_sgd_speed.py"
SETUP_HINT = (
    'create it with: python3 -m venv ~/venv-flower && ~/venv-flower/bin/pip install "flwr[simulation]" '
    "torch numpy, then pass --flower-python ~/venv-flower/bin/python (see benchmarks/README.md)"
)
SEED = 0
NUM_CPUS = 2
CPUS_PER_CLIENT = 1

QUICK = {
    "clients": 20,
    "clients_per_round": 4,
    "rounds": 4,
    "eval_every": 2,
    "local_steps": 2,
    "train_samples": 20 * 64,
    "test_samples": 200,
    "sgd_steps": 30,
}
FULL = {
    "clients": 100,
    "clients_per_round": 10,
    "rounds": 20,
    "eval_every": 5,
    "local_steps": 10,
    "train_samples": 100 * 200,
    "test_samples": 2000,
    "sgd_steps": 300,
}
NOOP_TEST_SAMPLES = 50
COMMON = {"batch_size": 32, "lr": 0.05, "eval_batch_size": 1024, "seed": SEED}


def parse_args() -> argparse.Namespace:
    """benchmarks._common.parse_args' flags (--quick, --repeats, --no-write) plus --flower-python."""
    p = argparse.ArgumentParser(description=str(__doc__).splitlines()[0])
    p.add_argument(
        "--flower-python",
        default=os.environ.get("FLOWER_PYTHON"),
        help="the python of a virtual environment with flwr[simulation] and torch (default: $FLOWER_PYTHON)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (~2-3 min), to smoke-check the script")
    p.add_argument("--repeats", type=int, help="runs per measurement (default 3, 1 with --quick)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS_DIR.name}/flower.json")
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def _env() -> dict[str, str]:
    """The environment for the other interpreter: nothing of this one's Ray or paths, and
    no Flower telemetry (this machine may have no network to send it to)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RAY_")}
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def flower_versions(python: str | None) -> dict[str, str] | None:
    """flwr, Ray and torch versions of the Flower environment, or None if it is unusable."""
    if not python or not Path(python).exists():
        return None
    try:
        proc = subprocess.run(
            [python, str(FLOWER_SIDE), "--check"], env=_env(), capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _subprocess_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def sgd_ms_per_step(python: str, steps: int) -> float:
    """Plain single-thread SGD speed of the shapes CNN under ``python``'s torch, ms per step."""
    out = _subprocess_json([python, str(SGD_SPEED), str(steps)], timeout=300)
    return 1000.0 * float(out["seconds"]) / steps


def _window(size: dict[str, Any], made: dict[int, float], evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures both sides report, from when each evaluated round's model was made."""
    first, last = size["eval_every"], size["rounds"]
    calls = (last - first) * size["clients_per_round"]
    seconds = made[last] - made[first]
    final = max(evals, key=lambda e: e["round"])
    return {
        "window_rounds": [first, last],
        "window_seconds": seconds,
        "window_calls": calls,
        "ms_per_round": 1000.0 * seconds / (last - first),
        "ms_per_call": 1000.0 * seconds / calls,
        "evals": evals,
        "final_accuracy": final["accuracy"],
        "final_loss": final["loss"],
    }


def data_digest(dataset: Any, indices: Any, offsets: Any) -> str:
    """As _flower_side.data_digest: images, labels and shards, to check both sides match."""
    h = hashlib.sha1()
    for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, indices, offsets):
        h.update(a.tobytes())
    return h.hexdigest()


def fedray_config(size: dict[str, Any]) -> Any:
    return config(
        "workload.name=shapes",
        f"workload.train_samples={size['train_samples']}",
        f"workload.test_samples={size['test_samples']}",
        "partition.name=iid",
        f"clients.num={size['clients']}",
        "algorithm.name=fedavg",
        f"algorithm.clients_per_round={size['clients_per_round']}",
        "algorithm.weighting=samples",  # n_i / sum n, as Flower's FedAvg weighs by num-examples
        f"training.local_steps={size['local_steps']}",
        f"training.batch_size={COMMON['batch_size']}",
        f"training.lr={COMMON['lr']}",
        f"eval.every={size['eval_every']}",
        f"eval.batch_size={COMMON['eval_batch_size']}",
        f"stop.max_versions={size['rounds']}",
        f"executors.num={NUM_CPUS // CPUS_PER_CLIENT}",
        f"executors.num_cpus={CPUS_PER_CLIENT}",
        f"seed={SEED}",
    )


def fedray_run(size: dict[str, Any]) -> dict[str, Any]:
    from engine.experiment import run_experiment

    cfg = fedray_config(size)
    t0 = time.perf_counter()
    with local_ray(NUM_CPUS):
        result, _ = run_experiment(cfg, write=False)
    end_to_end = time.perf_counter() - t0  # Ray's shutdown included, as Flower's run_simulation has it
    summary = result["summary"]
    made = {int(m["version"]): float(m["wall_time"]) for m in result["metrics"]}
    evals = [
        {"round": int(m["version"]), "accuracy": float(m["accuracy"]), "loss": float(m["loss"])}
        for m in result["metrics"]
    ]
    return {
        "end_to_end_seconds": end_to_end,
        "setup_seconds": float(summary["setup_seconds"]),
        "jobs": int(summary["engine"]["jobs"]),
        **_window(size, made, evals),
    }


def flower_run(python: str, size: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        spec = {
            **{k: v for k, v in size.items() if k != "sgd_steps"},
            **COMMON,
            "num_cpus": NUM_CPUS,
            "cpus_per_client": CPUS_PER_CLIENT,
            "out": out,
        }
        spec_path = os.path.join(tmp, "spec.json")
        Path(spec_path).write_text(json.dumps(spec))
        proc = subprocess.run(
            [python, str(FLOWER_SIDE), spec_path],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=900,
            cwd=HERE.parent,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"the Flower side failed (exit {proc.returncode}):\n{tail}")
        res = dict(json.loads(Path(out).read_text()))
    made = {int(r): float(t) for r, t in res["round_times"]}
    evals = [{k: e[k] for k in ("round", "accuracy", "loss")} for e in res["evals"]]
    calls = res["calls_per_round"]
    first = size["eval_every"]
    window_train = sum(res["train_seconds_per_round"][first:])  # rounds first+1 .. last
    return {
        "end_to_end_seconds": res["end_to_end_seconds"],
        "data_seconds": res["data_seconds"],
        "jobs": int(sum(calls)),
        "window_client_seconds": window_train,
        "data_sha1": res["data_sha1"],
        **_window(size, made, evals),
    }


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _range(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{min(values):.3g}-{max(values):.3g}"


def main() -> None:
    args = parse_args()
    flower_env = flower_versions(args.flower_python)
    if flower_env is None:
        where = args.flower_python or "(none given: --flower-python or $FLOWER_PYTHON)"
        print(f"benchmarks.flower: no Python with flwr[simulation] at {where}; {SETUP_HINT}")
        sys.exit(2)
    python = str(args.flower_python)
    size = {**(QUICK if args.quick else FULL)}

    from engine.worker.data import ShardIndex, load_data

    # The no-op runs train nothing and evaluate on a few test images: what is left is the
    # engines' own cost per round and per client call.
    setups = {"train": size, "no-op": {**size, "local_steps": 0, "test_samples": NOOP_TEST_SAMPLES}}
    sha1 = {}
    for kind, s in setups.items():
        data = load_data(fedray_config(s))
        assert isinstance(data.shards, ShardIndex)  # shapes is loaded, not made on demand
        sha1[kind] = data_digest(data.dataset, data.shards.indices, data.shards.offsets)
        del data
    runs: dict[str, list[dict[str, Any]]] = {f"{e} {k}": [] for k in setups for e in ("fedray", "flower")}
    sgd: dict[str, list[float]] = {"fedray": [], "flower": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        sgd["fedray"].append(sgd_ms_per_step(sys.executable, size["sgd_steps"]))
        sgd["flower"].append(sgd_ms_per_step(python, size["sgd_steps"]))
        for kind, s in setups.items():
            runs[f"fedray {kind}"].append(fedray_run(s))
            runs[f"flower {kind}"].append(flower_run(python, s))

    import ray
    import torch

    label = {
        "fedray": f"fedray (Ray {ray.__version__}, torch {torch.__version__})",
        "flower": f"Flower {flower_env['flwr']} (Ray {flower_env['ray']}, torch {flower_env['torch']})",
    }
    first, last = size["eval_every"], size["rounds"]
    heads = [
        "engine",
        "local steps",
        "test images",
        "end to end s",
        "range",
        f"rounds {first}-{last} s",
        "range",
        "ms/round",
        "wall ms/client call",
        "final accuracy",
    ]
    rows = []
    for name, rs in runs.items():
        engine, kind = name.split(" ")
        s = setups[kind]
        row = [label[engine], s["local_steps"], s["test_samples"], _med(rs, "end_to_end_seconds")]
        row += [_range(rs, "end_to_end_seconds")]
        row += [_med(rs, "window_seconds"), _range(rs, "window_seconds")]
        rows.append([*row, _med(rs, "ms_per_round"), _med(rs, "ms_per_call"), _med(rs, "final_accuracy")])

    def ratio(kind: str, key: str) -> float:
        return _med(runs[f"flower {kind}"], key) / _med(runs[f"fedray {kind}"], key)

    calls = (last - first) * size["clients_per_round"]
    extra_ms = {  # Flower's window less fedray's, per client call in it
        kind: 1000.0
        * (_med(runs[f"flower {kind}"], "window_seconds") - _med(runs[f"fedray {kind}"], "window_seconds"))
        / calls
        for kind in setups
    }
    sgd_med = {k: statistics.median(v) for k, v in sgd.items()}
    flower_busy = _med(runs["flower train"], "window_client_seconds") / (
        _med(runs["flower train"], "window_seconds") * (NUM_CPUS // CPUS_PER_CLIENT)
    )
    same_data = all(
        r["data_sha1"] == sha1[k.split(" ")[1]] for k, rs in runs.items() if "flower" in k for r in rs
    )
    ratios = {
        "end_to_end_train": ratio("train", "end_to_end_seconds"),
        "window_train": ratio("train", "window_seconds"),
        "end_to_end_noop": ratio("no-op", "end_to_end_seconds"),
        "window_noop": ratio("no-op", "window_seconds"),
    }

    print(
        f"\nshapes CNN, {size['clients']} clients (iid, {size['train_samples'] // size['clients']} "
        f"images each), FedAvg {size['clients_per_round']} clients/round, batch {COMMON['batch_size']}, "
        f"{last} rounds, evaluation every {first} rounds; {NUM_CPUS} CPUs, {CPUS_PER_CLIENT} CPU per "
        f"client actor (median of {args.repeats}). End to end: Ray start to Ray shutdown; rounds "
        f"{first}-{last}: from round {first}'s model to round {last}'s ({calls} client calls)\n"
    )
    print(table(heads, rows))
    print(
        f"\nFlower / fedray wall time, training: end to end {ratios['end_to_end_train']:.2f}, "
        f"rounds {first}-{last} {ratios['window_train']:.2f}; no-op: end to end "
        f"{ratios['end_to_end_noop']:.2f}, rounds {ratios['window_noop']:.2f}"
    )
    print(
        f"Flower's extra wall time per client call over fedray (rounds {first}-{last}): "
        f"{extra_ms['train']:.1f} ms training, {extra_ms['no-op']:.1f} ms no-op; its client functions "
        f"trained {100 * flower_busy:.0f}% of the window on its {NUM_CPUS // CPUS_PER_CLIENT} actors"
    )
    print(
        f"plain SGD, 1 thread, ms per step: fedray's torch {sgd_med['fedray']:.2f}, Flower's torch "
        f"{sgd_med['flower']:.2f} (Flower / fedray {sgd_med['flower'] / sgd_med['fedray']:.2f})"
    )
    same = "yes" if same_data else "NO"
    print(f"same images, labels and shards on both sides: {same} (sha1 {sha1['train'][:12]})")
    write_json(
        "flower",
        {
            "size": size,
            "noop_test_samples": NOOP_TEST_SAMPLES,
            "common": COMMON,
            "num_cpus": NUM_CPUS,
            "cpus_per_client": CPUS_PER_CLIENT,
            "repeats": args.repeats,
            "flower_env": flower_env,
            "flower_over_fedray": ratios,
            "flower_extra_ms_per_call": extra_ms,
            "flower_client_busy_fraction": flower_busy,
            "sgd_ms_per_step_1_thread": sgd,
            "same_data": same_data,
            "data_sha1": sha1,
            "runs": runs,
        },
        skip=args.no_write,
    )


if __name__ == "__main__":
    main()

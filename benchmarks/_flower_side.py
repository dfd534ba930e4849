"""The Flower side of benchmarks/flower.py. Runs in Flower's own virtual environment
(flwr[simulation], torch, numpy), never in fedray's: Flower pins its own Ray version.

It builds what the fedray side builds, from this repository's own code: the shapes images
and their iid partition (``workloads``), the seeded initial CNN (``workloads.shapes`` and
``engine.core.rng``, both free of Ray), and every client call trains with fedray's local SGD
(``engine.worker.training.local_sgd``, same minibatch order for the same seeds). Then it runs
Flower's simulation engine (``flwr.simulation.run_simulation`` with a ``ServerApp`` using
``flwr.serverapp.strategy.FedAvg`` and a ``ClientApp``) on a local Ray with the given CPUs,
one CPU per client actor, and writes its timings and accuracies as JSON.

    <flower venv>/bin/python benchmarks/_flower_side.py --check      # versions, or fails
    <flower venv>/bin/python benchmarks/_flower_side.py SPEC.json    # run; SPEC names the output

The spec travels in the environment variable below too, so that the client actors (which
inherit the driver's environment) read the same one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # Flower's Ray backend passes sys.path on to its actors

SPEC_ENV = "FEDRAY_FLOWER_SPEC"

# Only imported in Flower's venv; the project's mypy (ignore_missing_imports) sees Any.
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402


def _spec() -> dict[str, Any]:
    return dict(json.loads(os.environ[SPEC_ENV]))


class _Data:
    """The shapes dataset and its partition, as fedray's ``engine.worker.data.load_data`` builds
    them (generated in the driver, saved to an .npz that every actor loads once)."""

    def __init__(self, spec: dict[str, Any], npz: str | None = None) -> None:
        import numpy as np

        from workloads.partition import PartitionConfig, partition
        from workloads.shapes import Shapes, ShapesParams

        self.workload = Shapes(
            ShapesParams(train_samples=spec["train_samples"], test_samples=spec["test_samples"])
        )
        if npz is None:
            ds = self.workload.load(spec["clients"], spec["seed"])
            shards = partition(
                PartitionConfig("iid"), ds.y_train, spec["clients"], ds.num_classes, spec["seed"]
            )
            self.x_train, self.y_train = ds.x_train, ds.y_train
            self.x_test, self.y_test = ds.x_test, ds.y_test
            self.num_classes = ds.num_classes
            self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in shards])]).astype(np.int64)
            self.indices = np.concatenate(shards).astype(np.int64)
        else:
            with np.load(npz) as f:
                self.x_train, self.y_train = f["x_train"], f["y_train"]
                self.x_test, self.y_test = f["x_test"], f["y_test"]
                self.num_classes = int(f["num_classes"])
                self.offsets, self.indices = f["offsets"], f["indices"]

    def save(self, path: str) -> None:
        import numpy as np

        np.savez(
            path,
            x_train=self.x_train,
            y_train=self.y_train,
            x_test=self.x_test,
            y_test=self.y_test,
            num_classes=self.num_classes,
            offsets=self.offsets,
            indices=self.indices,
        )

    def shard(self, client: int) -> Any:
        return self.indices[self.offsets[client] : self.offsets[client + 1]]

    def model(self, seed: int) -> Any:
        """fedray's initial model: the workload's CNN after torch.manual_seed(int_seed(seed, "init"))."""
        import torch

        from engine.core.rng import int_seed
        from workloads import DatasetMeta

        torch.manual_seed(int_seed(seed, "init"))
        meta = DatasetMeta(tuple(int(s) for s in self.x_train.shape[1:]), self.num_classes)
        return self.workload.model(meta)


# ---- client side (runs in Flower's Ray actors) --------------------------------------------
_ACTOR: dict[str, Any] = {}  # per actor process: the data and one model, as a fedray executor keeps


def _actor_state() -> dict[str, Any]:
    if not _ACTOR:
        import torch

        spec = _spec()
        torch.set_num_threads(spec["cpus_per_client"])  # as a fedray executor with 1 CPU does
        data = _Data(spec, spec["data"])
        _ACTOR.update(spec=spec, data=data, model=data.model(spec["seed"]))
    return _ACTOR


client_app = ClientApp()


@client_app.train()
def _train(msg: Any, context: Any) -> Any:
    import math

    import numpy as np
    import torch

    from algorithms.base import Task
    from engine.core.rng import int_seed
    from engine.worker.training import ClientData, local_sgd

    state = _actor_state()
    spec, data, model = state["spec"], state["data"], state["model"]
    client = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    t0 = time.perf_counter()
    idx = data.shard(client)
    batch = ClientData(
        x=data.workload.to_tensor(data.x_train[idx]),
        y=torch.from_numpy(np.asarray(data.y_train[idx], dtype=np.int64)),
        loss_fn=data.workload.loss,
        augment=data.workload.augment,
    )
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    # fedray keys a job's randomness by (client, the client's job index); the round stands in.
    generator = torch.Generator().manual_seed(int_seed(spec["seed"], "train", client, rnd))
    torch.manual_seed(int_seed(spec["seed"], "train_global", client, rnd))
    task = Task(steps=spec["local_steps"], batch_size=spec["batch_size"], lr=spec["lr"])
    loss = local_sgd(model, batch, task, generator)
    metrics = {
        "train-loss": loss if math.isfinite(loss) else 0.0,
        "train-seconds": time.perf_counter() - t0,
        "num-examples": len(idx),
    }
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


# ---- server side (runs in the driver, in Flower's ServerApp thread) -----------------------
_SERVER: dict[str, Any] = {}  # the driver's data, model and records


def _train_metrics(records: list[Any], weighting_key: str) -> Any:
    """Per round: the clients' summed training seconds and call count (kept for the report)."""
    seconds = [float(r["metrics"]["train-seconds"]) for r in records]
    _SERVER["train_seconds"].append(sum(seconds))
    _SERVER["calls"].append(len(seconds))
    return MetricRecord({"train-seconds": sum(seconds), "calls": len(seconds)})


def _evaluate(rnd: int, arrays: Any) -> Any:
    """Called by the strategy before round 1 and after every round: records when each
    round's model was made, and evaluates it at fedray's cadence (every ``eval_every``
    rounds and the last one) on the global test set, fedray's way (batches of
    ``eval_batch_size``, mean accuracy and loss over all examples)."""
    import numpy as np
    import torch

    spec, t_made = _SERVER["spec"], time.perf_counter() - _SERVER["t0"]
    _SERVER["round_times"].append([rnd, t_made])
    if rnd % spec["eval_every"] != 0 and rnd != spec["rounds"]:
        return None
    data, model = _SERVER["data"], _SERVER["model"]
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    x = data.workload.to_tensor(data.x_test)
    y = torch.from_numpy(np.asarray(data.y_test, dtype=np.int64))
    correct, loss, bs = 0, 0.0, spec["eval_batch_size"]
    with torch.no_grad():
        for i in range(0, len(y), bs):
            logits = model(x[i : i + bs])
            loss += float(data.workload.losses(logits, y[i : i + bs]).sum())
            correct += int((logits.argmax(dim=1) == y[i : i + bs]).sum())
    out = {"accuracy": correct / len(y), "loss": loss / len(y)}
    t_done = time.perf_counter() - _SERVER["t0"]
    _SERVER["evals"].append({"round": rnd, "made": t_made, "done": t_done, **out})
    return MetricRecord(out)


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Any, context: Any) -> None:
    spec = _SERVER["spec"]
    strategy = FedAvg(
        fraction_train=spec["clients_per_round"] / spec["clients"],
        fraction_evaluate=0.0,  # no client-side evaluation; the server evaluates, as fedray's does
        min_train_nodes=spec["clients_per_round"],
        min_available_nodes=spec["clients"],
        train_metrics_aggr_fn=_train_metrics,
    )
    _SERVER["t_loop"] = time.perf_counter() - _SERVER["t0"]
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(_SERVER["model"].state_dict()),
        num_rounds=spec["rounds"],
        evaluate_fn=_evaluate,
    )


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import flwr
    import ray
    import torch
    from flwr.simulation import run_simulation

    os.environ[SPEC_ENV] = json.dumps(spec)
    random.seed(spec["seed"])  # Flower samples a round's clients with `random`
    torch.set_num_threads(spec["cpus_per_client"])  # the driver evaluates, as a fedray executor does
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = _Data(spec)  # fedray's set-up also generates the data (and starts Ray, actors)
        spec["data"] = os.path.join(tmp, "data.npz")
        data.save(spec["data"])
        os.environ[SPEC_ENV] = json.dumps(spec)
        _SERVER.update(spec=spec, t0=t0, data=data, model=data.model(spec["seed"]), round_times=[], evals=[])
        _SERVER.update(train_seconds=[], calls=[], data_seconds=time.perf_counter() - t0)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=spec["clients"],
            backend_config={
                "client_resources": {"num_cpus": spec["cpus_per_client"], "num_gpus": 0.0},
                "init_args": {"num_cpus": spec["num_cpus"], "logging_level": logging.ERROR},
            },
        )
        end_to_end = time.perf_counter() - t0
    if len(_SERVER["round_times"]) != spec["rounds"] + 1:
        raise RuntimeError(f"Flower ran {len(_SERVER['round_times']) - 1} of {spec['rounds']} rounds")
    return {
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "end_to_end_seconds": end_to_end,
        "data_seconds": _SERVER["data_seconds"],
        "loop_start_seconds": _SERVER["t_loop"],
        "round_times": _SERVER["round_times"],
        "evals": _SERVER["evals"],
        "train_seconds_per_round": _SERVER["train_seconds"],
        "calls_per_round": _SERVER["calls"],
        "data_sha1": data_digest(data),
    }


def data_digest(data: Any) -> str:
    """A digest of the images, labels and shards, to check both sides trained on the same."""
    import hashlib

    h = hashlib.sha1()
    for a in (data.x_train, data.y_train, data.x_test, data.y_test, data.indices, data.offsets):
        h.update(a.tobytes())
    return h.hexdigest()


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        import flwr
        import ray
        import torch

        print(json.dumps({"flwr": flwr.__version__, "ray": ray.__version__, "torch": torch.__version__}))
        return
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = run(spec)
    Path(spec["out"]).write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    # Run as a script, this file is __main__, which Ray would pickle by value with every
    # call; the imported module is pickled by reference, so each actor keeps its caches.
    from benchmarks._flower_side import main as _main

    _main()

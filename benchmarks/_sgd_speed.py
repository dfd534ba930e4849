"""Single-thread training speed of the shapes CNN under whichever torch runs this file.

benchmarks/flower.py runs it with fedray's Python and with Flower's (each venv has its own
torch build), so that a difference in raw compute speed is not read as engine overhead.
It runs fedray's local SGD (``engine.worker.training.local_sgd``) at batch 32 on 640 generated
images, after 10 warm-up steps, and prints one JSON line.

    python benchmarks/_sgd_speed.py STEPS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BATCH = 32


def sgd_seconds(steps: int, seed: int = 0) -> float:
    """Seconds for ``steps`` SGD steps at batch 32 with one thread (after 10 warm-up steps)."""
    import torch

    from algorithms.base import Task
    from engine.worker.training import ClientData, local_sgd
    from workloads import DatasetMeta
    from workloads.shapes import Shapes, ShapesParams

    torch.set_num_threads(1)
    workload = Shapes(ShapesParams(train_samples=640, test_samples=1))
    ds = workload.load(1, seed)
    torch.manual_seed(seed)
    model = workload.model(DatasetMeta.of(ds))
    data = ClientData(x=workload.to_tensor(ds.x_train), y=torch.from_numpy(ds.y_train), loss_fn=workload.loss)
    gen = torch.Generator().manual_seed(seed)
    local_sgd(model, data, Task(steps=10, batch_size=BATCH, lr=0.05), gen)
    t0 = time.perf_counter()
    local_sgd(model, data, Task(steps=steps, batch_size=BATCH, lr=0.05), gen)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    n = int(sys.argv[1])
    print(json.dumps({"torch": torch.__version__, "steps": n, "seconds": sgd_seconds(n)}))

"""Client speeds from a device trace, as a fedray speed-family plug-in.

``devices.csv`` beside this file lists device types with their measured training
throughput and their share of the population (made-up numbers in the shape of public
on-device benchmarks). Each client draws its device from its own keyed stream, so a
client's device does not depend on the others; its speed factor is the median device's
throughput over its own (a device twice as slow as the median takes twice as long).

    python -m engine.run clients.speed.family=./examples/device_speeds.py:device_speeds
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TRACE = Path(__file__).with_name("devices.csv")


def device_speeds(num_clients: int, rng_for: Callable[[int], np.random.Generator], cfg: Any) -> np.ndarray:
    """One speed factor per client (multiplies clients.speed.seconds_per_sample)."""
    trace = pd.read_csv(TRACE)
    share = trace["share"].to_numpy(dtype=float)
    throughput = trace["samples_per_second"].to_numpy(dtype=float)
    devices = [int(rng_for(i).choice(len(trace), p=share / share.sum())) for i in range(num_clients)]
    median = float(np.median(throughput[devices]))
    return median / throughput[devices]

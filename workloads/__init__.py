"""Workloads: datasets, partitions and models. ``WORKLOADS`` maps config names to classes."""

from __future__ import annotations

from engine.core.registry import Registry, subclass_with_params
from workloads.base import DataError, Dataset, DatasetMeta, ParamLayout, Workload
from workloads.femnist import Femnist
from workloads.shakespeare import Shakespeare
from workloads.shapes import Shapes
from workloads.synthetic import Synthetic
from workloads.vision import VISION_WORKLOADS

_CLASSES: tuple[type[Workload], ...] = (Synthetic, Shapes, *VISION_WORKLOADS, Femnist, Shakespeare)
# Built-ins by name; a config may also name a plug-in (engine/core/registry.py).
WORKLOADS: Registry[type[Workload]] = Registry(
    "workload", {cls.name: cls for cls in _CLASSES}, subclass_with_params(Workload, "workload")
)

__all__ = ["WORKLOADS", "DataError", "Dataset", "DatasetMeta", "ParamLayout", "Workload"]

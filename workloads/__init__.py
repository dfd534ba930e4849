"""Workloads: datasets, partitions and models. ``WORKLOADS`` maps config names to classes."""

from __future__ import annotations

from workloads.base import DataError, Dataset, DatasetMeta, ParamLayout, Workload
from workloads.femnist import Femnist
from workloads.shakespeare import Shakespeare
from workloads.shapes import Shapes
from workloads.synthetic import Synthetic
from workloads.vision import VISION_WORKLOADS

_CLASSES: tuple[type[Workload], ...] = (Synthetic, Shapes, *VISION_WORKLOADS, Femnist, Shakespeare)
WORKLOADS: dict[str, type[Workload]] = {cls.name: cls for cls in _CLASSES}

__all__ = ["WORKLOADS", "DataError", "Dataset", "DatasetMeta", "ParamLayout", "Workload"]

"""Federated algorithms: one file each, no Ray. ``ALGORITHMS`` maps config names to classes
(built-ins, and plug-ins named by import path or entry point)."""

from __future__ import annotations

from algorithms.base import Algorithm
from algorithms.cmfl import CMFL
from algorithms.cse_fsl import CseFsl
from algorithms.fedasync import FedAsync
from algorithms.fedat import FedAT
from algorithms.fedavg import FedAvg
from algorithms.fedavg_m import FedAvgMomentum, ScaffoldMomentum
from algorithms.fedavg_presets import FedAdagrad, FedAdam, FedAvgM, FedYogi
from algorithms.fedbuff import FedBuff
from algorithms.fedcompass import FedCompass
from algorithms.fedfix import FedFix
from algorithms.fedprox import FedProx
from algorithms.fsl_sage import FslSage
from algorithms.gwpf import GWPF
from algorithms.heterofl import HeteroFL
from algorithms.pfl import PFL, VPFL
from algorithms.scaffold import Scaffold
from algorithms.splitfed import SplitFed, SplitFedV2
from engine.core.registry import Registry, subclass_with_params

# Built-ins by name; a config may also name a plug-in (engine/core/registry.py).
ALGORITHMS: Registry[type[Algorithm]] = Registry(
    "algorithm",
    {
        cls.name: cls
        for cls in (
            *(FedAvg, FedProx, FedAsync, FedBuff, CMFL),
            *(FedAvgM, FedAdam, FedYogi, FedAdagrad),
            *(FedFix, FedCompass, FedAT, PFL, VPFL),
            *(Scaffold, FedAvgMomentum, ScaffoldMomentum),
            GWPF,
            HeteroFL,
            *(SplitFed, SplitFedV2, CseFsl, FslSage),
        )
    },
    subclass_with_params(Algorithm, "algorithm"),
)

__all__ = ["ALGORITHMS", "Algorithm"]

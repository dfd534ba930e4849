"""FedAvg with the server optimizers of the literature as presets (algorithms/server_opt.py):
FedAvgM (Hsu, Qi, Brown 2019) and FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021). Each is
FedAvg (algorithms/fedavg.py) with other defaults; everything else is FedAvg's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from algorithms.fedavg import FedAvg, FedAvgParams


@dataclass(frozen=True)
class FedAvgMParams(FedAvgParams):
    """Hsu, Qi, Brown 2019 (arXiv 1909.06335): server momentum beta1 0.9, server_lr 1."""

    server_opt: str = field(default="avgm", kw_only=True)


@dataclass(frozen=True)
class FedAdagradParams(FedAvgParams):
    """Reddi et al. 2021 (arXiv 2003.00295) with their tau 1e-3; tune server_lr."""

    server_lr: float = 0.01
    server_opt: str = field(default="adagrad", kw_only=True)


@dataclass(frozen=True)
class FedAdamParams(FedAvgParams):
    """Reddi et al. 2021: beta1 0.9, beta2 0.99, tau 1e-3; tune server_lr."""

    server_lr: float = 0.01
    server_opt: str = field(default="adam", kw_only=True)


@dataclass(frozen=True)
class FedYogiParams(FedAvgParams):
    """Reddi et al. 2021: beta1 0.9, beta2 0.99, tau 1e-3; tune server_lr."""

    server_lr: float = 0.01
    server_opt: str = field(default="yogi", kw_only=True)


class FedAvgM(FedAvg):
    description: ClassVar[str] = "FedAvgM: FedAvg with server momentum (Hsu et al. 2019; Reddi et al. 2021)"
    name: ClassVar[str] = "fedavgm"
    Params: ClassVar[type] = FedAvgMParams


class FedAdagrad(FedAvg):
    description: ClassVar[str] = "FedAdagrad (Reddi et al. 2021): FedAvg with an Adagrad server optimizer"
    name: ClassVar[str] = "fedadagrad"
    Params: ClassVar[type] = FedAdagradParams


class FedAdam(FedAvg):
    description: ClassVar[str] = "FedAdam (Reddi et al. 2021): FedAvg with an Adam server optimizer"
    name: ClassVar[str] = "fedadam"
    Params: ClassVar[type] = FedAdamParams


class FedYogi(FedAvg):
    description: ClassVar[str] = "FedYogi (Reddi et al. 2021): FedAvg with a Yogi server optimizer"
    name: ClassVar[str] = "fedyogi"
    Params: ClassVar[type] = FedYogiParams

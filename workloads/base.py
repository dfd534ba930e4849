"""The workload contract: data (as numpy, no torch needed to build it), a model factory,
the loss, and the flat-parameter layout the engine moves models around in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch


class DataError(ValueError):
    """A workload cannot find or read its data; the message says where and how to fix."""


@dataclass(frozen=True)
class Dataset:
    """A whole federated dataset in memory.

    ``x_*`` are numpy arrays (float32 features, or uint8 images to keep memory low);
    ``y_*`` are int64 labels. ``natural_partition`` holds per-client index arrays into
    the training set for workloads that come partitioned (e.g. Synthetic(alpha, beta)).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    natural_partition: list[np.ndarray] | None = None


class Workload(ABC):
    """Subclasses set ``name``, ``Params`` (a frozen dataclass) and ``description``."""

    name: ClassVar[str]
    Params: ClassVar[type]
    description: ClassVar[str] = ""
    default_partition: ClassVar[str] = "iid"

    def __init__(self, params: Any) -> None:
        self.params = params

    @abstractmethod
    def load(self, num_clients: int, seed: int) -> Dataset:
        """Generate or read the data (deterministic in ``seed``)."""

    @abstractmethod
    def model(self, dataset_meta: DatasetMeta) -> torch.nn.Module:
        """A freshly initialised model (the caller seeds torch beforehand)."""

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        """Features as the model's input dtype (uint8 images become floats in [0, 1])."""
        import torch

        t = readonly_tensor(np.ascontiguousarray(x))
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of every example (evaluation scores clients' examples separately)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, y, reduction="none")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective: the mean of ``losses`` over the batch (one fused call)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, y)

    def check(self) -> None:  # noqa: B027 -- an optional hook, not abstract
        """Raise ``DataError`` if the data cannot be found. Called while the configuration
        is validated, before Ray starts, so it must be cheap (look for files, read none).
        Generated data needs nothing."""

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training minibatch (the output of ``to_tensor``), randomly augmented.

        Runs on every local step; all randomness must come from ``generator`` (the job's
        keyed stream) so a run does not depend on which executor ran which job. The
        default leaves ``x`` as it is and draws nothing.
        """
        return x


def readonly_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor view of a possibly read-only array (Ray's zero-copy numpy) without the
    copy or the warning; callers only read from it or convert it to a new tensor."""
    import warnings

    import torch

    if a.flags.writeable:  # nothing to warn about: skip the warnings machinery (per job)
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


@dataclass(frozen=True)
class DatasetMeta:
    """What a model factory needs to know about the data."""

    input_shape: tuple[int, ...]
    num_classes: int

    @staticmethod
    def of(ds: Dataset) -> DatasetMeta:
        return DatasetMeta(tuple(int(s) for s in ds.x_train.shape[1:]), ds.num_classes)


@dataclass(frozen=True)
class ParamLayout:
    """How a model's state (parameters and buffers) maps onto one flat float32 vector.

    Models travel as one flat numpy vector: aggregation math is plain vector math,
    the byte size is ``vector.nbytes``, and Ray moves it zero-copy.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Entries per tensor (computed once: ``load`` and ``flatten`` run for every job)."""
        return tuple(int(np.prod(s)) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @staticmethod
    def of(model: torch.nn.Module) -> ParamLayout:
        sd = model.state_dict()
        return ParamLayout(
            tuple(sd.keys()),
            tuple(tuple(v.shape) for v in sd.values()),
            tuple(str(v.dtype).removeprefix("torch.") for v in sd.values()),
        )

    def flatten(self, model: torch.nn.Module) -> np.ndarray:
        import torch

        sd = model.state_dict()
        with torch.no_grad():
            flat = torch.cat([sd[n].detach().reshape(-1).to("cpu", torch.float32) for n in self.names])
        return flat.numpy()

    def load(self, model: torch.nn.Module, flat: np.ndarray) -> None:
        """Copy ``flat`` into ``model``'s parameters and buffers (in place)."""
        import torch

        src = readonly_tensor(np.asarray(flat, dtype=np.float32))
        sd = model.state_dict()
        with torch.no_grad():
            # copy_ converts float32 to the tensor's dtype (an integer buffer, say) itself.
            for name, shape, piece in zip(self.names, self.shapes, src.split(self.sizes), strict=True):
                sd[name].copy_(piece.view(shape))

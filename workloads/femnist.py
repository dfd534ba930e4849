"""FEMNIST: LEAF's per-writer split of EMNIST (Caldas et al., arXiv 1812.01097), from LEAF's files.

LEAF's ``data/femnist/preprocess.sh`` writes JSON files; ``workload.root`` is the folder that
holds its ``train/`` and ``test/`` subfolders (LEAF's ``data/femnist/data``). Each file is

    {"users": [writer, ...], "num_samples": [n, ...],
     "user_data": {writer: {"x": [[784 floats in [0, 1]], ...], "y": [label, ...]}}}

with 62 classes (10 digits, 26 upper- and 26 lower-case letters). Every writer is one client
(the natural partition): the first ``clients.num`` writers of the sorted train files, so the
federation does not change with the seed and growing it only adds writers. The test set is
those writers' test samples (LEAF's default sample split, ``-t sample``); when the test files
hold none of them (LEAF's user split, ``-t user``: held-out writers), all test samples.

LEAF stores pixels as ``value / 255`` floats; they are kept as uint8 (N, 1, 28, 28), exact for
such files (other values are rounded to the nearest 1/255), a quarter of the memory.

Why not derive writers from torchvision's EMNIST: its files carry no writer ids (only images
and labels), so any "per-writer" split of them would be invented, not FEMNIST.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from workloads.base import DataError, Dataset, DatasetMeta, Workload
from workloads.vision import IMAGE_MODELS, absolute, resolve_cut

if TYPE_CHECKING:
    import torch

NUM_CLASSES = 62
SIDE = 28


@dataclass(frozen=True)
class FemnistParams:
    """root: LEAF's data/femnist/data (holding train/ and test/); model: one of IMAGE_MODELS;
    cut: where split learning cuts the model (workloads/vision.py ``CUTS``; "" = its default)."""

    root: str = "~/data/femnist"
    model: str = "mnist_cnn"
    cut: str = ""

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root must name the data folder (got '')")
        if self.model not in IMAGE_MODELS:
            raise ValueError(f"model must be one of {', '.join(IMAGE_MODELS)} (got {self.model!r})")
        resolve_cut(self.model, self.cut)
        object.__setattr__(self, "root", absolute(self.root))


def leaf_files(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("*.json"))


def read_user(path: Path, user: str, data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One writer's (images uint8 (n, 1, 28, 28), labels int64), checked."""
    x = np.asarray(data["x"], dtype=np.float32)
    y = np.asarray(data["y"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != SIDE * SIDE or len(x) != len(y):
        raise DataError(
            f"{path}: writer {user!r} has x of shape {x.shape} and {len(y)} labels; LEAF's "
            f"femnist has {SIDE * SIDE} pixels per sample and one label per sample"
        )
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES or x.min() < 0 or x.max() > 1):
        raise DataError(
            f"{path}: writer {user!r} has labels outside [0, {NUM_CLASSES}) or pixels outside "
            "[0, 1]; these are not LEAF femnist files"
        )
    pixels = np.rint(x * 255.0).astype(np.uint8).reshape(-1, 1, SIDE, SIDE)
    return pixels, y


def read_split(
    root: Path, split: str, wanted: int | None = None, keep: set[str] | None = None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Writers, images and labels of a split, in file order: the first ``wanted`` writers,
    or those in ``keep`` (all when both are None). Stops reading once it has ``wanted``."""
    users: list[str] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for path in leaf_files(root, split):
        with path.open() as f:
            try:
                blob = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        for user in blob.get("users", []):
            if keep is not None and user not in keep:
                continue
            if user not in blob.get("user_data", {}):
                raise DataError(f"{path}: writer {user!r} is listed in users but has no user_data")
            x, y = read_user(path, user, blob["user_data"][user])
            users.append(user)
            xs.append(x)
            ys.append(y)
            if wanted is not None and len(users) == wanted:
                return users, xs, ys
        del blob  # one file's Python lists at a time: they take ~30x the uint8 size
    return users, xs, ys


class Femnist(Workload):
    name: ClassVar[str] = "femnist"
    Params: ClassVar[type] = FemnistParams
    description: ClassVar[str] = (
        "FEMNIST from LEAF's JSON files (workload.root), one client per writer; GWPF's CNN"
    )
    default_partition: ClassVar[str] = "natural"
    params: FemnistParams

    def __init__(self, params: FemnistParams | None = None) -> None:
        super().__init__(params if params is not None else FemnistParams())

    def check(self) -> None:
        root = Path(self.params.root)
        for split in ("train", "test"):
            if not leaf_files(root, split):
                raise DataError(
                    f"femnist data not found: no {split}/*.json under workload.root={root}; run LEAF's "
                    "data/femnist/preprocess.sh (github.com/TalwalkarLab/leaf) and set workload.root "
                    "to its data/femnist/data folder"
                )

    def load(self, num_clients: int, seed: int) -> Dataset:
        # Writers come in file order, independent of the seed: the partition is the data's own.
        self.check()
        root = Path(self.params.root)
        users, x_tr, y_tr = read_split(root, "train", wanted=num_clients)
        if len(users) < num_clients:
            raise DataError(
                f"femnist train files under {root} hold {len(users)} writers but clients.num is "
                f"{num_clients}; set clients.num to at most {len(users)}"
            )
        _, x_te, y_te = read_split(root, "test", keep=set(users))
        if not y_te:  # a user split: the test writers are others
            _, x_te, y_te = read_split(root, "test")
        if not y_te:
            raise DataError(f"femnist test files under {root / 'test'} hold no writers")
        sizes = np.array([len(y) for y in y_tr], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        natural = [np.arange(offsets[i], offsets[i + 1], dtype=np.int64) for i in range(len(users))]
        return Dataset(
            x_train=np.concatenate(x_tr),
            y_train=np.concatenate(y_tr),
            x_test=np.concatenate(x_te),
            y_test=np.concatenate(y_te),
            num_classes=NUM_CLASSES,
            natural_partition=natural,
        )

    def model(self, dataset_meta: DatasetMeta) -> torch.nn.Module:
        from workloads.models import image_model

        return image_model(self.params.model, dataset_meta.input_shape, dataset_meta.num_classes)

    def cut_name(self) -> str:
        """Where split learning cuts the model: ``workload.cut``, or the model's default."""
        return resolve_cut(self.params.model, self.params.cut)

"""A workload from a folder of images you already have, as a fedray plug-in.

    <root>/train/<class name>/<image>.png     (any format Pillow reads)
    <root>/test/<class name>/<image>.png

    python -m engine.run workload.name=./examples/image_folder.py:ImageFolderWorkload \\
        workload.root=path/to/images workload.side=28 executors.backend=local

torchvision's ``ImageFolder`` reads the files (classes sorted by folder name); the images
are resized to ``side`` x ``side``, kept as uint8 in memory, and split over the clients by
the configured partition (``iid`` by default). The model is a small CNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workloads.base import DataError, Dataset, DatasetMeta, Workload


@dataclass(frozen=True)
class ImageFolderParams:
    root: str = "images"  # holds train/ and test/, one sub-folder per class
    side: int = 28  # images are resized to side x side
    grayscale: bool = True

    def __post_init__(self) -> None:
        if self.side < 8:
            raise ValueError(f"side must be >= 8 (got {self.side})")


class ImageFolderWorkload(Workload):
    name: ClassVar[str] = "image_folder"
    Params: ClassVar[type] = ImageFolderParams
    description: ClassVar[str] = "images from <root>/{train,test}/<class>/, one folder per class"
    params: ImageFolderParams

    def check(self) -> None:  # called before anything starts: cheap, reads no image
        for split in ("train", "test"):
            if not (Path(self.params.root) / split).is_dir():
                raise DataError(f"workload.root={self.params.root!r} has no {split}/ folder of class folders")

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        from torchvision import datasets, transforms

        steps: list[Any] = [transforms.Resize((self.params.side, self.params.side))]
        if self.params.grayscale:
            steps.append(transforms.Grayscale())
        folder = datasets.ImageFolder(
            str(Path(self.params.root) / split), transform=transforms.Compose(steps)
        )
        images = [np.asarray(img, dtype=np.uint8) for img, _ in folder]
        x = np.stack([im[None] if im.ndim == 2 else im.transpose(2, 0, 1) for im in images])
        return x, np.asarray(folder.targets, dtype=np.int64), folder.classes

    def load(self, num_clients: int, seed: int) -> Dataset:
        x_train, y_train, classes = self._read("train")
        x_test, y_test, test_classes = self._read("test")
        if test_classes != classes:
            raise DataError(f"train/ and test/ under {self.params.root!r} have different class folders")
        return Dataset(x_train, y_train, x_test, y_test, num_classes=len(classes))

    def model(self, dataset_meta: DatasetMeta) -> Any:
        import torch.nn as nn

        channels, side, _ = dataset_meta.input_shape
        return nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * (side // 2) ** 2, dataset_meta.num_classes),
        )

"""Image-classification data sets read by torchvision from a local folder.

``workload.name`` is the data set: ``mnist``, ``fashion_mnist``, ``emnist``, ``cifar10`` or
``cifar100``; ``workload.root`` the folder torchvision downloads into (it holds ``MNIST/``,
``cifar-10-batches-py/``, ...), ``workload.model`` one of ``IMAGE_MODELS``
(``workloads/models.py``), ``workload.cut`` where split learning cuts it (``CUTS``,
``workloads/split.py``). Nothing is downloaded unless ``workload.download=true``; a missing
data set fails while the config is validated, in one line that names the expected files.

Images stay uint8 (N, C, H, W) in memory (CIFAR-10: 150 MB instead of 600 MB as floats) and
become normalised floats per batch in ``to_tensor``. EMNIST's files store every image
transposed; ``load`` turns them upright, so crops and plots see what the glyph looks like.

torchvision's EMNIST carries no writer ids, so it cannot be split per writer honestly; the
per-writer (FEMNIST) split comes from LEAF's files instead (``workloads/femnist.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from workloads.base import DataError, Dataset, DatasetMeta, Workload, readonly_tensor

if TYPE_CHECKING:
    import torch

# The names in workloads/models.py, repeated here so validating a config needs no torch.
IMAGE_MODELS = ("mnist_cnn", "cifar_cnn", "resnet18", "resnet18_ref")
# Where split learning may cut each model (workloads/split.py), the default first; also the
# Shapes workload's small CNN, ``cnn``. Here, like the names, so that a config's cut is checked
# without torch.
CUTS: dict[str, tuple[str, ...]] = {
    "mnist_cnn": ("flatten", "conv1"),
    "cifar_cnn": ("flatten",),
    "resnet18": ("layer2", "layer1", "layer3"),
    "resnet18_ref": ("layer2", "layer1", "layer3"),
    "cnn": ("flatten", "conv1"),
}
# EMNIST splits whose labels are 0..K-1 (``letters`` numbers its 26 classes from 1).
EMNIST_CLASSES = {"balanced": 47, "bymerge": 47, "byclass": 62, "digits": 10, "mnist": 10}

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def resolve_cut(model: str, cut: str) -> str:
    """The cut split learning makes in ``model``: ``cut``, or the model's default when empty.
    Raises a one-line ValueError naming the valid cuts when ``model`` has no such cut."""
    cuts = CUTS[model]
    if cut and cut not in cuts:
        raise ValueError(f"cut must be one of {', '.join(cuts)} for model {model} (got {cut!r})")
    return cut or cuts[0]


def absolute(path: str) -> str:
    """``~`` expanded and made absolute against the driver's directory: the server actor
    that reads the data may run in another directory or on another node."""
    return str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class VisionParams:
    """root: the folder torchvision downloads into; download: fetch the data if missing
    (needs internet); model: one of IMAGE_MODELS; augment: random crop + flip per batch;
    cut: where split-learning algorithms cut the model, one of ``CUTS[model]`` (empty: the
    model's default, the first; other algorithms ignore it)."""

    root: str = "~/data"
    download: bool = False
    model: str = "mnist_cnn"
    augment: bool = False
    cut: str = ""

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root must name the data folder (got '')")
        if self.model not in IMAGE_MODELS:
            raise ValueError(f"model must be one of {', '.join(IMAGE_MODELS)} (got {self.model!r})")
        resolve_cut(self.model, self.cut)
        object.__setattr__(self, "root", absolute(self.root))


@dataclass(frozen=True)
class CifarParams(VisionParams):
    """CIFAR trains the pfl-research CNN with crop and flip by default."""

    model: str = "cifar_cnn"
    augment: bool = True


@dataclass(frozen=True)
class EmnistParams(VisionParams):
    """split: balanced (47 classes, GWPF's), byclass (62), bymerge (47), digits or mnist (10)."""

    split: str = "balanced"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in EMNIST_CLASSES:
            raise ValueError(f"split must be one of {', '.join(EMNIST_CLASSES)} (got {self.split!r})")


class TorchvisionWorkload(Workload):
    """A torchvision data set; subclasses name the class, files, statistics and augmentation."""

    Params: ClassVar[type] = VisionParams
    default_partition: ClassVar[str] = "dirichlet_per_class"
    torchvision_class: ClassVar[str]
    # Where to get the data by hand; the check's message ends with it.
    source: ClassVar[str]
    # Per-channel mean and std of the training images on the [0, 1] scale.
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    # Augmentation: random crop after padding ``pad`` black pixels per side, optional mirroring.
    pad: ClassVar[int] = 2
    flip: ClassVar[bool] = False
    classes: ClassVar[int] = 10
    params: VisionParams

    def __init__(self, params: VisionParams | None = None) -> None:
        super().__init__(params if params is not None else self.Params())

    # ---- data --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.classes

    def folder(self) -> Path:
        """The folder the files lie in; torchvision names it after the class."""
        return Path(self.params.root) / self.torchvision_class / "raw"

    def files(self) -> tuple[str, ...]:
        return _MNIST_FILES

    def check(self) -> None:
        if self.params.download:
            return  # torchvision fetches what is missing when the data is loaded
        folder = self.folder()
        missing = [f for f in self.files() if not (folder / f).is_file()]
        if missing:
            rel = folder.relative_to(self.params.root)
            raise DataError(
                f"{self.name} data not found: {folder / missing[0]} is missing (expected "
                f"{rel}/{{{', '.join(self.files())}}} under workload.root={self.params.root}); "
                f"set workload.root to the folder that holds {rel.parts[0]}/, set workload.download=true "
                f"on a machine with internet, or fetch {self.source}"
            )

    def _read(self, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N, C, H, W), labels int64) of one split, read by torchvision."""
        from torchvision import datasets

        ds = getattr(datasets, self.torchvision_class)(root, train=train, download=self.params.download)
        return ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64)

    def load(self, num_clients: int, seed: int) -> Dataset:
        # The data does not depend on num_clients or seed: a partitioner splits it afterwards.
        self.check()  # the same clear message on the node that reads the data
        try:
            (x_train, y_train), (x_test, y_test) = (self._read(self.params.root, t) for t in (True, False))
        except (RuntimeError, OSError) as e:  # e.g. CIFAR's md5 check, a failed download
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise DataError(
                f"{self.name}: torchvision could not read or fetch the files in {self.folder()} ({first}); "
                "if a download was cut short, delete the folder and fetch it again"
            ) from None
        for y in (y_train, y_test):
            if len(y) and not 0 <= y.min() <= y.max() < self.num_classes:
                raise DataError(
                    f"{self.name} labels in {self.folder()} span [{y.min()}, {y.max()}], not "
                    f"[0, {self.num_classes}); the files belong to another data set or split"
                )
        return Dataset(x_train, y_train, x_test, y_test, num_classes=self.num_classes)

    # ---- model and tensors ---------------------------------------------------------------
    def model(self, dataset_meta: DatasetMeta) -> torch.nn.Module:
        from workloads.models import image_model

        return image_model(self.params.model, dataset_meta.input_shape, dataset_meta.num_classes)

    def cut_name(self) -> str:
        """Where split learning cuts the model: ``workload.cut``, or the model's default."""
        return resolve_cut(self.params.model, self.params.cut)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        """uint8 images as floats standardised per channel with the data set's statistics."""
        import torch

        t = readonly_tensor(np.ascontiguousarray(x)).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return t.sub_(mean).div_(std)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop after padding ``pad`` black pixels per side, plus a horizontal flip
        with probability 1/2 where ``flip`` (the standard CIFAR augmentation; digits and
        letters are not flipped: a mirrored glyph is another glyph or none)."""
        if not self.params.augment:
            return x
        import torch

        b, c, h, w = x.shape
        p = self.pad
        # Black is 0 before standardisation, so -mean/std after it.
        fill = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=x.dtype)
        padded = fill.to(x.device).view(1, c, 1, 1).repeat(b, 1, h + 2 * p, w + 2 * p)
        padded[:, :, p : p + h, p : p + w] = x
        # Draws on the job's (CPU) generator, then moved: the same draws on any device.
        top = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
        left = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
        rows = top + torch.arange(h)
        cols = left + torch.arange(w)
        if self.flip:
            flipped = torch.rand(b, generator=generator) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        rows, cols = rows.to(x.device), cols.to(x.device)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # Gather every image's window at once: (b, h, w, c), then channels first again.
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


class Mnist(TorchvisionWorkload):
    name: ClassVar[str] = "mnist"
    description: ClassVar[str] = "MNIST digits from workload.root (torchvision layout); GWPF's CNN"
    torchvision_class: ClassVar[str] = "MNIST"
    source: ClassVar[str] = (
        "the four *-ubyte.gz files of https://ossci-datasets.s3.amazonaws.com/mnist/, "
        "gunzipped into MNIST/raw/"
    )
    mean: ClassVar[tuple[float, ...]] = (0.1307,)
    std: ClassVar[tuple[float, ...]] = (0.3081,)


class FashionMnist(TorchvisionWorkload):
    name: ClassVar[str] = "fashion_mnist"
    description: ClassVar[str] = "Fashion-MNIST from workload.root (torchvision layout); GWPF's CNN"
    torchvision_class: ClassVar[str] = "FashionMNIST"
    source: ClassVar[str] = (
        "the four *-ubyte.gz files of github.com/zalandoresearch/fashion-mnist, "
        "gunzipped into FashionMNIST/raw/"
    )
    mean: ClassVar[tuple[float, ...]] = (0.2860,)
    std: ClassVar[tuple[float, ...]] = (0.3530,)
    flip: ClassVar[bool] = True  # clothes stay clothes when mirrored


class Emnist(TorchvisionWorkload):
    name: ClassVar[str] = "emnist"
    Params: ClassVar[type] = EmnistParams
    description: ClassVar[str] = "EMNIST (workload.split) from workload.root (torchvision layout); GWPF's CNN"
    torchvision_class: ClassVar[str] = "EMNIST"
    source: ClassVar[str] = (
        "gzip.zip of https://www.nist.gov/itl/products-and-services/emnist-dataset, its "
        "gzip/*.gz files gunzipped into EMNIST/raw/"
    )
    # MNIST's statistics: EMNIST comes from the same NIST forms; a near-right constant is
    # all standardisation needs to condition SGD.
    mean: ClassVar[tuple[float, ...]] = (0.1307,)
    std: ClassVar[tuple[float, ...]] = (0.3081,)
    params: EmnistParams

    @property
    def num_classes(self) -> int:
        return EMNIST_CLASSES[self.params.split]

    def files(self) -> tuple[str, ...]:
        s = self.params.split
        return tuple(f"emnist-{s}-{t}-{k}-idx{d}-ubyte" for t in ("train", "test") for k, d in _KINDS)

    def _read(self, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
        from torchvision import datasets

        ds = datasets.EMNIST(root, split=self.params.split, train=train, download=self.params.download)
        # The files hold every image transposed (column-major); make it row-major.
        x = np.ascontiguousarray(ds.data.numpy().transpose(0, 2, 1))[:, None]
        return x, ds.targets.numpy().astype(np.int64)


_KINDS = (("images", 3), ("labels", 1))


class Cifar10(TorchvisionWorkload):
    name: ClassVar[str] = "cifar10"
    Params: ClassVar[type] = CifarParams
    description: ClassVar[str] = (
        "CIFAR-10 from workload.root (torchvision layout); pfl-research CNN or ResNet-18, crop+flip"
    )
    torchvision_class: ClassVar[str] = "CIFAR10"
    base_folder: ClassVar[str] = "cifar-10-batches-py"
    source: ClassVar[str] = (
        "cifar-10-python.tar.gz of https://www.cs.toronto.edu/~kriz/cifar.html, untarred in workload.root"
    )
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    meta_file: ClassVar[str] = "batches.meta"
    # Channel statistics of the 50k training images (the often-copied std (0.2023, 0.1994,
    # 0.2010) averages per-image stds; it is not the data set's std).
    mean: ClassVar[tuple[float, ...]] = (0.4914, 0.4822, 0.4465)
    std: ClassVar[tuple[float, ...]] = (0.2470, 0.2435, 0.2616)
    pad: ClassVar[int] = 4
    flip: ClassVar[bool] = True

    def folder(self) -> Path:
        return Path(self.params.root) / self.base_folder

    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)

    def _read(self, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
        from torchvision import datasets

        ds = getattr(datasets, self.torchvision_class)(root, train=train, download=self.params.download)
        # torchvision keeps CIFAR as (N, H, W, C); the models want channels first.
        x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        return x, np.asarray(ds.targets, dtype=np.int64)


class Cifar100(Cifar10):
    name: ClassVar[str] = "cifar100"
    description: ClassVar[str] = (
        "CIFAR-100 (fine labels) from workload.root (torchvision layout); CNN or ResNet-18, crop+flip"
    )
    torchvision_class: ClassVar[str] = "CIFAR100"
    base_folder: ClassVar[str] = "cifar-100-python"
    source: ClassVar[str] = (
        "cifar-100-python.tar.gz of https://www.cs.toronto.edu/~kriz/cifar.html, untarred in workload.root"
    )
    train_files: ClassVar[tuple[str, ...]] = ("train",)
    test_files: ClassVar[tuple[str, ...]] = ("test",)
    meta_file: ClassVar[str] = "meta"
    classes: ClassVar[int] = 100
    mean: ClassVar[tuple[float, ...]] = (0.5071, 0.4865, 0.4409)
    std: ClassVar[tuple[float, ...]] = (0.2673, 0.2564, 0.2762)


VISION_WORKLOADS: tuple[type[TorchvisionWorkload], ...] = (Mnist, FashionMnist, Emnist, Cifar10, Cifar100)

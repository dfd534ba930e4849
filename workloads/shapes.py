"""Shapes: procedurally generated images of ten shape classes, grayscale or colour.

A small image-classification task that needs no download, so CNN experiments run
anywhere. By default an MNIST stand-in with the same (1, 28, 28) uint8 layout;
``side=32, channels=3`` gives CIFAR-10's (3, 32, 32) uint8 layout instead, and ``model``
picks the network (the small CNN below, or one of ``workloads.models``, e.g. pfl-research's
``cifar_cnn``). Every image draws its own position, size, stroke thickness, small
rotation, foreground and background intensity (with 3 channels: colour, and which of the
two is the lighter), and additive Gaussian pixel noise; edges are anti-aliased. Class
pairs that differ only in filling (square outline / filled square, circle outline /
filled disk), in shape (square / circle) or in orientation (bars, plus / X) make a linear
model on pixels fall short while a small CNN learns it well.

Measured once (defaults, ``torch.set_num_threads(2)``, CPU): the CNN below trained
centrally with SGD (lr 0.05, batch 32, 500 steps, torch and data seed 0) reaches 0.968
test accuracy (0.964 and 0.976 with seeds 1 and 2); a linear model on the pixels trained
to convergence (Adam, 30 epochs) reaches only 0.74. Generating the 20k + 2k images takes
about 0.5 s on one core; the 50k (3, 32, 32) images of ``benchmarks/pfl_cifar.py``, 4.3 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from workloads.base import Dataset, DatasetMeta, Workload
from workloads.vision import IMAGE_MODELS, resolve_cut

if TYPE_CHECKING:
    import torch

# Fixed purpose constant for this workload's random streams (zlib.crc32(b"workload.shapes")).
_PURPOSE = 0xCBAFCA93
_TRAIN, _TEST = 0, 1

SIDE = 28  # the default side; the size ranges below are given for it
SHAPES = (
    "horizontal_bar",
    "vertical_bar",
    "diagonal",
    "anti_diagonal",
    "square_outline",
    "filled_square",
    "circle_outline",
    "filled_disk",
    "plus",
    "x",
)
MODELS = ("cnn", *IMAGE_MODELS)

# Half-size (pixels at side 28, scaled with the side) of a shape's bounding box and
# half-thickness of its strokes. Shapes fill a third to two thirds of the image and keep a
# hole of at least 4 px in outlines (s - 2h >= 2), so they stay recognisable under the
# noise; smaller, thinner shapes made 500 SGD steps of the CNN stall near 0.45 accuracy.
_HALF_SIZE = (6.0, 10.0)
_HALF_THICK = (1.0, 2.0)
# Intensity ranges of background and shape on the [0, 1] scale.
_BACKGROUND = (0.0, 0.15)
_FOREGROUND = (0.6, 1.0)
# With 3 channels, per-channel ranges of the darker and the lighter colour: apart by at
# least 0.2 in every channel (0.5 on average), so the shape never blends into the background.
_DARK_RGB = (0.0, 0.4)
_LIGHT_RGB = (0.6, 1.0)
# Images rendered at a time: bounds the float32 temporaries (a few MB per array) whatever
# the data size; 50k colour images at once would need several GB.
_CHUNK = 2048
# A Python float: a numpy float64 scalar would silently upcast the float32 pixel math.
_SQRT2 = 2.0**0.5


@dataclass(frozen=True)
class ShapesParams:
    """noise: std of the additive pixel noise on the [0, 1] intensity scale.

    num_classes takes the first classes of ``SHAPES``; max_rotation_deg jitters every
    shape's orientation (kept below 22.5 so plus and X, or the bars, stay distinct).
    side: image height and width; channels: 1 (grayscale) or 3 (colours drawn per image,
    independent of the class); model: ``cnn`` (the small CNN) or one of ``IMAGE_MODELS``;
    cut: where split-learning algorithms cut the model, one of ``CUTS[model]``
    (``workloads/vision.py``; empty: the model's default, the first).
    """

    train_samples: int = 20000
    test_samples: int = 2000
    noise: float = 0.15
    num_classes: int = 10
    max_rotation_deg: float = 12.0
    side: int = SIDE
    channels: int = 1
    model: str = "cnn"
    cut: str = ""

    def __post_init__(self) -> None:
        if self.train_samples < 1:
            raise ValueError(f"train_samples must be >= 1 (got {self.train_samples})")
        if self.test_samples < 1:
            raise ValueError(f"test_samples must be >= 1 (got {self.test_samples})")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0 (got {self.noise})")
        if not 2 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}] (got {self.num_classes})")
        if not 0 <= self.max_rotation_deg < 22.5:
            raise ValueError(f"max_rotation_deg must be in [0, 22.5) (got {self.max_rotation_deg})")
        # Below 16 px the scaled strokes thin under a pixel and outlines lose their hole;
        # above 64 the images are just costlier to generate and train on, with nothing new.
        if not 16 <= self.side <= 64:
            raise ValueError(f"side must be in [16, 64] (got {self.side})")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 (got {self.channels})")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)} (got {self.model!r})")
        resolve_cut(self.model, self.cut)


def _box(a: np.ndarray, b: np.ndarray, half_a: np.ndarray, half_b: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an axis-aligned box in (a, b) coordinates."""
    return np.maximum(np.abs(a) - half_a, np.abs(b) - half_b)


def _distance(shape: str, u: np.ndarray, v: np.ndarray, s: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of each pixel to ``shape`` in its own frame (u, v)."""
    if shape in ("diagonal", "anti_diagonal", "x"):
        # Diagonal frame; the bar's half-length s*sqrt(2) spans the same bounding box.
        along, across = (u + v) / _SQRT2, (u - v) / _SQRT2
        diag = _box(along, across, s * _SQRT2, h)
        anti = _box(across, along, s * _SQRT2, h)
        return {"diagonal": diag, "anti_diagonal": anti}.get(shape, np.minimum(diag, anti))
    if shape == "horizontal_bar":
        return _box(u, v, s, h)
    if shape == "vertical_bar":
        return _box(v, u, s, h)
    if shape == "plus":
        return np.minimum(_box(u, v, s, h), _box(v, u, s, h))
    if shape in ("square_outline", "filled_square"):
        cheb = np.maximum(np.abs(u), np.abs(v))
        return np.abs(cheb - (s - h)) - h if shape == "square_outline" else cheb - s
    radius = np.sqrt(u * u + v * v)
    return np.abs(radius - (s - h)) - h if shape == "circle_outline" else radius - s


def generate(
    n: int,
    num_classes: int,
    noise: float,
    max_rotation_deg: float,
    rng: np.random.Generator,
    side: int = SIDE,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, (n, channels, side, side)) and balanced int64 labels, from ``rng``."""
    # Balanced labels in random order: every class has n // C or n // C + 1 images.
    y = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
    scale = side / SIDE  # exactly 1.0 at the default side: the same draws, bit for bit
    s = rng.uniform(_HALF_SIZE[0] * scale, _HALF_SIZE[1] * scale, n).astype(np.float32)
    h = rng.uniform(_HALF_THICK[0] * scale, _HALF_THICK[1] * scale, n).astype(np.float32)
    # The centre keeps the un-rotated bounding box one pixel inside the image.
    cx = rng.uniform(s + 1.0, side - 2.0 - s).astype(np.float32)
    cy = rng.uniform(s + 1.0, side - 2.0 - s).astype(np.float32)
    theta = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, n)).astype(np.float32)
    background = rng.uniform(*_BACKGROUND, n).astype(np.float32)[:, None]
    foreground = rng.uniform(*_FOREGROUND, n).astype(np.float32)[:, None]
    if channels == 3:
        # Drawn after the grayscale draws (which are kept, unused), so a seed gives the same
        # labels and geometry in both modes. Half the images swap to a dark shape on a light
        # background: neither colour nor brightness tells the class.
        dark = rng.uniform(*_DARK_RGB, (n, 3)).astype(np.float32)
        light = rng.uniform(*_LIGHT_RGB, (n, 3)).astype(np.float32)
        swap = rng.random(n) < 0.5
        background = np.where(swap[:, None], light, dark)
        foreground = np.where(swap[:, None], dark, light)

    grid = np.arange(side, dtype=np.float32)
    pixels = np.empty((n, channels, side, side), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        coverage = np.empty((part.stop - start, side, side), dtype=np.float32)
        for c in range(num_classes):
            idx = np.flatnonzero(y[part] == c)
            # Per-image scalars as (k, 1, 1) so they broadcast over the pixel grid.
            s_c, h_c, cx_c, cy_c, th_c = (a[part][idx, None, None] for a in (s, h, cx, cy, theta))
            dx, dy = grid[None, None, :] - cx_c, grid[None, :, None] - cy_c
            cos, sin = np.cos(th_c), np.sin(th_c)
            u, v = cos * dx + sin * dy, cos * dy - sin * dx
            # Coverage of a pixel by the shape, anti-aliased over a one-pixel edge.
            coverage[idx] = np.clip(0.5 - _distance(SHAPES[c], u, v, s_c, h_c), 0.0, 1.0)
        bg, fg = background[part, :, None, None], foreground[part, :, None, None]
        img = bg + (fg - bg) * coverage[:, None]
        # The last draw: chunk by chunk, in order, it is the same stream as one whole draw.
        # In place, but the same float32 operations in the same order as out of place.
        grain = rng.standard_normal(img.shape, dtype=np.float32)
        grain *= noise
        img += grain
        np.clip(img, 0.0, 1.0, out=img)
        img *= 255.0
        pixels[part] = np.rint(img, out=img)
    return pixels, y


class Shapes(Workload):
    name: ClassVar[str] = "shapes"
    Params: ClassVar[type] = ShapesParams
    description: ClassVar[str] = (
        "procedurally generated images of 10 shape classes (no download): 28x28 grayscale, or "
        "side=32 channels=3 like CIFAR-10; small CNN, or model= any image model"
    )
    default_partition: ClassVar[str] = "dirichlet_per_class"
    params: ShapesParams

    def __init__(self, params: ShapesParams | None = None) -> None:
        super().__init__(params if params is not None else ShapesParams())

    def load(self, num_clients: int, seed: int) -> Dataset:
        # The images do not depend on num_clients: a partitioner splits them afterwards.
        # Train and test come from separate streams, so one's size never shifts the other.
        p = self.params
        gen = {
            split: generate(
                size,
                p.num_classes,
                p.noise,
                p.max_rotation_deg,
                np.random.default_rng([int(seed), _PURPOSE, split]),
                p.side,
                p.channels,
            )
            for split, size in ((_TRAIN, p.train_samples), (_TEST, p.test_samples))
        }
        (x_train, y_train), (x_test, y_test) = gen[_TRAIN], gen[_TEST]
        return Dataset(x_train, y_train, x_test, y_test, num_classes=p.num_classes)

    def cut_name(self) -> str:
        """Where split learning cuts the model: ``workload.cut``, or the model's default."""
        return resolve_cut(self.params.model, self.params.cut)

    def model(self, dataset_meta: DatasetMeta) -> torch.nn.Module:
        from workloads.models import ShapesCNN, image_model

        if self.params.model != "cnn":
            return image_model(self.params.model, dataset_meta.input_shape, dataset_meta.num_classes)
        channels, height, width = dataset_meta.input_shape
        return ShapesCNN(channels, height, width, dataset_meta.num_classes)

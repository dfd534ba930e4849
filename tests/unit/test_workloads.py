"""Built-in workloads: Synthetic(alpha, beta) and Shapes -- determinism, layout, learnability."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from workloads import WORKLOADS, DatasetMeta
from workloads.shapes import SHAPES, Shapes, ShapesParams
from workloads.synthetic import Synthetic, SyntheticParams

SMALL_SHAPES = ShapesParams(train_samples=2000, test_samples=500)


def test_registry_and_defaults() -> None:
    assert WORKLOADS["synthetic"] is Synthetic and WORKLOADS["shapes"] is Shapes
    assert Synthetic.default_partition == "natural"
    assert Shapes.default_partition == "dirichlet_per_class"


def test_importing_workloads_does_not_import_torch() -> None:
    # The driver validates configs without torch; only model() may import it.
    code = "import sys, workloads, workloads.partition; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (lambda: SyntheticParams(dim=0), "dim must be >= 1 (got 0)"),
        (lambda: SyntheticParams(alpha=-1.0), "alpha must be >= 0"),
        (lambda: SyntheticParams(test_fraction=1.0), "test_fraction must be in (0, 1)"),
        (lambda: SyntheticParams(max_samples=1), "max_samples must be >= 2"),
        (lambda: ShapesParams(noise=-0.1), "noise must be >= 0"),
        (lambda: ShapesParams(train_samples=0), "train_samples must be >= 1"),
        (lambda: ShapesParams(num_classes=11), "num_classes must be in [2, 10]"),
        (lambda: ShapesParams(max_rotation_deg=45.0), "max_rotation_deg must be in [0, 22.5)"),
        (lambda: ShapesParams(side=12), "side must be in [16, 64] (got 12)"),
        (lambda: ShapesParams(side=65), "side must be in [16, 64] (got 65)"),
        (lambda: ShapesParams(channels=2), "channels must be 1 or 3 (got 2)"),
        (lambda: ShapesParams(model="vgg"), "model must be one of cnn, mnist_cnn, cifar_cnn, resnet18"),
    ],
)
def test_params_validation_names_the_field(params, message: str) -> None:
    with pytest.raises(ValueError) as e:
        params()
    assert str(e.value).startswith(message)


# --- Synthetic(alpha, beta) ---------------------------------------------------------------


def test_synthetic_layout_and_natural_partition() -> None:
    ds = Synthetic().load(20, seed=1)
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape[1] == 60
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_test.shape[1] == 60 and len(ds.x_test) == len(ds.y_test)
    assert ds.y_train.min() >= 0 and ds.y_train.max() < ds.num_classes == 10
    parts = ds.natural_partition
    assert parts is not None and len(parts) == 20
    # Contiguous per-client blocks that cover the training set exactly once.
    assert np.array_equal(np.concatenate(parts), np.arange(len(ds.y_train)))
    total = np.array([len(p) for p in parts]) / 0.8
    assert total.min() >= 50 - 1 and total.max() <= 1000 + 1  # LEAF's +50 floor, our cap
    # The lognormal power law gives very unequal clients.
    assert total.max() > 3 * np.median(total)


def test_synthetic_size_cap() -> None:
    ds = Synthetic(SyntheticParams(max_samples=60)).load(30, seed=0)
    assert ds.natural_partition is not None
    assert all(len(p) <= 48 for p in ds.natural_partition)  # 60 minus the 20% test split
    assert len(ds.y_test) + len(ds.y_train) <= 30 * 60


def test_synthetic_equal_sizes() -> None:
    ds = Synthetic(SyntheticParams(samples_per_client=640)).load(10, seed=0)
    assert ds.natural_partition is not None
    assert [len(p) for p in ds.natural_partition] == [512] * 10  # 640 less the 20% test split
    assert len(ds.y_test) == 10 * 128
    with pytest.raises(ValueError, match="samples_per_client must be 0"):
        SyntheticParams(samples_per_client=1)


def test_synthetic_deterministic_per_client_regardless_of_num_clients() -> None:
    w = Synthetic()
    a, b, bigger = w.load(5, seed=7), w.load(5, seed=7), w.load(12, seed=7)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert a.natural_partition is not None and bigger.natural_partition is not None
    for k in range(5):
        ia, ib = a.natural_partition[k], bigger.natural_partition[k]
        assert np.array_equal(a.x_train[ia], bigger.x_train[ib])
        assert np.array_equal(a.y_train[ia], bigger.y_train[ib])
    # The first clients' test samples are a prefix of the bigger federation's test set.
    assert np.array_equal(a.x_test, bigger.x_test[: len(a.x_test)])
    other = w.load(5, seed=8)
    assert not np.array_equal(a.x_train[:50], other.x_train[:50])


def test_synthetic_labels_follow_the_clients_model() -> None:
    torch = pytest.importorskip("torch")
    w = Synthetic()
    x, y = w.client_data(seed=3, k=0)
    assert len(y) >= 300  # big enough for the fit to mean something
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    random_model = w.model(DatasetMeta((60,), 10))
    fitted = w.model(DatasetMeta((60,), 10))
    opt = torch.optim.Adam(fitted.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        w.loss(fitted(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        acc_fit = (fitted(xt).argmax(1) == yt).float().mean().item()
        acc_rand = (random_model(xt).argmax(1) == yt).float().mean().item()
        x1, y1 = (torch.from_numpy(a) for a in w.client_data(seed=3, k=1))
        acc_other = (fitted(x1).argmax(1) == y1).float().mean().item()
    # y = argmax(W_k x + b_k) is linear in x, so the client's data is (nearly) separable.
    assert acc_fit > 0.9, acc_fit
    assert acc_fit > acc_rand + 0.4
    # Another client's labels come from another model (alpha = 1): client 0's fit is off there.
    assert acc_other < acc_fit - 0.2, acc_other


def test_synthetic_model_shape() -> None:
    torch = pytest.importorskip("torch")
    w = Synthetic(SyntheticParams(dim=7, num_classes=3))
    ds = w.load(2, seed=0)
    out = w.model(DatasetMeta.of(ds))(w.to_tensor(ds.x_train[:5]))
    assert out.shape == (5, 3) and out.dtype == torch.float32


# --- Shapes ---------------------------------------------------------------------------------


def test_shapes_layout_and_balance() -> None:
    ds = Shapes(SMALL_SHAPES).load(10, seed=0)
    assert ds.x_train.shape == (2000, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (500, 1, 28, 28)
    assert ds.y_train.dtype == np.int64 and ds.num_classes == len(SHAPES) == 10
    assert ds.natural_partition is None
    assert np.array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 200))
    assert ds.x_train.std() > 20  # neither blank nor saturated


def test_shapes_deterministic_in_seed() -> None:
    w = Shapes(SMALL_SHAPES)
    a, b, c = w.load(3, seed=5), w.load(99, seed=5), w.load(3, seed=6)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    # The test set does not depend on the training-set size.
    more = Shapes(ShapesParams(train_samples=3000, test_samples=500)).load(3, seed=5)
    assert np.array_equal(a.x_test, more.x_test)


def test_shapes_classes_differ() -> None:
    ds = Shapes(SMALL_SHAPES).load(10, seed=0)
    x = ds.x_train.reshape(len(ds.y_train), -1).astype(np.float64)
    means = np.stack([x[ds.y_train == c].mean(0) for c in range(10)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    off_diag = dist[~np.eye(10, dtype=bool)]
    assert off_diag.min() > 50, off_diag.min()  # every pair of mean images differs visibly
    # Yet no class is a fixed template: images of one class vary about as much as the means.
    within = np.linalg.norm(x[ds.y_train == 0] - means[0], axis=1).mean()
    assert within > off_diag.min()


def test_shapes_noise_parameter() -> None:
    clean = Shapes(ShapesParams(train_samples=200, test_samples=10, noise=0.0)).load(1, seed=0)
    noisy = Shapes(ShapesParams(train_samples=200, test_samples=10, noise=0.3)).load(1, seed=0)
    # Same shapes (same stream before the noise draw), more pixel variation.
    assert np.array_equal(clean.y_train, noisy.y_train)
    diff = noisy.x_train.astype(np.float64) - clean.x_train
    assert 40 < diff.std() < 90


def test_shapes_cnn_output_shape() -> None:
    torch = pytest.importorskip("torch")
    w = Shapes(SMALL_SHAPES)
    ds = w.load(1, seed=0)
    torch.manual_seed(0)
    model = w.model(DatasetMeta.of(ds))
    out = model(w.to_tensor(ds.x_train[:4]))
    assert out.shape == (4, 10)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == (16 * 25 + 16) + (32 * 16 * 25 + 32) + (32 * 7 * 7 * 64 + 64) + (64 * 10 + 10)
    loss = w.loss(out, torch.from_numpy(ds.y_train[:4]))
    assert loss.item() == pytest.approx(np.log(10), abs=0.5)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_shapes_defaults_unchanged_bit_for_bit() -> None:
    # Digest and pixels taken from the code before side/channels/model existed; 2500 images
    # span two of generate's render chunks, so chunking must not shift the noise stream.
    ds = Shapes(ShapesParams(train_samples=2500, test_samples=100)).load(1, seed=3)
    assert ds.x_train.shape == (2500, 1, 28, 28)
    assert ds.x_train[7, 0, 14, 10:18].tolist() == [0, 0, 15, 0, 0, 0, 102, 202]
    assert _digest(ds.x_train, ds.y_train, ds.x_test, ds.y_test) == (
        "95036397a8fa39be746f3b2a1227425a1ee74158e2c8443a26963528663c5818"
    )


def test_shapes_cifar_layout_colour_carries_no_class() -> None:
    params = ShapesParams(train_samples=2000, test_samples=100, side=32, channels=3)
    ds = Shapes(params).load(1, seed=0)
    assert ds.x_train.shape == (2000, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (100, 3, 32, 32) and ds.y_train.dtype == np.int64
    assert np.array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 200))
    # Colour draws come after the grayscale ones: same labels as the 1-channel images.
    gray = Shapes(ShapesParams(train_samples=2000, test_samples=100, side=32)).load(1, seed=0)
    assert np.array_equal(ds.y_train, gray.y_train) and gray.x_train.shape == (2000, 1, 32, 32)
    # Every image has its own colours: per-image channel means spread widely...
    rgb = ds.x_train.reshape(2000, 3, -1).mean(axis=2)
    assert rgb.std(axis=0).min() > 30
    # ...but the class-mean colours agree (within a few sampling errors of 200 images).
    class_rgb = np.stack([rgb[ds.y_train == c].mean(axis=0) for c in range(10)])
    assert np.ptp(class_rgb, axis=0).max() < 6 * rgb.std(axis=0).max() / np.sqrt(200)
    # The shape stays visible: every image spans a wide intensity range in some channel.
    span = np.ptp(ds.x_train.reshape(2000, 3, -1), axis=2).max(axis=1)
    assert span.min() > 100


def test_shapes_scale_with_side() -> None:
    # Without noise, a shape covers about the same share of the image at every side.
    def ink(side: int) -> float:
        params = ShapesParams(train_samples=1000, test_samples=10, noise=0.0, side=side)
        x = Shapes(params).load(1, seed=0).x_train
        assert x.shape == (1000, 1, side, side)
        return float((x > 80).mean())

    share = {side: ink(side) for side in (16, 28, 64)}
    assert 0.1 < share[28] < 0.25, share
    assert abs(share[16] - share[28]) < 0.02 and abs(share[64] - share[28]) < 0.02, share


def test_shapes_model_choice() -> None:
    torch = pytest.importorskip("torch")
    w = Shapes(ShapesParams(train_samples=100, test_samples=10, side=32, channels=3, model="cifar_cnn"))
    ds = w.load(1, seed=0)
    torch.manual_seed(0)
    model = w.model(DatasetMeta.of(ds))
    assert model(w.to_tensor(ds.x_train[:4])).shape == (4, 10)
    # pfl-research's CIFAR CNN, as hand-counted in test_models.py.
    assert sum(p.numel() for p in model.parameters()) == 1_626_442
    # The small CNN adapts its head to the side: 32 -> 8 after two pools.
    small = Shapes(ShapesParams(side=32, channels=3)).model(DatasetMeta((3, 32, 32), 10))
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small == (16 * 3 * 25 + 16) + (32 * 16 * 25 + 32) + (32 * 8 * 8 * 64 + 64) + (64 * 10 + 10)


def test_shapes_engine_config_keys() -> None:
    from engine.config import load_config

    keys = ["workload.name=shapes", "workload.side=32", "workload.channels=3", "workload.model=cifar_cnn"]
    params = load_config(None, keys).workload.params
    assert (params.side, params.channels, params.model) == (32, 3, "cifar_cnn")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_config(None, ["workload.name=shapes", "workload.channels=2"])

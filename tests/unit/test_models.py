"""Models: output shapes, parameter counts (hand-computed from the papers' layer lists), and
that the whole state travels in the flat vector."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from workloads import WORKLOADS, DatasetMeta, ParamLayout
from workloads.vision import IMAGE_MODELS

torch = pytest.importorskip("torch")
models = pytest.importorskip("workloads.models")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny batches: on a shared CPU, torch's thread pool costs far more than the math.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_agree() -> None:
    # vision.py repeats the names so that validating a config needs no torch.
    assert models.IMAGE_MODELS == IMAGE_MODELS


def test_mnist_cnn_is_gwpfs() -> None:
    m = models.image_model("mnist_cnn", (1, 28, 28), 10)
    assert m(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    conv1, conv2 = 32 * 1 * 5 * 5 + 32, 64 * 32 * 5 * 5 + 64
    fc1, fc2 = 1024 * 512 + 512, 512 * 10 + 10  # 64 channels x 4 x 4 = 1024 inputs
    assert n_params(m) == conv1 + conv2 + fc1 + fc2 == 582_026
    # 32x32 inputs (EMNIST as GWPF resizes it) give 64 x 5 x 5 features.
    assert models.image_model("mnist_cnn", (1, 32, 32), 47).fc1.in_features == 1600


def test_cifar_cnn_is_pfl_researchs() -> None:
    m = models.image_model("cifar_cnn", (3, 32, 32), 10)
    m.eval()  # dropout off: the same input gives the same logits
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 10) and torch.equal(m(x), m(x))
    conv1, conv2 = 32 * 3 * 3 * 3 + 32, 64 * 32 * 3 * 3 + 64
    dense, out = 14 * 14 * 64 * 128 + 128, 128 * 10 + 10  # 32 -> 30 -> 28 -> pool 14
    assert n_params(m) == conv1 + conv2 + dense + out == 1_626_442
    assert [type(layer).__name__ for layer in m].count("Dropout") == 2


def test_resnet18_has_no_buffers_and_round_trips() -> None:
    m = models.image_model("resnet18", (3, 32, 32), 10)
    # The well-known count of the CIFAR ResNet-18 (GroupNorm has BatchNorm's affine parameters).
    assert n_params(m) == 11_173_962
    # No running statistics: every entry of the flat vector is a trained parameter.
    assert list(m.buffers()) == []
    layout = ParamLayout.of(m)
    assert layout.size == n_params(m)
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    before = m(x)
    assert before.shape == (2, 10)
    flat = layout.flatten(m)
    other = models.image_model("resnet18", (3, 32, 32), 10)
    layout.load(other, flat)
    other.eval()
    assert torch.allclose(other(x), before)
    # 28x28 grayscale works too (adaptive pooling).
    assert models.image_model("resnet18", (1, 28, 28), 62)(torch.zeros(1, 1, 28, 28)).shape == (1, 62)


def test_char_lstm_is_leafs() -> None:
    m = models.CharLSTM(80)
    x = torch.randint(0, 80, (3, 80))
    assert m(x).shape == (3, 80)
    embed = 80 * 8
    layer1 = 4 * (256 * 8 + 256 * 256 + 2 * 256)  # input, recurrent weights, two biases per gate
    layer2 = 4 * (256 * 256 + 256 * 256 + 2 * 256)
    assert n_params(m) == embed + layer1 + layer2 + 256 * 80 + 80 == 819_920


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="choose one of mnist_cnn"):
        models.image_model("vgg11", (3, 32, 32), 10)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "emnist", "cifar10", "cifar100", "femnist"])
def test_workload_models_fit_their_data(name: str) -> None:
    w = WORKLOADS[name]()
    shape = (3, 32, 32) if name.startswith("cifar") else (1, 28, 28)
    classes = {"emnist": 47, "cifar100": 100, "femnist": 62}.get(name, 10)
    m = w.model(DatasetMeta(shape, classes))
    x = w.to_tensor(np.zeros((2, *shape), dtype=np.uint8))
    assert m(x).shape == (2, classes)


def test_layout_round_trips_an_integer_buffer_and_refuses_a_wrong_length() -> None:
    # BatchNorm's step counter is int64: it travels as a float32 entry and comes back as int.
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    layout = ParamLayout.of(model)
    assert layout.sizes == (6, 3, 3, 3, 3, 3, 1) and layout.size == 22
    flat = np.arange(22, dtype=np.float32)
    layout.load(model, flat)
    assert model[1].num_batches_tracked.dtype == torch.int64 and int(model[1].num_batches_tracked) == 21
    assert model[0].weight.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert layout.flatten(model).tolist() == flat.tolist()
    with pytest.raises(RuntimeError):  # one entry short: nothing is loaded partly by guesswork
        layout.load(model, flat[:-1])

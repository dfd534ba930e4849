"""Split learning's cut (workloads/split.py): the two parts compose to the model bit for bit and
share its tensors, the client's entries are a prefix of the flat vector, byte and compute
shares are measured from the model, and ``workload.cut`` is checked without torch."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from engine.config import ConfigError, load_config
from workloads import ParamLayout
from workloads.shapes import Shapes, ShapesParams
from workloads.vision import CUTS, IMAGE_MODELS, Cifar10, Mnist, VisionParams

torch = pytest.importorskip("torch")
models = pytest.importorskip("workloads.models")
split = pytest.importorskip("workloads.split")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny batches: on a shared CPU, torch's thread pool costs far more than the math.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Model name in CUTS -> (builder, input shape per example). The CIFAR-stem ResNet keeps its
# input's size to layer1, so 16x16 keeps it cheap; the reference stem shrinks 32x32 to 8x8.
MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "mnist_cnn": (lambda: models.MnistCNN(1, 28, 28, 10), (1, 28, 28)),
    "cifar_cnn": (lambda: models.CifarCNN(3, 32, 32, 10), (3, 32, 32)),
    "cnn": (lambda: models.ShapesCNN(1, 28, 28, 10), (1, 28, 28)),
    "resnet18": (lambda: models.ResNet18(3, 10), (3, 16, 16)),
    "resnet18_ref": (lambda: models.ResNet18(3, 10, "imagenet"), (3, 32, 32)),
}
PAIRS = [(name, cut) for name, cuts in CUTS.items() for cut in cuts]


def test_every_model_has_cuts() -> None:
    assert set(CUTS) == {*IMAGE_MODELS, "cnn"} == set(MODELS)


@pytest.mark.parametrize(("name", "cut"), PAIRS)
def test_parts_compose_to_the_model_and_share_its_tensors(name: str, cut: str) -> None:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, *shape)
    client, server = split.split_model(model, cut)
    for training in (False, True):
        model.train(training), client.train(training), server.train(training)
        torch.manual_seed(1)  # the same dropout draws on both sides
        expected = model(x)
        torch.manual_seed(1)
        assert torch.equal(server(client(x)), expected), training
    ids = {id(p) for p in model.parameters()}
    mine = [id(p) for p in client.parameters()]
    theirs = [id(p) for p in server.parameters()]
    assert set(mine) | set(theirs) == ids and not set(mine) & set(theirs)
    model.eval(), client.eval(), server.eval()  # no dropout draws below
    expected = model(x)
    with torch.no_grad():
        next(client.parameters()).add_(1.0)
    assert not torch.equal(model(x), expected)  # the model's own tensor changed


@pytest.mark.parametrize("name", ["mnist_cnn", "cifar_cnn", "cnn", "resnet18_ref"])
def test_narrow_models_split_with_their_scaler(name: str) -> None:
    build, shape = MODELS[name]
    model = models.narrow(build(), 0.5)
    x = torch.randn(2, *shape)
    client, server = split.split_model(model, "")
    for training in (True, False):
        model.train(training), client.train(training), server.train(training)
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        assert torch.equal(server(client(x)), expected), training


def test_parts_take_the_models_mode() -> None:
    model = MODELS["mnist_cnn"][0]().eval()
    assert not any(m.training for part in split.split_model(model, "conv1") for m in part.modules())


@pytest.mark.parametrize(("name", "cut"), PAIRS)
def test_the_client_part_is_a_prefix_of_the_flat_vector(name: str, cut: str) -> None:
    build, shape = MODELS[name]
    model = build()
    info = split.describe_cut(model, cut, shape)
    layout = ParamLayout.of(model)
    client, _ = split.split_model(model, cut)
    own = torch.cat([t.reshape(-1) for t in client.state_dict().values()]).numpy()
    assert info.model_entries == layout.size and info.client_entries == own.size
    assert np.array_equal(layout.flatten(model)[: info.client_entries], own)
    assert info.cut == cut and model.training  # measured in eval mode, the mode restored


def test_a_part_out_of_order_is_refused() -> None:
    model = MODELS["mnist_cnn"][0]()
    client, server = split.split_model(model, "flatten")
    with pytest.raises(ValueError, match="not a prefix"):
        split._client_entries(model, ParamLayout.of(model), server, client)


def test_mnist_cnn_at_flatten_by_hand() -> None:
    info = split.describe_cut(MODELS["mnist_cnn"][0](), "", (1, 28, 28))
    conv1, conv2 = 1 * 32 * 25 + 32, 32 * 64 * 25 + 64
    assert info.cut == "flatten" and info.client_entries == conv1 + conv2 == 52_096
    assert info.server_entries == 1024 * 512 + 512 + 512 * 10 + 10
    assert info.activation_shape == (1024,) and info.activation_bytes == 1024 * 4
    flops_conv1, flops_conv2 = 2 * 24 * 24 * 32 * 1 * 25, 2 * 8 * 8 * 64 * 32 * 25
    flops_fc1, flops_fc2 = 2 * 512 * 1024, 2 * 10 * 512
    client = flops_conv1 + flops_conv2
    assert info.client_flops_fraction == client / (client + flops_fc1 + flops_fc2)
    assert info.server_flops_fraction == 1 - info.client_flops_fraction
    conv1_only = split.describe_cut(MODELS["mnist_cnn"][0](), "conv1", (1, 28, 28))
    assert conv1_only.client_entries == 832 and conv1_only.activation_shape == (32, 12, 12)


def test_resnet_activations_at_layer2() -> None:
    ref = split.describe_cut(models.image_model("resnet18_ref", (3, 32, 32), 10), "layer2", (3, 32, 32))
    assert ref.activation_shape == (128, 4, 4) and ref.activation_bytes == 8192
    cifar = split.describe_cut(models.image_model("resnet18", (3, 32, 32), 10), "", (3, 32, 32))
    assert cifar.cut == "layer2" and cifar.activation_shape == (128, 16, 16)


def test_unknown_models_and_cuts_are_refused_in_one_line() -> None:
    with pytest.raises(
        ValueError, match=r"^cut must be one of layer2, layer1, layer3 for model resnet18_ref \("
    ):
        split.split_model(MODELS["resnet18_ref"][0](), "flatten")
    with pytest.raises(ValueError, match=r"^cannot cut a CharLSTM: split learning cuts mnist_cnn at flatten"):
        split.split_model(models.CharLSTM(10), "")


def test_aux_models() -> None:
    state = torch.get_rng_state()
    flat = split.aux_model((1024,), 10, seed=3)
    image = split.aux_model((128, 4, 4), 10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # built off the caller's stream
    assert flat(torch.randn(2, 1024)).shape == (2, 10)
    assert image(torch.randn(2, 128, 4, 4)).shape == (2, 10)
    assert isinstance(split.aux_model((1024,), 10, hidden=0, seed=3), torch.nn.Linear)
    same, other = split.aux_model((1024,), 10, seed=3), split.aux_model((1024,), 10, seed=4)
    for a, b, c in zip(*(m.state_dict().values() for m in (flat, same, other)), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)
    # A few times smaller than the server part it stands in for (ResNet-18's layers 3, 4, fc).
    server_entries = split.describe_cut(models.image_model("resnet18_ref", (3, 32, 32), 10), "", (3, 32, 32))
    assert 3 * sum(p.numel() for p in image.parameters()) < server_entries.server_entries
    with pytest.raises(ValueError, match="takes"):
        split.aux_model((4, 4), 10, seed=0)


def test_resnet18_is_unchanged_and_resnet18_ref_builds() -> None:
    old = models.image_model("resnet18", (3, 32, 32), 10)
    assert sum(p.numel() for p in old.parameters()) == 11_173_962  # as before the ImageNet stem
    assert len(old.stem) == 3 and old.stem[0].kernel_size == (3, 3)
    ref = models.image_model("resnet18_ref", (3, 32, 32), 10)
    # Only the stem's convolution differs: 7x7 instead of 3x3 kernels, 64 x 3 of them.
    assert sum(p.numel() for p in ref.parameters()) == 11_173_962 + 64 * 3 * (49 - 9)
    assert models.narrow(ref, 0.5).shape_args[2] == "imagenet"  # HeteroFL keeps the stem
    with pytest.raises(ValueError, match="stem must be"):
        models.ResNet18(3, 10, "tiny")


def test_workload_cut_is_checked_and_resolved_without_torch() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["workload.name=mnist", "workload.cut=x"])
    assert str(e.value) == "workload.cut must be one of flatten, conv1 for model mnist_cnn (got 'x')"
    cfg = load_config(None, ["workload.name=shapes", "workload.cut=conv1"])
    assert cfg.workload.params.cut == "conv1"
    assert Shapes().cut_name() == "flatten"
    assert Shapes(ShapesParams(model="resnet18_ref")).cut_name() == "layer2"
    assert Mnist(VisionParams(cut="conv1")).cut_name() == "conv1"
    assert Cifar10().cut_name() == "flatten"
    with pytest.raises(ValueError, match=r"^cut must be one of flatten for model cifar_cnn \(got 'conv1'\)"):
        ShapesParams(model="cifar_cnn", cut="conv1")

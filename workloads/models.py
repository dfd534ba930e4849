"""Models of the papers the workloads reproduce (imports torch: import this module lazily).

- ``mnist_cnn``: GWPF's MNIST CNN (Dora233/GWPF ``models/CNN.py``): conv 5x5 32 -> max-pool
  -> ReLU -> conv 5x5 64 -> max-pool -> ReLU -> fc 1024-512 -> fc 512-classes. GWPF ends with
  log_softmax under an NLL loss; returning logits under cross-entropy is the same loss.
- ``cifar_cnn``: pfl-research's CIFAR-10 benchmark CNN (``benchmarks/model/pytorch/cnn.py``
  ``simple_cnn``): conv 3x3 32 -> conv 3x3 64 -> max-pool -> dropout 0.25 -> dense 128 ->
  dropout 0.5 -> classes, Glorot-uniform weights (as there, to match its TF2 twin).
- ``resnet18``: ResNet-18 for 32x32 inputs (3x3 stride-1 stem, no max-pool, as in the CIFAR
  ResNets the FL papers train) with GroupNorm(2 groups) instead of BatchNorm, following
  Hsieh et al. 2020 ("The Non-IID Data Quagmire", arXiv 1910.00189). Why not BatchNorm: its
  running statistics are buffers, and buffers travel in the flat vector (``ParamLayout``
  includes them) as *deltas* that the server aggregates like gradients -- a server optimizer
  (FedAdam's per-coordinate scaling, momentum) can then push ``running_var`` negative, and a
  non-IID client's batch statistics skew the global ones. GroupNorm has no buffers and does not
  depend on the batch, so every entry of the vector is a trained parameter.
- ``resnet18_ref``: the same ResNet-18 with the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2
  max-pool) of FSL-SAGE's reference, which split learning's byte counts assume: on 32x32 images
  its layer2 outputs 128x4x4, not 128x16x16.
- ``char_lstm``: LEAF's / the FedAvg paper's Shakespeare model: embedding 8, two LSTM layers
  of 256 units, a dense layer over the vocabulary applied to the last step's output.
- ``ShapesCNN``: the Shapes workload's small CNN; ``MLP``: Synthetic's optional hidden layers.

**Width** (HeteroFL, algorithms/heterofl.py). Every model above but the LSTM is a
``WidthScalable``: built with ``rate`` < 1 it keeps ``hidden_width(d, rate)`` = ceil(rate * d)
channels or units of every hidden layer of width d (ResNet-18 rounds up to an even count for
its 2 GroupNorm groups), with the input and the classifier's outputs whole. State-dict names
are the same at every rate, and each tensor of the narrow model has the shape of the leading
block of the full one's, so a sub-model's parameters are those leading blocks
(algorithms/heterofl_rules.py does the index math). With ``scaler`` the narrow model divides
every hidden layer's output by ``rate`` while training (HeteroFL's Scaler; identity in eval
mode), so its activations keep the full model's scale. Rate 1 (the default) builds exactly the
model as it always was: same modules, same initial draws, same forward.

Dropout draws from torch's global generator; the executor seeds it per job, so results stay
independent of which executor ran which job.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

IMAGE_MODELS = ("mnist_cnn", "cifar_cnn", "resnet18", "resnet18_ref")


def image_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One of ``IMAGE_MODELS`` for (channels, height, width) inputs."""
    channels, height, width = input_shape
    if name == "mnist_cnn":
        return MnistCNN(channels, height, width, num_classes)
    if name == "cifar_cnn":
        return CifarCNN(channels, height, width, num_classes)
    if name == "resnet18":
        return ResNet18(channels, num_classes)
    if name == "resnet18_ref":
        return ResNet18(channels, num_classes, "imagenet")
    raise ValueError(f"unknown image model {name!r}; choose one of {', '.join(IMAGE_MODELS)}")


def hidden_width(d: int, rate: float, multiple: int = 1) -> int:
    """HeteroFL's width of a hidden layer of ``d`` units at ``rate``: ``ceil(rate * d)`` (the
    reference's ``int(np.ceil(d * rate))``), at least 1 and rounded up to a multiple of
    ``multiple``. The product is rounded to 9 decimals first: 0.1 * 30 is 3.0000000000000004
    in floats and must stay 3, not become 4."""
    if not 0 < rate <= 1:
        raise ValueError(f"a width rate must be in (0, 1] (got {rate})")
    n = max(1, math.ceil(round(rate * d, 9)))
    return -(-n // multiple) * multiple


class WidthScalable:
    """A model that can be rebuilt at a fraction of its hidden widths (see the module
    docstring). Subclasses set ``shape_args`` (their positional constructor arguments),
    ``rate`` and ``scaler`` in ``__init__`` and call ``scale`` on every hidden layer's output."""

    shape_args: tuple[Any, ...]
    rate: float
    scaler: bool
    training: bool

    def at_width(self, rate: float, scaler: bool = True) -> nn.Module:
        """The same architecture at width ``rate`` (freshly initialised)."""
        build: Any = type(self)
        model: nn.Module = build(*self.shape_args, rate=rate, scaler=scaler)
        return model

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return scaled(x, self.rate, self.scaler, self.training)


def scaled(x: torch.Tensor, rate: float, scaler: bool, training: bool) -> torch.Tensor:
    """The reference's Scaler: training outputs divided by the rate, eval untouched. At rate 1
    nothing is computed, so the full model's forward is what it always was."""
    return x / rate if scaler and rate != 1 and training else x


def narrow(model: nn.Module, rate: float, scaler: bool = True) -> nn.Module:
    """``model`` rebuilt at width ``rate`` on its device. Its initial weights are drawn off
    torch's global stream (forked), so building one changes no later draw of the run."""
    if not isinstance(model, WidthScalable):
        raise TypeError(
            f"a width-scaled sub-model needs a model that takes a width, which {type(model).__name__} "
            "does not: use shapes, mnist, fashion_mnist, emnist, cifar10, cifar100, femnist, or "
            "synthetic with workload.hidden set"
        )
    with torch.random.fork_rng(devices=[]):
        sub = model.at_width(rate, scaler)
    return sub.to(next(model.parameters()).device)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one example through the convolutions and linear layers
    (2 per multiply-add, bias and activations not counted: what ``torch.utils.flop_counter``
    reports for these layers, without its seconds-long first start), in eval mode."""
    total = 0

    def count(layer: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += 2 * out.numel() * (layer.in_channels // layer.groups) * kh * kw
        else:
            assert isinstance(layer, nn.Linear)
            total += 2 * out.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return total


class MnistCNN(WidthScalable, nn.Module):
    def __init__(
        self, channels: int, height: int, width: int, num_classes: int, rate: float = 1.0, scaler: bool = True
    ) -> None:
        super().__init__()
        self.shape_args, self.rate, self.scaler = (channels, height, width, num_classes), rate, scaler
        c1, c2, f1 = (hidden_width(d, rate) for d in (32, 64, 512))
        self.conv1 = nn.Conv2d(channels, c1, kernel_size=5)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        # Two valid 5x5 convolutions, each followed by a 2x2 pool: 28 -> 24 -> 12 -> 8 -> 4,
        # so 64 * 4 * 4 = 1024 features on MNIST (GWPF's fc 1024-512).
        h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(c2 * h * w, f1)
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(nn.functional.max_pool2d(self.scale(self.conv1(x)), 2))
        x = torch.relu(nn.functional.max_pool2d(self.scale(self.conv2(x)), 2))
        return self.fc2(torch.relu(self.scale(self.fc1(x.flatten(1)))))


class CifarCNN(WidthScalable, nn.Sequential):
    def __init__(
        self, channels: int, height: int, width: int, num_classes: int, rate: float = 1.0, scaler: bool = True
    ) -> None:
        c1, c2, f1 = (hidden_width(d, rate) for d in (32, 64, 128))
        super().__init__(
            nn.Conv2d(channels, c1, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            # Two valid 3x3 convolutions and a 2x2 pool: 32 -> 30 -> 28 -> 14.
            nn.Linear(c2 * ((height - 4) // 2) * ((width - 4) // 2), f1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(f1, num_classes),
        )
        self.shape_args, self.rate, self.scaler = (channels, height, width, num_classes), rate, scaler
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_sequential(self, x)


def scaled_sequential(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``nn.Sequential``'s forward, with HeteroFL's scaler after every hidden convolution or
    linear layer (all but the last layer) of a ``WidthScalable`` sequential model."""
    assert isinstance(model, WidthScalable)
    last = len(model) - 1
    for i, layer in enumerate(model):
        x = layer(x)
        if i != last and isinstance(layer, nn.Conv2d | nn.Linear):
            x = model.scale(x)
    return x


class ShapesCNN(WidthScalable, nn.Sequential):
    """The Shapes workload's small CNN: two conv(5x5, same padding) + ReLU + 2x2 max-pool
    stages, then a 64-unit MLP head."""

    def __init__(
        self, channels: int, height: int, width: int, num_classes: int, rate: float = 1.0, scaler: bool = True
    ) -> None:
        c1, c2, f1 = (hidden_width(d, rate) for d in (16, 32, 64))
        super().__init__(
            nn.Conv2d(channels, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (height // 4) * (width // 4), f1),
            nn.ReLU(),
            nn.Linear(f1, num_classes),
        )
        self.shape_args, self.rate, self.scaler = (channels, height, width, num_classes), rate, scaler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_sequential(self, x)


class MLP(WidthScalable, nn.Module):
    """Fully connected ReLU layers of ``hidden`` units between the inputs and the classes."""

    def __init__(
        self, inputs: int, hidden: tuple[int, ...], num_classes: int, rate: float = 1.0, scaler: bool = True
    ) -> None:
        super().__init__()
        self.shape_args, self.rate, self.scaler = (inputs, tuple(hidden), num_classes), rate, scaler
        sizes = [inputs, *(hidden_width(h, rate) for h in hidden), num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(self.scale(layer(x)))
        out: torch.Tensor = self.layers[-1](x)
        return out


# GroupNorm groups in ResNet-18 (Hsieh et al. 2020 use 2).
_GROUPS = 2


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, rate: float = 1.0, scaler: bool = True) -> None:
        super().__init__()
        self.rate, self.scaler = rate, scaler
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_GROUPS, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_GROUPS, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(_GROUPS, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.scale(self.conv1(x))))
        short = self.shortcut
        # HeteroFL's scaler sits between a convolution and its norm, the shortcut's too.
        sc = short[1](self.scale(short[0](x))) if isinstance(short, nn.Sequential) else short(x)
        return torch.relu(self.norm2(self.scale(self.conv2(out))) + sc)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return scaled(x, self.rate, self.scaler, self.training)


class ResNet18(WidthScalable, nn.Module):
    def __init__(
        self, channels: int, num_classes: int, stem: str = "cifar", rate: float = 1.0, scaler: bool = True
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet' (got {stem!r})")
        self.shape_args, self.rate, self.scaler = (channels, num_classes, stem), rate, scaler

        def width(d: int) -> int:  # GroupNorm needs a channel count its groups divide
            return hidden_width(d, rate, multiple=_GROUPS)

        # A 3x3 stride-1 stem and no max-pool: the ImageNet stem (7x7 stride 2 + pool) would
        # shrink a 32x32 image to 8x8 before the first block; "imagenet" builds it all the same,
        # as the split-learning reference does.
        c = width(64)
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(channels, c, 3, padding=1, bias=False), nn.GroupNorm(_GROUPS, c), nn.ReLU()
            )
        else:
            conv = nn.Conv2d(channels, c, 7, stride=2, padding=3, bias=False)
            pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.stem = nn.Sequential(conv, nn.GroupNorm(_GROUPS, c), nn.ReLU(), pool)
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [
                _BasicBlock(width(cin), width(cout), stride, rate, scaler),
                _BasicBlock(width(cout), width(cout), 1, rate, scaler),
            ]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width(512), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem
        x = stem[2](stem[1](self.scale(stem[0](x))))
        if len(stem) > 3:  # the ImageNet stem's max-pool
            x = stem[3](x)
        x = self.blocks(x)
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class CharLSTM(nn.Module):
    """Next-character prediction: (batch, seq_len) int64 indices -> (batch, vocab) logits."""

    def __init__(self, vocab: int, embed_dim: int = 8, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        # One label per sequence (the character after it) keeps the engine's contract:
        # logits of shape (batch, classes), accuracy by argmax over dim 1.
        return self.fc(out[:, -1])

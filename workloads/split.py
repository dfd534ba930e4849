"""Split learning's cut of a workload's model into a client part and a server part (imports
torch: import this module lazily).

SplitFed, CSE-FSL and FSL-SAGE have each client train the first layers of the model, up to a
named **cut**, and the server train the rest on the client's activations there (the "smashed
data"). ``split_model`` returns the two parts as modules that hold the model's own layers (its
parameter tensors, shared, not copied): ``server(client(x))`` runs exactly the operations of
``model(x)``, HeteroFL's scaler included, so the two agree bit for bit in training and in eval
mode. The cuts of every model, the default first, are ``CUTS`` in workloads/vision.py (there so
that a config's ``workload.cut`` is checked without torch):

- ``mnist_cnn``: ``flatten`` (after conv2, max-pool, ReLU and the flatten: 1024 features on
  28x28) or ``conv1`` (after conv1, max-pool, ReLU).
- ``cifar_cnn``: ``flatten`` (after both convolutions, the max-pool, dropout and the flatten).
- the Shapes workload's ``cnn``: ``flatten`` or ``conv1`` (after the first conv/ReLU/pool stage).
- ``resnet18`` and ``resnet18_ref``: ``layer2``, ``layer1`` or ``layer3``: after the stem and the
  first 4, 2 or 6 basic blocks.

**The prefix rule.** The engine keeps one flat vector for the whole model (``ParamLayout``
order); a client trains and sends only its part, so the client part's entries must be the
vector's first ``CutInfo.client_entries``. Every cut above lies between layers registered in
forward order, so it is; ``describe_cut`` checks it rather than trusting it.

**Measured, never typed in.** ``describe_cut`` runs one zero example through the client part
(eval mode, no grad) to get the activation's shape per example, whose float32 bytes are what a
client sends per example and the server's gradient sends back; and it counts forward FLOPs
(``forward_flops``: convolutions and linear layers) of the client part and of the whole model,
whose ratio is the client's share of the compute that virtual time splits between them.

``aux_model`` is the small head CSE-FSL and FSL-SAGE train on the client's activations so that
clients can update without waiting for the server's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workloads.base import ParamLayout
from workloads.models import (
    CifarCNN,
    MnistCNN,
    ResNet18,
    ShapesCNN,
    WidthScalable,
    _BasicBlock,
    forward_flops,
    scaled,
)
from workloads.vision import CUTS, resolve_cut


class _Scaled(nn.Module):
    """A hidden layer followed by HeteroFL's scaler, as the model's forward applies it. The
    scaler reads this module's own mode, which ``train``/``eval`` on a part set."""

    def __init__(self, layer: nn.Module, model: WidthScalable) -> None:
        super().__init__()
        self.layer, self.rate, self.scaler = layer, model.rate, model.scaler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled(self.layer(x), self.rate, self.scaler, self.training)


def _stages(model: nn.Module) -> tuple[str, list[nn.Module], dict[str, int]]:
    """(the model's name in ``CUTS``, its forward as a sequence of modules, the number of
    leading stages before each cut). The stages repeat the model's ``forward`` op for op."""
    if isinstance(model, MnistCNN):
        conv1, conv2, fc1 = (_Scaled(layer, model) for layer in (model.conv1, model.conv2, model.fc1))
        # nn.MaxPool2d(2) and nn.ReLU call F.max_pool2d(x, 2) and torch.relu, as the forward does.
        conv_stages = [conv1, nn.MaxPool2d(2), nn.ReLU(), conv2, nn.MaxPool2d(2), nn.ReLU()]
        stages = [*conv_stages, nn.Flatten(), fc1, nn.ReLU(), model.fc2]
        return "mnist_cnn", stages, {"conv1": 3, "flatten": 7}
    if isinstance(model, CifarCNN | ShapesCNN):
        # models.scaled_sequential: the scaler after every convolution or linear layer but the last.
        last = len(model) - 1
        stages = [
            _Scaled(layer, model) if i != last and isinstance(layer, nn.Conv2d | nn.Linear) else layer
            for i, layer in enumerate(model)
        ]
        if isinstance(model, CifarCNN):
            return "cifar_cnn", stages, {"flatten": 7}
        return "cnn", stages, {"conv1": 3, "flatten": 7}
    if isinstance(model, ResNet18):
        stem = model.stem
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc)
        stages = [nn.Sequential(_Scaled(stem[0], model), *stem[1:]), *model.blocks, head]
        name = "resnet18_ref" if model.shape_args[2] == "imagenet" else "resnet18"
        # One stage for the stem, then one per basic block: layer k ends after 2k blocks.
        return name, stages, {"layer1": 3, "layer2": 5, "layer3": 7}
    cuts = "; ".join(f"{name} at {', '.join(c)}" for name, c in CUTS.items())
    raise ValueError(f"cannot cut a {type(model).__name__}: split learning cuts {cuts}")


def split_model(model: nn.Module, cut: str) -> tuple[nn.Module, nn.Module]:
    """(client part, server part) of ``model`` at ``cut`` (empty: the model's default), both
    holding the model's own layers; they start in the model's training mode."""
    name, stages, ends = _stages(model)
    end = ends[resolve_cut(name, cut)]
    client, server = nn.Sequential(*stages[:end]), nn.Sequential(*stages[end:])
    # New containers start in training mode; the parts take the model's.
    return client.train(model.training), server.train(model.training)


@dataclass(frozen=True)
class CutInfo:
    """What a cut costs: ``client_entries`` of the flat vector's ``model_entries`` are the
    client's (its first ones); ``activation_shape`` and ``activation_bytes`` (float32) are per
    example; ``client_flops_fraction`` is the client part's share of the forward FLOPs."""

    cut: str
    client_entries: int
    model_entries: int
    activation_shape: tuple[int, ...]
    activation_bytes: int
    client_flops_fraction: float

    @property
    def server_entries(self) -> int:
        return self.model_entries - self.client_entries

    @property
    def server_flops_fraction(self) -> float:
        return 1.0 - self.client_flops_fraction


def describe_cut(model: nn.Module, cut: str, input_shape: tuple[int, ...]) -> CutInfo:
    """``model`` cut at ``cut`` (empty: the default) for inputs of ``input_shape`` per example,
    measured in eval mode without gradients; the model's mode is restored. Raises ValueError
    if the client part's parameters are not a prefix of the flat vector."""
    name, _, _ = _stages(model)
    cut = resolve_cut(name, cut)
    was = model.training
    model.eval()
    try:
        client, server = split_model(model, cut)
        with torch.no_grad():
            x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
            activation = tuple(int(s) for s in client(x).shape[1:])
        share = forward_flops(client, input_shape) / forward_flops(model, input_shape)
    finally:
        model.train(was)
    layout = ParamLayout.of(model)
    return CutInfo(
        cut=cut,
        client_entries=_client_entries(model, layout, client, server),
        model_entries=layout.size,
        activation_shape=activation,
        activation_bytes=4 * int(np.prod(activation)),
        client_flops_fraction=share,
    )


def _client_entries(model: nn.Module, layout: ParamLayout, client: nn.Module, server: nn.Module) -> int:
    """How many leading entries of ``layout``'s vector are the client part's tensors; every
    tensor must be in exactly one part, and the client's all before the server's."""
    tensors = model.state_dict(keep_vars=True)
    ours = {id(t) for t in client.state_dict(keep_vars=True).values()}
    theirs = {id(t) for t in server.state_dict(keep_vars=True).values()}
    entries, in_prefix = 0, True
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        mine, other = id(tensors[name]) in ours, id(tensors[name]) in theirs
        if mine == other:
            raise ValueError(f"{name} is in {'both parts' if mine else 'neither part'} of the cut model")
        if mine and not in_prefix:
            raise ValueError(f"the client part's {name} follows server tensors: not a prefix of the vector")
        in_prefix = mine
        entries += int(np.prod(shape)) if mine else 0
    return entries


def aux_model(
    activation_shape: tuple[int, ...], num_classes: int, hidden: int = 128, *, seed: int
) -> nn.Module:
    """The auxiliary head CSE-FSL and FSL-SAGE train on the client's activations, returning
    logits, initialised from ``seed`` alone (torch's global stream forked: building it draws
    nothing the caller would see), so every executor builds the same one.

    Flat activations ``(d,)``: Linear(d, hidden), ReLU, Linear(hidden, classes); ``hidden=0``
    gives one Linear(d, classes). Images ``(C, H, W)``: FSL-SAGE's ResNet auxiliary model, one
    ResNet layer3-like stage (two basic blocks, C -> 2C at stride 2, GroupNorm as in
    ``resnet18``), average pooling and a linear layer; ``hidden`` is unused there.
    """
    if hidden < 0:
        raise ValueError(f"the auxiliary model's hidden width must be >= 0 (got {hidden})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if len(activation_shape) == 1:
            (d,) = activation_shape
            if hidden == 0:
                return nn.Linear(d, num_classes)
            return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        if len(activation_shape) == 3:
            c = activation_shape[0]
            return nn.Sequential(
                _BasicBlock(c, 2 * c, 2),
                _BasicBlock(2 * c, 2 * c, 1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(2 * c, num_classes),
            )
    raise ValueError(f"an auxiliary model takes (d,) or (C, H, W) activations (got {activation_shape})")

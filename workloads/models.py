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
- ``char_lstm``: LEAF's / the FedAvg paper's Shakespeare model: embedding 8, two LSTM layers
  of 256 units, a dense layer over the vocabulary applied to the last step's output.

Dropout draws from torch's global generator; the executor seeds it per job, so results stay
independent of which executor ran which job.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_MODELS = ("mnist_cnn", "cifar_cnn", "resnet18")


def image_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One of ``IMAGE_MODELS`` for (channels, height, width) inputs."""
    channels, height, width = input_shape
    if name == "mnist_cnn":
        return MnistCNN(channels, height, width, num_classes)
    if name == "cifar_cnn":
        return CifarCNN(channels, height, width, num_classes)
    if name == "resnet18":
        return ResNet18(channels, num_classes)
    raise ValueError(f"unknown image model {name!r}; choose one of {', '.join(IMAGE_MODELS)}")


class MnistCNN(nn.Module):
    def __init__(self, channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        # Two valid 5x5 convolutions, each followed by a 2x2 pool: 28 -> 24 -> 12 -> 8 -> 4,
        # so 64 * 4 * 4 = 1024 features on MNIST (GWPF's fc 1024-512).
        h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(64 * h * w, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(nn.functional.max_pool2d(self.conv1(x), 2))
        x = torch.relu(nn.functional.max_pool2d(self.conv2(x), 2))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class CifarCNN(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(channels, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            # Two valid 3x3 convolutions and a 2x2 pool: 32 -> 30 -> 28 -> 14.
            nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)


# GroupNorm groups in ResNet-18 (Hsieh et al. 2020 use 2).
_GROUPS = 2


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
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
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        # A 3x3 stride-1 stem and no max-pool: the ImageNet stem (7x7 stride 2 + pool) would
        # shrink a 32x32 image to 8x8 before the first block.
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1, bias=False), nn.GroupNorm(_GROUPS, 64), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
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

"""Data sets read from disk: tiny files in the real formats, loaded through torchvision's own
readers (IDX for the MNIST family, CIFAR's pickles) and LEAF's JSON; the missing-data message;
per-batch augmentation."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError, load_config
from workloads.base import DataError
from workloads.femnist import Femnist, FemnistParams
from workloads.vision import (
    Cifar10,
    Cifar100,
    CifarParams,
    Emnist,
    EmnistParams,
    FashionMnist,
    Mnist,
    VisionParams,
)

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

N_TRAIN, N_TEST = 7, 3


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny tensors: on a shared CPU, torch's thread pool costs far more than the math.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(path: Path, a: np.ndarray) -> None:
    """An IDX file (LeCun's format: 0, 0, type 0x08 = uint8, ndim; big-endian dims; data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


def mnist_like(folder: Path, names: dict[str, str], classes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write train/test IDX files named by ``names`` (split -> file prefix); return the arrays."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, classes, n).astype(np.uint8)
        write_idx(folder / f"{names[split]}-images-idx3-ubyte", x)
        write_idx(folder / f"{names[split]}-labels-idx1-ubyte", y)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize(("cls", "folder"), [(Mnist, "MNIST"), (FashionMnist, "FashionMNIST")])
def test_mnist_family_reads_idx_files(cls: type[Mnist], folder: str, tmp_path: Path) -> None:
    raw = mnist_like(tmp_path / folder / "raw", {"train": "train", "test": "t10k"}, 10)
    ds = cls(VisionParams(root=str(tmp_path))).load(3, seed=0)
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10 and ds.natural_partition is None
    assert np.array_equal(ds.x_train[:, 0], raw["train"][0]) and np.array_equal(
        ds.x_test[:, 0], raw["test"][0]
    )
    assert np.array_equal(ds.y_train, raw["train"][1]) and np.array_equal(ds.y_test, raw["test"][1])


def test_emnist_reads_its_split_and_turns_images_upright(tmp_path: Path) -> None:
    names = {"train": "emnist-byclass-train", "test": "emnist-byclass-test"}
    raw = mnist_like(tmp_path / "EMNIST" / "raw", names, 62)
    ds = Emnist(EmnistParams(root=str(tmp_path), split="byclass")).load(2, seed=0)
    assert ds.num_classes == 62 and ds.x_train.shape == (N_TRAIN, 1, 28, 28)
    # The files store images transposed; the loader transposes them back.
    assert np.array_equal(ds.x_train[:, 0], raw["train"][0].transpose(0, 2, 1))
    assert np.array_equal(ds.y_test, raw["test"][1])
    with pytest.raises(DataError, match="emnist-balanced-train-images-idx3-ubyte is missing"):
        Emnist(EmnistParams(root=str(tmp_path))).check()  # balanced is another split's files


def write_cifar(root: Path, folder: str, files: dict[str, int], label_key: str, classes: int) -> dict:
    """CIFAR's python pickles: {'data': (n, 3072) uint8 rows (R, G, B planes), labels}."""
    rng = np.random.default_rng(1)
    (root / folder).mkdir(parents=True)
    out = {}
    for name, n in files.items():
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(),
        }
        (root / folder / name).write_bytes(pickle.dumps(entry))
        out[name] = entry
    return out


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision checks every CIFAR file against the md5 of the real 170 MB data set, which
    # tiny files cannot match; keep the existence part of the check.
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


def test_cifar10_reads_the_python_pickles(tmp_path: Path, no_md5: None) -> None:
    files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    raw = write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", 10)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(
        pickle.dumps({"label_names": list("abcdefghij")})
    )
    ds = Cifar10(CifarParams(root=str(tmp_path))).load(2, seed=0)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_train.dtype == np.uint8 and ds.num_classes == 10
    train = np.concatenate([raw[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    assert np.array_equal(ds.x_train, train.reshape(-1, 3, 32, 32))  # channels first, rows intact
    assert ds.x_train.flags.c_contiguous
    assert ds.y_train.tolist() == [label for i in range(1, 6) for label in raw[f"data_batch_{i}"]["labels"]]
    assert np.array_equal(ds.x_test, raw["test_batch"]["data"].reshape(-1, 3, 32, 32))


def test_cifar100_uses_fine_labels(tmp_path: Path, no_md5: None) -> None:
    raw = write_cifar(tmp_path, "cifar-100-python", {"train": 4, "test": 2}, "fine_labels", 100)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": ["x"] * 100}))
    ds = Cifar100(CifarParams(root=str(tmp_path))).load(1, seed=0)
    assert ds.num_classes == 100 and ds.y_train.tolist() == raw["train"]["fine_labels"]
    assert np.array_equal(ds.x_test, raw["test"]["data"].reshape(-1, 3, 32, 32))


def test_corrupted_cifar_is_a_data_error(tmp_path: Path) -> None:
    # Without the md5 patch, torchvision rejects the tiny files as it would a cut-short download.
    write_cifar(tmp_path, "cifar-100-python", {"train": 2, "test": 1, "meta": 0}, "fine_labels", 100)
    with pytest.raises(DataError, match=r"not found or corrupted.*delete the folder and fetch it again"):
        Cifar100(CifarParams(root=str(tmp_path))).load(1, seed=0)


def test_expected_files_match_torchvision() -> None:
    tv = torchvision.datasets
    mnist = [os.path.splitext(os.path.basename(url))[0] for url, _ in tv.MNIST.resources]
    assert sorted(Mnist().files()) == sorted(mnist)
    cifar = [f for f, _ in tv.CIFAR10.train_list + tv.CIFAR10.test_list]
    assert sorted(Cifar10().files()) == sorted([*cifar, tv.CIFAR10.meta["filename"]])
    assert Cifar100().folder().name == tv.CIFAR100.base_folder and "meta" in Cifar100().files()


# --- missing data: one line, before Ray ---------------------------------------------------------


def test_missing_data_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        Cifar10(CifarParams(root=str(tmp_path))).check()
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "workload.download=true" in msg and "cifar-10-python.tar.gz" in msg
    # Through the config: a ConfigError (exit status 2 on the CLI), the same line.
    with pytest.raises(ConfigError) as c:
        load_config(None, ["workload.name=mnist", f"workload.root={tmp_path}"])
    assert f"{tmp_path}/MNIST/raw/train-images-idx3-ubyte is missing" in str(c.value)
    # download=true moves the fetch to the run: validation has nothing to check.
    load_config(None, ["workload.name=mnist", f"workload.root={tmp_path}", "workload.download=true"])


def test_root_is_expanded_and_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert VisionParams(root="data").root == str(tmp_path / "data")
    assert VisionParams(root="~/x").root == str(Path.home() / "x")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (lambda: VisionParams(model="vgg"), "model must be one of mnist_cnn, cifar_cnn, resnet18"),
        (lambda: VisionParams(root=""), "root must name the data folder"),
        (lambda: EmnistParams(split="letters"), "split must be one of balanced"),
        (lambda: FemnistParams(model="lstm"), "model must be one of"),
    ],
)
def test_params_validation(params, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params()


# --- FEMNIST from LEAF's JSON ----------------------------------------------------------------------


def write_leaf(root: Path, split: str, users: dict[str, tuple[np.ndarray, np.ndarray]], name: str) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    blob = {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        # LEAF writes pixel / 255 as floats, images flattened row by row.
        "user_data": {
            u: {"x": (x.reshape(len(x), -1) / 255).tolist(), "y": y.tolist()} for u, (x, y) in users.items()
        },
    }
    (root / split / name).write_text(json.dumps(blob))


def leaf_users(prefix: str, sizes: list[int], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}{i}": (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 62, n))
        for i, n in enumerate(sizes)
    }


def test_femnist_one_client_per_writer(tmp_path: Path) -> None:
    train_a, train_b = leaf_users("f0_", [3, 5], seed=0), leaf_users("f1_", [4], seed=1)
    write_leaf(tmp_path, "train", train_a, "all_data_0_train.json")
    write_leaf(tmp_path, "train", train_b, "all_data_1_train.json")
    test = leaf_users("f0_", [2, 1], seed=2) | leaf_users("f1_", [2], seed=3)
    write_leaf(tmp_path, "test", test, "all_data_0_test.json")
    w = Femnist(FemnistParams(root=str(tmp_path)))
    ds = w.load(3, seed=0)
    assert w.default_partition == "natural" and ds.num_classes == 62
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.uint8
    parts = ds.natural_partition
    assert parts is not None and [len(p) for p in parts] == [3, 5, 4]
    writers = [*train_a.values(), *train_b.values()]  # sorted files, then file order
    for p, (x, y) in zip(parts, writers, strict=True):
        assert np.array_equal(ds.x_train[p, 0], x) and np.array_equal(ds.y_train[p], y)  # exact
    assert len(ds.y_test) == 5
    # Fewer clients: the first writers, and only their test samples.
    two = w.load(2, seed=0)
    assert len(two.y_train) == 8 and np.array_equal(
        two.y_test, np.concatenate([y for _, y in test.values()][:2])
    )
    with pytest.raises(
        DataError, match=r"hold 3 writers but clients\.num is 4; set clients\.num to at most 3"
    ):
        w.load(4, seed=0)


def test_femnist_user_split_tests_on_all_held_out_writers(tmp_path: Path) -> None:
    write_leaf(tmp_path, "train", leaf_users("a", [3, 3], seed=0), "train.json")
    held_out = leaf_users("b", [2, 4], seed=1)
    write_leaf(tmp_path, "test", held_out, "test.json")
    ds = Femnist(FemnistParams(root=str(tmp_path))).load(2, seed=0)
    assert np.array_equal(ds.y_test, np.concatenate([y for _, y in held_out.values()]))


def test_femnist_missing_or_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no train/\*.json under workload.root=.*preprocess.sh"):
        load_config(None, ["workload.name=femnist", f"workload.root={tmp_path}"])
    write_leaf(tmp_path, "train", leaf_users("a", [2], seed=0), "train.json")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "bad.json").write_text("{")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        Femnist(FemnistParams(root=str(tmp_path))).load(1, seed=0)


# --- augmentation --------------------------------------------------------------------------------


def crops_of(padded: np.ndarray, size: int) -> list[np.ndarray]:
    """Every size x size window of one padded image (C, H, W), and its mirror."""
    span = padded.shape[1] - size + 1
    wins = [padded[:, r : r + size, c : c + size] for r in range(span) for c in range(span)]
    return wins + [w[:, :, ::-1] for w in wins]


def test_augment_is_a_random_crop_and_flip_drawn_from_the_generator() -> None:
    w = Cifar10(CifarParams(augment=True))
    x = w.to_tensor(np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8))
    a = w.augment(x, torch.Generator().manual_seed(5))
    b = w.augment(x, torch.Generator().manual_seed(5))
    c = w.augment(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    black = torch.tensor([-m / s for m, s in zip(w.mean, w.std, strict=True)]).view(3, 1, 1)
    for i in range(3):  # each output is a window of the image padded by 4 black pixels, maybe mirrored
        padded = black.expand(3, 40, 40).clone()
        padded[:, 4:36, 4:36] = x[i]
        assert any(np.array_equal(a[i].numpy(), crop) for crop in crops_of(padded.numpy(), 32)), i
    # Off by config, and digits are never mirrored.
    assert Cifar10(CifarParams(augment=False)).augment(x, torch.Generator()) is x
    assert not Mnist.flip and Mnist.pad == 2


def test_to_tensor_standardises_per_channel() -> None:
    w = Cifar10()
    x = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    x[:, 1] = 255
    t = w.to_tensor(x)
    assert t.dtype == torch.float32
    assert torch.allclose(
        t[0, :, 0, 0], torch.tensor([-0.4914 / 0.2470, (1 - 0.4822) / 0.2435, -0.4465 / 0.2616])
    )


def test_local_sgd_applies_the_augmentation_deterministically() -> None:
    from algorithms.base import Task
    from engine.worker.training import ClientData, local_sgd

    w = Cifar10(CifarParams(augment=True))
    rng = np.random.default_rng(0)
    x = w.to_tensor(rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8))
    y = torch.from_numpy(rng.integers(0, 10, 20))
    task = Task(steps=3, batch_size=8, lr=0.05)

    def train(augment: bool) -> torch.Tensor:
        torch.manual_seed(0)  # the same initial model
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
        data = ClientData(x, y, w.loss, augment=w.augment if augment else None)
        local_sgd(model, data, task, torch.Generator().manual_seed(7))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first, again, plain = train(True), train(True), train(False)
    assert torch.equal(first, again) and not torch.equal(first, plain)

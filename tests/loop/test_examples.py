"""The examples/ plug-ins and the Python API, in-process: a workload from a folder of
images, FedNova in one file, client speeds from a device trace, the notebook example, and
the one-line errors of plug-ins that do not resolve or do not follow the contract."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedray
from engine.config import ConfigError
from engine.core.delays import DelayModel
from engine.core.rng import stream
from tests.conftest import TINY, tiny

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOCAL = (*TINY, "executors.backend=local")


def test_fednova_with_one_local_step_is_fedavg() -> None:
    """tau_i = 1 for everyone: the normalised step is FedAvg's sample-weighted average."""
    common = (*LOCAL, "training.local_steps=1", "algorithm.clients_per_round=4", "stop.max_versions=5")
    nova = fedray.run(
        None, progress=False, write=False, **_dotted(*common, f"algorithm.name={EXAMPLES}/fednova.py:FedNova")
    )
    avg = fedray.run(None, progress=False, write=False, **_dotted(*common, "algorithm.name=fedavg"))
    assert nova.events[["client", "job", "version_start"]].equals(
        avg.events[["client", "job", "version_start"]]
    )
    np.testing.assert_allclose(nova.params, avg.params, atol=1e-6, rtol=0)


def test_fednova_learns_with_uneven_local_steps() -> None:
    cfg = tiny(*LOCAL, f"algorithm.name={EXAMPLES}/fednova.py:FedNova", "algorithm.clients_per_round=6")
    result = fedray.run(cfg, progress=False, write=False)
    assert result.events.local_steps.nunique() > 1  # tau_i drawn per client
    assert result.metrics.loss.iloc[-1] < result.metrics.loss.iloc[0]


def _dotted(*pairs: str) -> dict[str, object]:
    import yaml

    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def _images(root: Path) -> None:
    """Three classes told apart by brightness, 24 training and 6 test images each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 6)):
        for label, level in enumerate((40, 128, 215)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 20, (12, 12)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")


def test_a_workload_from_a_folder_of_images(tmp_path: Path) -> None:
    _images(tmp_path / "images")
    result = fedray.run(
        tiny(
            *LOCAL,
            f"workload.name={EXAMPLES}/image_folder.py:ImageFolderWorkload",
            f"workload.root={tmp_path / 'images'}",
            "workload.side=8",
            "clients.num=6",
            "algorithm.concurrency=6",
            "training.lr=0.5",
            "stop.max_versions=12",
        ),
        progress=False,
        write=False,
    )
    assert result.model[-1].out_features == 3  # the class folders
    assert result.summary["final_accuracy"] > 0.6  # brightness is easy: well above chance (1/3)
    with pytest.raises(ConfigError, match="has no train/ folder"):
        tiny(
            *LOCAL,
            f"workload.name={EXAMPLES}/image_folder.py:ImageFolderWorkload",
            f"workload.root={tmp_path}",
        )


def test_client_speeds_from_a_device_trace() -> None:
    cfg = tiny(*LOCAL, f"clients.speed.family={EXAMPLES}/device_speeds.py:device_speeds")
    delays = DelayModel(cfg.clients, cfg.seed)
    trace = pd.read_csv(EXAMPLES / "devices.csv")
    share = trace.share.to_numpy() / trace.share.sum()
    devices = [int(stream(cfg.seed, "speed", i).choice(len(trace), p=share)) for i in range(cfg.clients.num)]
    throughput = trace.samples_per_second.to_numpy(dtype=float)[devices]
    expected = np.median(throughput) / throughput * cfg.clients.speed.seconds_per_sample
    np.testing.assert_allclose(delays.seconds_per_sample, expected, rtol=1e-12)
    assert fedray.run(cfg, progress=False, write=False).summary["versions"] == 12


def test_the_notebook_example_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["notebook.py"])
    runpy.run_path(str(EXAMPLES / "notebook.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "final accuracy" in out and "error: unknown key 'trainng' (did you mean 'training'?)" in out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_pkg.mod:Thing", "cannot import 'no_such_pkg.mod'"),
        ("numpy:NoSuchThing", "'numpy' has no 'NoSuchThing'"),
        ("./missing.py:Thing", "plug-in file './missing.py' not found"),
        ("numpy:ndarray", "is not a subclass of algorithms.base.Algorithm"),
        ("fedbuf", "unknown algorithm 'fedbuf' (did you mean 'fedbuff'?)"),
    ],
)
def test_a_plug_in_that_does_not_resolve_is_one_line(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        tiny(f"algorithm.name={name}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_entry_point_plug_in_is_found_and_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package installed with an entry point in group fedray.algorithms (here: a
    dist-info folder on sys.path, as pip would leave it)."""
    (tmp_path / "nova_pkg.py").write_text((EXAMPLES / "fednova.py").read_text())
    info = tmp_path / "nova_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nova-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fedray.algorithms]\nnova = nova_pkg:FedNova\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny(*LOCAL, "algorithm.name=nova")
    assert (
        cfg.algorithm.name == "nova"
        and fedray.run(cfg, progress=False, write=False).summary["versions"] == 12
    )
    from engine.run import list_components

    assert "  nova " in list_components()

"""A study file's grid: algorithm entries that also set other config sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from algorithms import ALGORITHMS
from engine.config import ConfigError
from engine.config.study import SECTIONS, load_study


def test_no_algorithm_has_a_parameter_named_like_a_config_section() -> None:
    for name, cls in ALGORITHMS.builtins.items():
        clash = {f.name for f in dataclasses.fields(cls.Params)} & SECTIONS
        assert not clash, f"{name}'s parameters {clash} would be read as config sections in a study"


def test_an_algorithm_entry_may_set_other_sections(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "study:\n"
        "  algorithms:\n"
        "    plain: {name: fedavg}\n"
        "    autoclip: {name: fedavg, clients_per_round: 4, training: {clip: {mode: autoclip}}}\n"
        "training: {lr: 0.2}\n"
    )
    _, cells, _ = load_study(str(f), [f"out_dir={tmp_path / 'out'}"])
    by = {c.algorithm: c.cfg for c in cells}
    assert by["plain"].training.clip.mode == "none" and by["plain"].training.lr == 0.2
    assert by["autoclip"].training.clip.mode == "autoclip" and by["autoclip"].training.lr == 0.2
    assert by["autoclip"].algorithm.params.clients_per_round == 4
    f.write_text("study:\n  algorithms:\n    bad: {name: fedavg, training: 3}\n")
    with pytest.raises(ConfigError, match="'training' is a config section"):
        load_study(str(f), [f"out_dir={tmp_path / 'out2'}"])


STUDIES = sorted((Path(__file__).parents[2] / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_studies_build_every_cell(path: Path, tmp_path: Path) -> None:
    """Each shipped study validates every experiment of its grid (no Ray, nothing run)."""
    spec, cells, _ = load_study(str(path), [f"out_dir={tmp_path / 'out'}"])
    assert len(cells) == len(spec.algorithms) * len(spec.profiles) * len(spec.seeds) > 0

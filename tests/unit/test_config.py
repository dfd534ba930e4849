"""Configuration: YAML + dotted overrides, validation messages, the CLI's bad-input path."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.config import ConfigError, build_config, load_config, to_dict
from engine.run import main
from workloads import WORKLOADS

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides))
    return str(e.value)


def test_defaults_are_the_default_experiment() -> None:
    cfg = load_config()
    assert (cfg.algorithm.name, cfg.workload.name, cfg.clients.num) == ("fedbuff", "synthetic", 50)
    assert cfg.clients.speed.family == "lognormal"
    assert cfg.partition.name == "natural"  # the workload's own default partition


def test_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("seed: 3\nalgorithm: {name: fedavg, clients_per_round: 5}\nclients: {num: 20}\n")
    cfg = load_config(f, ["clients.num=30", "clients.speed.tier_factors=[1, 100]", "stop.max_sim_time=1e3"])
    assert cfg.seed == 3 and cfg.clients.num == 30
    assert cfg.algorithm.params.clients_per_round == 5
    assert cfg.clients.speed.tier_factors == (1.0, 100.0)
    assert cfg.stop.max_sim_time == 1000.0  # "1e3" is a string in YAML 1.1; still a float here


def test_resolved_config_round_trips() -> None:
    cfg = load_config(None, ["algorithm.name=fedasync", "algorithm.alpha=0.3", "workload.name=shapes"])
    assert build_config(to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path: Path) -> None:
    # Configs of downloadable data sets validate without the data: download=true defers the
    # presence check to the run, which would fetch it.
    name = (yaml.safe_load(path.read_text()).get("workload") or {}).get("name", "synthetic")
    downloadable = "download" in {f.name for f in dataclasses.fields(WORKLOADS[name].Params)}
    load_config(path, ["workload.download=true"] if downloadable else [])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["clients.nmu=5"], "unknown key 'clients.nmu' (did you mean 'num'?); see --list for valid keys"),
        (["algorithm.name=fedbuf"], "unknown algorithm 'fedbuf' (did you mean 'fedbuff'?); see --list"),
        (["workload.name=mnist2"], "unknown workload 'mnist2'"),
        (["algorithm.bufer_size=3"], "unknown key 'algorithm.bufer_size' (did you mean 'buffer_size'?)"),
        (["clients.num=abc"], "clients.num must be int (got 'abc', a str)"),
        (["clients.num=0"], "clients.num must be an integer >= 1 (got 0)"),
        (["algorithm.buffer_size=0"], "algorithm.buffer_size must be >= 1 (got 0)"),
        (["algorithm.concurrency=60"], "algorithm.concurrency (60) exceeds clients.num (50)"),
        (["clients.speed.family=zipfian"], "clients.speed.family must be one of"),
        (["stop.max_versions=0"], "set at least one limit so the run ends"),
        (["clock.mode=fast"], "clock.mode must be 'virtual' or 'wall'"),
        (["partition.name=natural", "workload.name=shapes"], "partition.name 'natural' needs"),
        (["seed"], "override 'seed' must look like key=value"),
        (["clients=3"], "clients is a section; set its keys"),
        (["training.batch_sizes=[16,-8]"], "training.batch_sizes must all be >= 0, 0 meaning full batch"),
        (["training.batch_sizes=16"], "training.batch_sizes must be a list"),
    ],
)
def test_errors_name_the_key_and_the_fix(overrides: list[str], message: str) -> None:
    assert message in error_of(*overrides)


def test_missing_trace_file_fails_before_ray(tmp_path: Path) -> None:
    msg = error_of(f"clients.trace={tmp_path / 'none.csv'}")
    assert "none.csv" in msg and "\n" not in msg


def test_missing_config_file() -> None:
    assert "not found" in error_of_file("does/not/exist.yaml")


def error_of_file(path: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value)


def test_non_empty_out_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert "exists and is not empty" in error_of(f"out_dir={tmp_path}")


def test_cli_bad_input_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["clients.nmu=5", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedray: error: unknown key 'clients.nmu'") and err.count("\n") == 1
    assert not out.exists()


def test_cli_list_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in (
        "fedavg",
        "fedprox",
        "fedasync",
        "fedbuff",
        "synthetic",
        "shapes",
        "dirichlet_per_class",
        "lognormal",
        "pareto",
        "tiers",
        "buffer_size=",
    ):
        assert name in listed, name
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    helptext = capsys.readouterr().out
    assert "stop.max_versions" in helptext and "executors.num" in helptext and "examples:" in helptext


def test_checkpoints_go_with_evaluations_and_need_virtual_time() -> None:
    with pytest.raises(ConfigError, match=r"multiple of eval\.every"):
        load_config(None, ["eval.every=4", "checkpoint.every=6"])
    with pytest.raises(ConfigError, match=r"clock\.mode=virtual"):
        load_config(None, ["eval.every=2", "checkpoint.every=4", "clock.mode=wall"])
    assert load_config(None, ["eval.every=2", "checkpoint.every=4"]).checkpoint.every == 4


def test_a_foreign_or_mismatched_checkpoint_is_refused() -> None:
    from engine import __version__
    from engine.config import to_dict
    from engine.core import checkpoint, serial
    from engine.core.server_queue import ServerQueue

    cfg = load_config(None, [])
    with pytest.raises(ValueError, match="not a fedray checkpoint"):
        checkpoint.load(b"not a checkpoint", cfg)
    with pytest.raises(ValueError, match="not a fedray checkpoint"):
        checkpoint.load(pickle.dumps({"a": 1}), cfg)  # a pickle is never unpickled
    fields = dict(
        format=checkpoint.FORMAT,
        fedray_version=__version__,
        config=to_dict(cfg),
        algorithm="fedavg",
        workload="synthetic",
        clients=50,
        state=None,
        now=0.0,
        next_seq=0,
        dispatch_calls=0,
        job_counter=None,
        client_states={},
        in_flight=(),
        params={},
        pending_evals=(),
        target_models={},
        recorder=None,
        server=ServerQueue(),
        server_work=(),
        server_seq=0,
        clip_history=np.zeros(0),
    )
    ckpt = checkpoint.Checkpoint(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resume under the same three"):
        checkpoint.load(serial.dumps(ckpt), cfg)
    old = checkpoint.Checkpoint(**{**fields, "fedray_version": "0.0.1"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"from fedray 0\.0\.1, this is"):
        checkpoint.load(serial.dumps(old), cfg)
    same = checkpoint.Checkpoint(**{**fields, "algorithm": "fedbuff"})  # type: ignore[arg-type]
    assert checkpoint.load(serial.dumps(same), cfg).algorithm == "fedbuff"
    other = load_config(None, ["training.lr=0.5"])
    with pytest.raises(ValueError, match=r"another configuration \(training differ\)"):
        checkpoint.load(serial.dumps(same), other, same_config=True)


def test_local_training_an_algorithm_cannot_honour_is_refused_at_config_time() -> None:
    assert "training.momentum=0" in error_of("algorithm.name=scaffold", "training.momentum=0.9")
    assert "training.clip.mode=none" in error_of("algorithm.name=scaffold", "training.clip.mode=autoclip")
    stacked = error_of("algorithm.name=fedavg", "training.clip.mode=autoclip", "executors.stack=4")
    assert "training.clip.scope=job" in stacked
    coded = error_of("algorithm.name=fedavg", "training.clip.mode=autoclip", "algorithm.codec.name=topk")
    assert "training.clip.scope=job" in coded and "topk" in coded
    shared = ("training.clip.mode=autoclip", "training.clip.scope=global")
    assert "training.clip.scope=job or executors.stack=1" in error_of(*shared, "executors.stack=2")
    # what each refusal suggests is accepted
    load_config(
        None,
        [
            "algorithm.name=fedavg",
            "training.clip.mode=autoclip",
            "executors.stack=4",
            "training.clip.scope=job",
            "algorithm.codec.name=topk",
        ],
    )


def test_an_algorithm_that_trains_through_the_default_update_takes_every_training_option() -> None:
    cfg = load_config(None, ["algorithm.name=cmfl", "training.clip.mode=autoclip", "training.momentum=0.9"])
    assert cfg.training.clip.enabled and cfg.training.momentum == 0.9


# ---- differential privacy (algorithm.privacy, stop.max_epsilon) -------------------------------

CENTRAL_DP = ("algorithm.name=fedavg", "algorithm.weighting=uniform", "algorithm.privacy.mode=central")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stop.max_epsilon=3"], "stop.max_epsilon needs algorithm.privacy.mode=central or local"),
        (["stop.max_epsilon=-1"], "stop.max_epsilon must be >= 0 and finite, 0 for no budget"),
        (["algorithm.privacy.mode=shuffle"], "algorithm.privacy.mode must be one of none, central, local"),
        (["algorithm.name=fedasync", "algorithm.privacy.mode=local"], "unknown key 'algorithm.privacy'"),
        (
            ["algorithm.name=fedavg", "algorithm.privacy.mode=central"],
            "algorithm.privacy.mode=central sums clipped deltas with equal weights",
        ),
        (
            [*CENTRAL_DP, "algorithm.aggregator.name=median"],
            "algorithm.privacy.mode=central bounds what one client adds to a noised sum; aggregator median",
        ),
        (
            [*CENTRAL_DP, "clients.byzantine.fraction=0.2", "clients.byzantine.attack=alie"],
            "clients.byzantine.attack=alie builds colluders' updates from the honest ones",
        ),
        (
            ["algorithm.name=cmfl", "algorithm.privacy.mode=local"],
            "algorithm.privacy.mode=local covers the noised upload of the default client update; cmfl",
        ),
        (
            [*CENTRAL_DP, "algorithm.privacy.accountant=pld"],
            "algorithm.privacy.accountant=pld: dp-accounting's PLD accountant has no event",
        ),
    ],
)
def test_privacy_that_cannot_be_accounted_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    msg = error_of(*overrides)
    assert message in msg and "\n" not in msg


def test_privacy_that_can_be_accounted_is_accepted() -> None:
    # local DP with any aggregator (post-processing), central DP with byzantine clients that
    # attack alone, PLD where no round samples (every client, every round), a budget
    load_config(
        None,
        [
            "algorithm.name=fedavg",
            "algorithm.privacy.mode=local",
            "algorithm.aggregator.name=krum",
            "algorithm.aggregator.byzantine=1",
            "stop.max_epsilon=8",
        ],
    )
    load_config(None, [*CENTRAL_DP, "clients.byzantine.fraction=0.2", "clients.byzantine.attack=sign_flip"])
    load_config(None, [*CENTRAL_DP, "clients.num=10", "algorithm.privacy.accountant=pld"])
    cfg = load_config(None, ["algorithm.privacy.mode=central", "stop.max_versions=0", "stop.max_epsilon=2"])
    assert cfg.algorithm.name == "fedbuff" and cfg.stop.max_epsilon == 2.0


def test_cli_refuses_unaccountable_privacy_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["algorithm.name=fedavg", "algorithm.privacy.mode=central", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedray: error: algorithm.privacy.mode=central") and err.count("\n") == 1
    assert not out.exists()
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "privacy.mode='none'" in listed and "privacy.noise_multiplier=1.0" in listed


def test_heterofl_needs_hidden_layers_and_speed_tiers_at_config_time() -> None:
    assert "workload.hidden=[64,64]" in error_of("algorithm.name=heterofl", "algorithm.rate_mode=random")
    lstm = error_of("algorithm.name=heterofl", "workload.name=shakespeare", "algorithm.rate_mode=random")
    assert "shakespeare" in lstm
    tiers = error_of("algorithm.name=heterofl", "workload.hidden=[8]", "clients.speed.family=lognormal")
    assert "clients.speed.family=tiers" in tiers
    load_config(None, ["algorithm.name=heterofl", "workload.hidden=[8]", "algorithm.rate_mode=random"])

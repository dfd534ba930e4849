"""cluster.yaml and cluster-local.yaml pass the checks `ray up` makes before it touches a
cloud (Ray's config preparation and schema validation: no network, no credentials), and
keep fedray's security choices: token auth on, the dashboard never public."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config first (commands._bootstrap_config, then after the
    provider's bootstrap, which is the only step that calls the cloud, validate_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_configs_pass_ray_up_checks(name: str) -> None:
    config = yaml.safe_load((ROOT / name).read_text())
    prepared = ray_up_checks(config)
    head = prepared["head_node_type"]
    assert head in prepared["available_node_types"]
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    started = [c for c in starts if "ray start" in c]
    assert started and all("RAY_AUTH_MODE=token" in c for c in started)
    assert any("RAY_AUTH_MODE=token" in c for c in prepared["setup_commands"])  # drivers, too
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "~/.ray/auth_token" in prepared["file_mounts"]
    assert any("pip install" in c and "-e ." in c for c in prepared["setup_commands"])


def test_aws_cluster_has_cpu_head_and_gpu_workers_and_no_public_dashboard() -> None:
    config = ray_up_checks(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["node_config"]["InstanceType"].startswith("m5")
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith("g4dn") for t in workers)  # 1 NVIDIA T4 each
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # SSH only: no 8265
    assert all(r["CidrIp"] != "0.0.0.0/0" for rule in rules for r in rule["IpRanges"])


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (lambda c: c.__setitem__("setup_comands", c.pop("setup_commands")), "setup_comands"),
        (lambda c: c.__setitem__("head_node_type", "head.gpu"), "head_node_type"),
        (lambda c: c["available_node_types"]["worker.gpu"].__setitem__("min_wrkers", 1), "min_wrkers"),
    ],
)
def test_broken_copies_fail(break_it: Any, error: str) -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    break_it(config)
    with pytest.raises(Exception, match=error):
        ray_up_checks(config)

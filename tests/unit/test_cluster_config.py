"""cluster.yaml and cluster-local.yaml pass the checks `ray up` makes before it touches a
cloud (Ray's config preparation and schema validation: no network, no credentials), and
keep fedray's security choices: token auth on, the dashboard never public."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV = "~/fedray-venv/bin/"
MARK = "# fedray-cluster"


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


def local_setup() -> list[str]:
    config = ray_up_checks(yaml.safe_load((ROOT / "cluster-local.yaml").read_text()))
    return list(config["setup_commands"])


def run_in(home: Path, command: str, python3: str) -> subprocess.CompletedProcess[str]:
    """A setup command as a node would run it, with `home` as $HOME and `python3` (a path)
    as the login PATH's python3."""
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "python3"
    link.unlink(missing_ok=True)
    link.symlink_to(python3)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)


def test_local_cluster_uses_its_own_venv_never_the_login_python() -> None:
    config = ray_up_checks(yaml.safe_load((ROOT / "cluster-local.yaml").read_text()))
    setup = config["setup_commands"]
    pips = [c for c in setup if "pip install" in c]
    assert pips and all(f"{VENV}python -m pip install" in c for c in pips)
    assert any("python3 -m venv ~/fedray-venv" in c for c in setup)
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        words = command.replace(";", " ").split()
        rays = [i for i, w in enumerate(words) if w.endswith("ray") and words[i + 1] in ("start", "stop")]
        assert rays and all(words[i] == f"{VENV}ray" for i in rays), command


def test_local_setup_fails_clearly_on_old_python(tmp_path: Path) -> None:
    (check,) = [c for c in local_setup() if "version_info" in c]
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo Python 3.10.12\nexit 1\n')
    old.chmod(0o755)
    failed = run_in(tmp_path, check, str(old))
    assert failed.returncode != 0
    assert "needs python3 >= 3.11" in failed.stderr and "Python 3.10.12" in failed.stderr
    assert run_in(tmp_path, check, sys.executable).returncode == 0  # this one is >= 3.11


def test_local_setup_adds_one_removable_bashrc_line(tmp_path: Path) -> None:
    (add,) = [c for c in local_setup() if "bashrc" in c]
    bashrc = tmp_path / ".bashrc"
    bashrc.write_text("alias ll='ls -l'\n")
    for _ in range(2):  # `ray up` again adds nothing
        assert run_in(tmp_path, add, sys.executable).returncode == 0
    lines = bashrc.read_text().splitlines()
    assert lines[0] == "alias ll='ls -l'" and len(lines) == 2 and lines[1].endswith(MARK)
    shown = run_in(tmp_path, 'source ~/.bashrc; echo "$RAY_AUTH_MODE $PATH"', sys.executable)
    assert shown.stdout.split() == ["token", f"{tmp_path}/fedray-venv/bin:{tmp_path}/bin:/usr/bin:/bin"]
    # The removal that the README and the file's header give, since Ray has no teardown hook.
    removal = f"sed -i '/{MARK}$/d' ~/.bashrc"
    assert removal in (ROOT / "README.md").read_text()
    assert removal in (ROOT / "cluster-local.yaml").read_text()
    assert run_in(tmp_path, removal, sys.executable).returncode == 0
    assert bashrc.read_text() == "alias ll='ls -l'\n"

"""Whole in-process runs (executors.backend=local, no Ray) with compressed updates
(``algorithm.codec.*``): the bytes charged are the encoded sizes, the transfer times follow
them, runs are deterministic, and error-feedback residuals kept on disk give the run they
give in memory."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from algorithms.codecs import CodecConfig, encoded_bytes
from tests.loop.test_costs import DOWN, LATENCY, SPS, UP, curve, rows, run, samples, tiny

TOPK = ("algorithm.codec.name=topk", "algorithm.codec.ratio=0.01")  # error feedback: topk's default


def losses(result: dict[str, Any]) -> list[float]:
    return [m["loss"] for m in result["metrics"]]


def test_fedbuff_topk_one_percent_uploads_its_encoded_size_and_still_learns() -> None:
    cfg = tiny("algorithm.name=fedbuff", *TOPK)
    codec = cfg.algorithm.params.codec
    assert codec == CodecConfig("topk", ratio=0.01, error_feedback=True)
    result = run(cfg)
    d = result["model"].size
    # 1% of the model's entries: k = ceil(0.01 d) values, and their indices (4 bytes each)
    # cost less than a bitmap of d bits only when 4k <= d/8.
    k = -(-d // 100)
    assert encoded_bytes(codec, d) == 4 * k + min(4 * k, -(-d // 8)) < 4 * d // 40
    events, n = rows(result), samples(cfg)
    applied = [e for e in events if not e["dropped"]]
    assert len(applied) == len(events) >= 12 * 5
    assert {e["bytes_up"] for e in applied} == {encoded_bytes(codec, d)}
    assert {e["bytes_down"] for e in events} == {4 * d}  # direction up: the whole model down
    assert result["summary"]["bytes_up"] == encoded_bytes(codec, d) * len(events)
    for e in events:  # the upload takes the time of the bytes really sent
        took = (LATENCY + 4 * d / DOWN) + n[e["client"]] * SPS + (LATENCY + encoded_bytes(codec, d) / UP)
        assert abs(e["finish_time"] - e["dispatch_time"] - took) <= 1e-12
    curve_ = losses(result)
    assert result["summary"]["versions"] == 12 and curve_[-1] < 0.8 * curve_[0]
    assert all(b < a for a, b in itertools.pairwise(curve_))


def test_fedavg_qsgd_is_deterministic_and_really_quantizes() -> None:
    common = ("algorithm.name=fedavg", "algorithm.clients_per_round=4", "stop.max_versions=6")
    cfg = tiny(*common, "algorithm.codec.name=qsgd")
    first, second = run(cfg), run(cfg)
    assert first["events"] == second["events"]
    np.testing.assert_array_equal(first["model"], second["model"])
    assert curve(first) == curve(second)
    d = first["model"].size
    # 5 bits per entry plus one float32 norm per bucket of 512
    assert {e["bytes_up"] for e in rows(first)} == {-(-d * 5 // 8) + 4 * -(-d // 512)}
    plain = run(tiny(*common))
    assert not np.array_equal(plain["model"], first["model"])  # the stochastic rounding shows
    assert losses(first)[-1] < 0.8 * losses(first)[0]


def test_fedasync_fp16_both_ways_halves_the_download_and_the_upload() -> None:
    cfg = tiny("algorithm.name=fedasync", "algorithm.codec.name=fp16", "algorithm.codec.direction=both")
    result = run(cfg)
    d = result["model"].size
    events, n = rows(result), samples(cfg)
    assert {(e["bytes_up"], e["bytes_down"]) for e in events} == {(2 * d, 2 * d)}
    assert result["summary"]["bytes_up"] == 2 * d * len(events)
    assert result["summary"]["bytes_down"] == 2 * d * len(events)
    for e in events:  # both transfers take the time of half the model
        took = (LATENCY + 2 * d / DOWN) + n[e["client"]] * SPS + (LATENCY + 2 * d / UP)
        assert abs(e["finish_time"] - e["dispatch_time"] - took) <= 1e-12
    assert losses(result)[-1] < 0.95 * losses(result)[0]
    # an fp16 upload alone (direction up) trains from the exact model, so the runs differ
    up = run(tiny("algorithm.name=fedasync", "algorithm.codec.name=fp16"))
    assert {(e["bytes_up"], e["bytes_down"]) for e in rows(up)} == {(2 * d, 4 * d)}
    assert not np.array_equal(up["model"], result["model"])


def test_error_feedback_residuals_on_disk_give_the_run_they_give_in_memory(tmp_path: Path) -> None:
    common = ("algorithm.name=fedbuff", *TOPK, "stop.max_versions=8")
    folder = tmp_path / "residuals"
    memory = run(tiny(*common, "server.client_state=memory"))
    disk = run(tiny(*common, "server.client_state=disk", f"server.client_state_dir={folder}"))
    assert disk["events"] == memory["events"]
    np.testing.assert_array_equal(disk["model"], memory["model"])
    assert curve(disk) == curve(memory)
    # Each client that finished a job keeps its residual: a float32 vector of the model's size
    # holding all but the k entries it sent (the 1% of the largest it had accumulated).
    d = memory["model"].size
    finished = {e["client"] for e in rows(memory) if not e["dropped"]}
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.npy" for c in finished)
    for c in finished:
        residual = np.load(folder / f"{c}.npy", allow_pickle=False)
        assert residual.dtype == np.float32 and residual.shape == (d,)
        assert np.count_nonzero(residual) > d // 2 and np.isfinite(residual).all()

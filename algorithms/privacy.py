"""Differential privacy for FedAvg and FedBuff: the mechanisms, their ledger, their accounting.

**Mechanisms** (pure numpy). Central, user-level DP (DP-FedAvg, McMahan et al. ICLR 2018):
the server clips every client's delta to L2 norm ``C``, sums (FedBuff: times its staleness
weights, each <= 1), adds ``N(0, (z C)^2)`` to the sum once and divides by a denominator
fixed before any client's data is seen (FedAvg: the round's quorum, ``clients_per_round``;
FedBuff: ``K`` for ``buffer_reduce=mean``), so the scale never depends on who took part.
Local DP: each client clips its own delta and adds ``N(0, (z C)^2)`` before it is encoded
and uploaded, trusting no one.

**Accounting** (Google's ``dp-accounting``, imported on first use). Neighbouring datasets
differ in one client's data, replaced by other data (replace-one: the number of clients and
who trains when, which the delay model and shard sizes decide, are public). A replaced
clipped delta moves a sum by up to ``2C``, so every Gaussian release is, for the
accountant, a Gaussian of noise multiplier ``z / 2`` (the factor 2 of substitution: Lebeda
et al. 2024; the PLD accountant's own REPLACE_ONE doubles the sensitivity the same way).

* FedAvg central: each round samples ``s`` of the ``A`` idle clients uniformly without
  replacement (``s = ceil(over_selection * clients_per_round)``, fewer if fewer are idle):
  ``SampledWithoutReplacementDpEvent(A, s, Gaussian(z/2))``, RDP under REPLACE_ONE (Wang,
  Balle, Kasiviswanathan 2019; dp-accounting's PLD has no such event), composed over the
  rounds released. The worst-off client is idle at every dispatch. Keeping only the first
  ``clients_per_round`` arrivals (over-selection), deadlines and drop-outs only thin the
  sample, by the public schedule.
* Without sampling (FedBuff central: arrivals are no random sample; local mode: every
  upload is a release): a client with ``k`` updates in one release moves it by ``2kC``, a
  Gaussian of multiplier ``z / (2k)``. Gaussians compose into the Gaussian with
  ``1/z_eff^2 = sum 1/z_i^2``, so a client spends ``Gaussian(z/2)`` self-composed
  ``sum k^2`` times; the ledger keeps that sum per client and the report is its maximum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from algorithms.task import check_choice

DP_MODES = ("none", "central", "local")
ACCOUNTANTS = ("rdp", "pld")


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = "none"  # none | central (server clips and noises the sum) | local (each client)
    clip: float = 1.0  # C: the L2 norm each client's delta is clipped to
    noise_multiplier: float = 1.0  # z: the noise std is z * C
    delta: float = 1e-5  # the delta of the (epsilon, delta) reported; below 1/clients
    accountant: str = "rdp"  # rdp (Renyi DP) | pld (privacy loss distributions: tighter, slower)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, DP_MODES)
        if not 0 < self.clip < math.inf:  # written so that NaN fails too
            raise ValueError(f"clip must be > 0 and finite (got {self.clip})")
        if not 0 <= self.noise_multiplier < math.inf:
            raise ValueError(f"noise_multiplier must be >= 0 and finite (got {self.noise_multiplier})")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), typically below 1/clients (got {self.delta})")
        check_choice("accountant", self.accountant, ACCOUNTANTS)


def configured(params: object) -> PrivacyConfig | None:
    """The privacy ``params`` configure, or None when they have none or its mode is none."""
    cfg = getattr(params, "privacy", None)
    return cfg if isinstance(cfg, PrivacyConfig) and cfg.mode != "none" else None


def check_params(cfg: PrivacyConfig, aggregator: str, weighting: str = "uniform") -> None:
    """What an algorithm's own Params cannot combine with central DP (one-line ValueErrors,
    prefixed ``algorithm.`` by the config layer). Local DP combines with anything there:
    whatever the server does with noised uploads is post-processing."""
    if cfg.mode != "central":
        return
    if aggregator != "mean":
        raise ValueError(
            f"privacy.mode=central bounds what one client adds to a noised sum; aggregator {aggregator} "
            "has no such bound: set algorithm.aggregator.name=mean, or algorithm.privacy.mode=local"
        )
    if weighting != "uniform":
        raise ValueError(
            "privacy.mode=central sums clipped deltas with equal weights (a sample count would "
            "scale one client's share): set algorithm.weighting=uniform"
        )


# ---- mechanisms -------------------------------------------------------------------------


def clip_to_norm(delta: np.ndarray, c: float) -> np.ndarray:
    """``delta * min(1, c / ||delta||_2)``: shorter deltas pass unchanged, a zero one too."""
    if not c > 0:
        raise ValueError(f"clip must be > 0 (got {c})")
    d = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    return (d if norm <= c else d * (c / norm)).astype(np.float32)


def gaussian_noise(size: int | tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """I.i.d. ``N(0, std^2)`` draws of the given size, as float32 (drawn in float64)."""
    if not std >= 0:
        raise ValueError(f"std must be >= 0 (got {std})")
    return rng.normal(0.0, std, size=size).astype(np.float32)


def central_dp_aggregate(
    deltas: Sequence[np.ndarray],
    clip: float,
    noise_multiplier: float,
    expected_clients: float,
    rng: np.random.Generator,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """``(sum_i w_i clip(delta_i, C) + N(0, (z C)^2)) / expected_clients``, in float64.

    ``expected_clients`` is fixed before the round, never ``len(deltas)``: dividing by the
    realised count would make the scale itself depend on who took part. Weights (FedBuff's
    staleness discounts; 1 by default) must lie in [0, 1]: a larger one would let a client
    move the sum by more than its clipped delta, the bound the noise is scaled to.
    """
    if not expected_clients > 0:
        raise ValueError(f"expected_clients must be > 0 (got {expected_clients})")
    if not deltas:
        raise ValueError("need at least one delta to know the model's size")
    w = [1.0] * len(deltas) if weights is None else [float(x) for x in weights]
    if len(w) != len(deltas) or not all(0 <= x <= 1 for x in w):
        raise ValueError(f"weights must be one per delta, each in [0, 1] (got {w})")
    total = np.zeros(np.shape(deltas[0]), dtype=np.float64)
    for d, x in zip(deltas, w, strict=True):  # fixed accumulation order, as in aggregation.py
        total += x * clip_to_norm(d, clip).astype(np.float64)
    total += gaussian_noise(total.shape, noise_multiplier * clip, rng).astype(np.float64)
    return (total / expected_clients).astype(np.float32)


def local_dp_update(
    delta: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Local DP on the client: ``clip(delta, C) + N(0, (z C)^2)`` per coordinate."""
    clipped = clip_to_norm(delta, clip).astype(np.float64)
    noise = gaussian_noise(clipped.shape, noise_multiplier * clip, rng).astype(np.float64)
    return (clipped + noise).astype(np.float32)


def local_upload(params: object, delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The delta a client hands its encoder: noised under local DP, else ``delta`` itself.

    The noise comes from a child of the job's keyed stream (``spawn`` draws nothing from
    it), so a codec's draws from that stream stay what they are without DP."""
    cfg = configured(params)
    if cfg is None or cfg.mode != "local":
        return delta
    return local_dp_update(delta, cfg.clip, cfg.noise_multiplier, rng.spawn(1)[0])


# ---- the ledger: what the accountant needs, kept in the algorithm's state ------------------


@dataclass(frozen=True, eq=False)
class Ledger:
    """Data only (engine/core/serial.py), so a checkpoint keeps the privacy spent."""

    key: int = -1  # seeds the server's noise (central); drawn at the first dispatch, -1 before
    rounds: tuple[tuple[int, int, int], ...] = ()  # FedAvg central: (population, sample, rounds released)
    open: tuple[int, int] = (0, 0)  # FedAvg central: the open round's (population, sample)
    weights: np.ndarray | None = None  # per client: sum over its releases of k^2 (local: uploads)
    held: tuple[int, ...] = ()  # FedBuff central: the client of each buffered update


def fresh(cfg: PrivacyConfig, num_clients: int) -> Ledger:
    return Ledger() if cfg.mode == "none" else Ledger(weights=np.zeros(num_clients, dtype=np.int64))


def dispatched(
    cfg: PrivacyConfig, ledger: Ledger, rng: np.random.Generator, population: int = 0, sample: int = 0
) -> Ledger:
    """A dispatch under central DP: the noise key, drawn once from the first dispatch's stream
    after everything else drew from it; with ``sample``, the round that opens (FedAvg)."""
    if cfg.mode != "central":
        return ledger
    key = ledger.key if ledger.key >= 0 else int(rng.integers(2**62))
    return replace(ledger, key=key, open=(population, sample) if sample else ledger.open)


def round_closed(cfg: PrivacyConfig, ledger: Ledger, released: bool) -> Ledger:
    """FedAvg central: the open round closes; it counts if it released an aggregate. A round
    with no update releases nothing: who returned is public, as the schedule is."""
    if cfg.mode != "central" or ledger.open == (0, 0):
        return ledger
    rounds = ledger.rounds
    if released:
        counts = {(a, s): r for a, s, r in rounds}
        counts[ledger.open] = counts.get(ledger.open, 0) + 1
        rounds = tuple((a, s, r) for (a, s), r in sorted(counts.items()))
    return replace(ledger, rounds=rounds, open=(0, 0))


def _add(weights: np.ndarray | None, clients: Iterable[int]) -> np.ndarray:
    """``weights`` plus, for each client, the square of how often it appears in ``clients``."""
    assert weights is not None, "a privacy ledger with weights comes from fresh()"
    k = np.bincount(np.asarray(list(clients), dtype=np.int64), minlength=len(weights))
    return weights + k * k


def uploaded(cfg: PrivacyConfig, ledger: Ledger, client: int) -> Ledger:
    """Local DP: a noised upload of ``client`` reached the server (a release, whatever the
    server then does with it: aggregate, discard as stale, arrive after a cut-off)."""
    return replace(ledger, weights=_add(ledger.weights, [client])) if cfg.mode == "local" else ledger


def buffered(cfg: PrivacyConfig, ledger: Ledger, client: int) -> Ledger:
    return replace(ledger, held=(*ledger.held, client)) if cfg.mode == "central" else ledger


def flushed(cfg: PrivacyConfig, ledger: Ledger) -> Ledger:
    """FedBuff central: the buffer was released; each of its clients adds k^2."""
    if cfg.mode != "central":
        return ledger
    return replace(ledger, weights=_add(ledger.weights, ledger.held), held=())


def noised_sum(
    cfg: PrivacyConfig,
    ledger: Ledger,
    deltas: Sequence[np.ndarray],
    denominator: float,
    version: int,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """The central aggregate that becomes ``version``, its noise keyed by (run, version):
    the same on any executor count or backend, and after a resume."""
    if ledger.key < 0:
        raise ValueError("central DP draws its noise key at the first dispatch; none happened")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([ledger.key, int(version)])))
    return central_dp_aggregate(deltas, cfg.clip, cfg.noise_multiplier, denominator, rng, weights)


# ---- what has been spent, and what the next release would spend at worst ------------------


@dataclass(frozen=True)
class Spent:
    """The releases the most exposed client took part in, as the accountant composes them."""

    sampled: tuple[tuple[int, int, int], ...] = ()  # (population, sample, rounds): FedAvg central
    gaussian: int = 0  # unsampled: sum over releases of k^2, k its updates in one


@dataclass(frozen=True)
class Spending:
    """An algorithm's report (``Algorithm.privacy_spent``): spent so far, and spent after the
    next release it can make at worst. The run stops before a release would exceed
    ``stop.max_epsilon``, so no model beyond the budget is ever published."""

    now: Spent
    next: Spent


def _unsampled(weights: np.ndarray | None, arriving: Iterable[int], held: Sequence[int] = ()) -> Spending:
    """Spent by the worst client now and after one more release, which holds the ``held``
    clients' updates and one more of any one ``arriving`` client."""
    assert weights is not None, "a privacy ledger with weights comes from fresh()"
    k = np.bincount(np.asarray(held, dtype=np.int64), minlength=len(weights))
    after = int((weights + k * k).max(initial=0))
    for c in set(arriving):
        after = max(after, int(weights[c] + (k[c] + 1) ** 2))
    return Spending(Spent(gaussian=int(weights.max(initial=0))), Spent(gaussian=after))


def round_spending(cfg: PrivacyConfig, ledger: Ledger, training: Iterable[int]) -> Spending | None:
    """FedAvg: central, the rounds released (next: the open one too); local, the uploads of
    the busiest client (next: any client still ``training`` uploads once more)."""
    if cfg.mode == "none":
        return None
    if cfg.mode == "local":
        return _unsampled(ledger.weights, training)
    now = Spent(sampled=ledger.rounds)
    if ledger.open == (0, 0):
        return Spending(now, now)
    return Spending(now, Spent(sampled=round_closed(cfg, ledger, released=True).rounds))


def buffer_spending(
    cfg: PrivacyConfig, ledger: Ledger, training: Iterable[int], flush_next: bool
) -> Spending | None:
    """FedBuff: local as FedAvg's; central, the flushes (next, when the next arrival fills the
    buffer: the buffered clients' k^2 and one more update of any client ``training``)."""
    if cfg.mode == "none":
        return None
    if cfg.mode == "local":
        return _unsampled(ledger.weights, training)
    if not flush_next:  # the next arrival cannot flush: it releases nothing
        return _unsampled(ledger.weights, ())
    return _unsampled(ledger.weights, training, ledger.held)


# ---- accounting ----------------------------------------------------------------------------


def _library() -> Any:
    try:
        import dp_accounting
    except ImportError as e:  # only the accounting needs it
        raise ImportError("the accounting needs dp-accounting: pip install dp-accounting") from e
    return dp_accounting


def dp_event(noise_multiplier: float, population: int = 0, sample: int = 0, count: int = 1) -> Any:
    """dp-accounting's event for ``count`` releases: ``Gaussian(z/2)`` (replace-one moves a
    clipped sum by 2C), sampled ``sample`` of ``population`` without replacement if given."""
    dp = _library()
    event = dp.GaussianDpEvent(noise_multiplier / 2)
    if sample:
        event = dp.SampledWithoutReplacementDpEvent(population, sample, event)
    return dp.SelfComposedDpEvent(event, count)


@functools.lru_cache(maxsize=64)
def _rdp_step(noise_multiplier: float, population: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """(orders, RDP) of one release, by dp-accounting's RDP accountant (about a second for a
    sampled one, so it is computed once per kind of release and scaled by the count)."""
    dp = _library()
    acct = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    acct.compose(dp_event(noise_multiplier, population, sample))
    orders, rdp = np.array(acct.orders), np.array(acct.rdp)
    orders.flags.writeable = rdp.flags.writeable = False  # cached and shared
    return orders, rdp


@functools.lru_cache(maxsize=4096)
def epsilon(spent: Spent, noise_multiplier: float, delta: float, accountant: str = "rdp") -> float:
    """The epsilon at ``delta`` of ``spent``: dp-accounting's own figure. RDP adds each kind
    of release's RDP ``count`` times, as the library's accountant does (its figure, bit for
    bit), computed once per kind. No release spends nothing (0); ``z = 0`` is no privacy (inf)."""
    if not 0 <= noise_multiplier < math.inf:
        raise ValueError(f"noise_multiplier must be >= 0 and finite (got {noise_multiplier})")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (got {delta})")
    check_choice("accountant", accountant, ACCOUNTANTS)
    if not any(r for _, _, r in spent.sampled) and spent.gaussian == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    dp = _library()
    if accountant == "pld":
        if any(s < a for a, s, _ in spent.sampled):
            raise ValueError("accountant pld has no event for sampling without replacement: use rdp")
        count = spent.gaussian + sum(r for _, _, r in spent.sampled)  # rounds that sampled everyone
        pld = dp.pld.PLDAccountant()  # add/remove of a shift of 1 at std z/2: the same ratio 2C/zC
        pld.compose(dp_event(noise_multiplier, count=count))
        return float(pld.get_epsilon(delta))
    kinds = [(a, s, r) for a, s, r in spent.sampled] + [(0, 0, spent.gaussian)] * (spent.gaussian > 0)
    total: np.ndarray | None = None
    for population, sample, count in kinds:
        orders, step = _rdp_step(noise_multiplier, population, sample)
        total = (np.zeros_like(step) if total is None else total) + count * step
    assert total is not None
    return float(dp.rdp.compute_epsilon(orders, total, delta)[0])


# ---- configurations whose privacy cannot be accounted ---------------------------------------


def refusal(params: object, clients: int, attack: str, max_epsilon: float, own_client_update: str) -> str:
    """Why a configuration's privacy cannot be accounted, in one line naming the fix; "" if
    it can. ``attack``: the Byzantine attack, "" if none; ``own_client_update``: the name of
    an algorithm with its own client update, "" if it trains through the default one."""
    cfg = configured(params)
    if cfg is None:
        return "stop.max_epsilon needs algorithm.privacy.mode=central or local" if max_epsilon else ""
    try:
        _library()
    except ImportError as e:
        return f"algorithm.privacy.mode={cfg.mode}: {e}"
    if cfg.mode == "central" and attack == "alie":
        # A colluder's update is built from the honest ones: one client would then move the
        # noised sum through every colluder's update as well as its own.
        return (
            "clients.byzantine.attack=alie builds colluders' updates from the honest ones, which breaks "
            "the sensitivity of algorithm.privacy.mode=central: use another attack, or mode=local"
        )
    if cfg.mode == "local" and own_client_update:
        # Local DP covers the noised upload only; an own client update may reveal more (cmfl:
        # whether it uploads at all, decided on the un-noised update).
        return (
            f"algorithm.privacy.mode=local covers the noised upload of the default client update; "
            f"{own_client_update} has its own, which the server sees more of: use mode=central"
        )
    per_round = getattr(params, "sampled_per_round", None)
    if cfg.mode == "central" and cfg.accountant == "pld" and callable(per_round) and per_round() < clients:
        return (
            "algorithm.privacy.accountant=pld: dp-accounting's PLD accountant has no event for "
            "fedavg's sample of clients without replacement; use accountant=rdp"
        )
    return ""

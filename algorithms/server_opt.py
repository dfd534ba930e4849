"""Server optimizers: how a pseudo-gradient moves the global model.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (arXiv 2003.00295), treat the
aggregate of the client updates as a gradient for a server optimizer. Every algorithm
here that steps ``x <- x - server_lr * direction`` (FedAvg's round average, FedBuff's
buffer flush) can use any rule below instead:

* ``sgd``: ``x <- x - eta_g Delta``, the plain descent (``aggregation.descend``).
* ``avgm``: FedAvgM (Hsu, Qi, Brown 2019, arXiv 1909.06335), server momentum
  ``m <- beta1 m + Delta``; ``x <- x - eta_g m``.
* ``adagrad`` / ``adam`` / ``yogi``: Reddi et al. Algorithm 2,
  ``m <- beta1 m + (1 - beta1) Delta`` and
  adagrad ``v <- v + Delta^2``; adam ``v <- beta2 v + (1 - beta2) Delta^2``;
  yogi ``v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)``; then
  ``x <- x - eta_g m / (sqrt(v) + tau)``.

**Sign.** Reddi et al. define ``Delta`` as client model minus server model and *add* the
step. Ours is the pseudo-gradient ``Delta = x - y`` (``Update.delta``), its negation:
``m`` flips sign with ``Delta`` and ``v`` (built from ``Delta^2``) does not, so the step
is *subtracted* and a positive pseudo-gradient lowers ``x`` under every rule.

**Initial moments.** ``m_{-1} = 0`` and ``v_{-1} = tau^2``, the smallest value Algorithm 2
allows (``v_{-1} >= tau^2``). There is no Adam bias correction: Algorithm 2 has none
(Flower's FedAdam adds one and starts ``v`` at 0, so its early steps differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.aggregation import check_choice, descend

SERVER_OPTS = ("sgd", "avgm", "adagrad", "adam", "yogi")


@dataclass(frozen=True, kw_only=True)
class ServerOptParams:
    """Params mixin: ``algorithm.server_opt=adam algorithm.server_lr=0.01``.

    The step size ``server_lr`` stays a field of each including Params, where it already
    was; these fields are keyword-only so that the including Params keep their
    positional order.
    """

    server_opt: str = "sgd"  # sgd | avgm | adagrad | adam | yogi
    beta1: float = 0.9  # momentum (avgm) / first-moment decay (adaptive)
    beta2: float = 0.99  # second-moment decay (adam, yogi); Reddi et al.'s default
    tau: float = 1e-3  # adaptivity: floor of the per-coordinate denominator sqrt(v) + tau

    def __post_init__(self) -> None:
        check_choice("server_opt", self.server_opt, SERVER_OPTS)
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1) (got {self.beta1})")
        if not 0 <= self.beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1) (got {self.beta2})")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (got {self.tau})")

    def server_update(
        self, model: np.ndarray, delta: np.ndarray, opt: ServerOptState, server_lr: float
    ) -> tuple[np.ndarray, ServerOptState]:
        """One server step with the configured rule (see ``server_opt_update``)."""
        return server_opt_update(
            self.server_opt, model, delta, opt, lr=server_lr, beta1=self.beta1, beta2=self.beta2, tau=self.tau
        )


@dataclass(frozen=True, eq=False)
class ServerOptState:
    """The server optimizer's memory, kept in the algorithm's state (so checkpointed)."""

    m: np.ndarray | None = None  # momentum / first moment, float32; None = m_{-1} = 0
    v: np.ndarray | None = None  # second moment, float32; None = v_{-1} = tau^2
    step: int = 0  # server steps taken


def server_opt_update(
    rule: str,
    model: np.ndarray,
    delta: np.ndarray,
    opt: ServerOptState,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> tuple[np.ndarray, ServerOptState]:
    """Apply pseudo-gradient ``delta`` to ``model``: the new model and optimizer state.

    Pure: inputs are not modified. Arithmetic is float64, rounded once to float32, and
    the stored moments are the rounded ones, so a resumed run continues bit for bit.
    """
    check_choice("server_opt", rule, SERVER_OPTS)
    step = opt.step + 1
    if rule == "sgd":  # the pre-existing path, untouched: results stay bit-identical
        return descend(model, delta, lr), ServerOptState(step=step)
    x = np.asarray(model, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    m_prev = 0.0 if opt.m is None else np.asarray(opt.m, dtype=np.float64)
    if rule == "avgm":
        m = beta1 * m_prev + d
        return (x - lr * m).astype(np.float32), ServerOptState(m=m.astype(np.float32), step=step)
    m = beta1 * m_prev + (1.0 - beta1) * d
    v_prev = tau * tau if opt.v is None else np.asarray(opt.v, dtype=np.float64)
    d2 = d * d
    if rule == "adagrad":
        v = v_prev + d2
    elif rule == "adam":
        v = beta2 * v_prev + (1.0 - beta2) * d2
    else:  # yogi: additive, so v can shrink when Delta^2 < v, and grows no faster than adam's
        v = v_prev - (1.0 - beta2) * d2 * np.sign(v_prev - d2)
    m32, v32 = m.astype(np.float32), v.astype(np.float32)
    new_model = (x - lr * m / (np.sqrt(v) + tau)).astype(np.float32)
    return new_model, ServerOptState(m=m32, v=v32, step=step)

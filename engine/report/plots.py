"""PNG plots of a run: accuracy against virtual time, and the client timeline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# Figure without pyplot: no display backend, no global figure registry (so nothing to
# close), and 0.4 s less to import in a short run. PNGs are rendered by Agg.
from matplotlib.figure import Figure

TIMELINE_MAX_CLIENTS = 60  # beyond this a timeline is unreadable; the first clients are shown


def plot_accuracy(metrics: pd.DataFrame, path: Path, title: str) -> None:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    ax.plot(metrics.sim_time, metrics.accuracy, marker="o", markersize=3)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_timeline(events: pd.DataFrame, num_clients: int, path: Path) -> None:
    """Each client's busy spans (dispatch to finish) as bars; gaps are idle time.
    Dropped jobs are drawn in red."""
    shown = min(num_clients, TIMELINE_MAX_CLIENTS)
    fig = Figure(figsize=(8.0, max(2.5, 0.12 * shown + 1.0)))
    ax = fig.subplots()
    ev = events[events.client < shown]
    for dropped, color in ((0, "tab:blue"), (1, "tab:red")):
        part = ev[ev.dropped == dropped]
        if len(part):
            ax.barh(
                part.client,
                part.finish_time - part.dispatch_time,
                left=part.dispatch_time,
                height=0.8,
                color=color,
                linewidth=0,
            )
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("client")
    ax.set_ylim(-1, shown)
    suffix = f" (first {shown} of {num_clients})" if shown < num_clients else ""
    ax.set_title(f"client timeline: busy spans{suffix}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)

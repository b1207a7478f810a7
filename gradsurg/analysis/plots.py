"""Matplotlib figures of the paper's GD, W and R simulations (Agg backend, PNG).

Each ``plot_*`` function computes its data with :mod:`gradsurg.analysis.simulation`
and writes one PNG; it returns the path. ``make_figures`` writes all three.
"""
from __future__ import annotations

import math
import os

import torch

from . import simulation as sim

__all__ = ["plot_gd_surfaces", "plot_weight_curves", "plot_ratio_surfaces", "make_figures", "plot_w_telemetry",
           "TEMPERATURES", "GD_LOSSES", "RATIO_LOSSES"]

TEMPERATURES = (0.3, 0.1, 0.05, 0.03, 0.01, 0.005)
GD_LOSSES = ("info_nce", "arccon", "mpt", "met", "mat")
RATIO_LOSSES = ("arccon", "met", "mat")
_TITLES = {"info_nce": "InfoNCE", "arccon": "ArcCon", "mpt": "MPT", "met": "MET", "mat": "MAT"}


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pi_ticks(ax, axis: str, values) -> None:
    ticks = list(values)
    labels = [f"{t / math.pi:.2g}π" for t in ticks]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks)
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)(labels)


def plot_gd_surfaces(path: str, *, grid: int = 100, num_batches: int = 1000, batch_size: int = 128,
                     losses=GD_LOSSES, seed: int = 0) -> str:
    """Expected GD gate over (mu_pos, mu_neg) for each loss (paper Fig. 2)."""
    plt = _pyplot()
    pos = torch.linspace(0.05 * math.pi, 0.5 * math.pi, grid)
    neg = torch.linspace(0.05 * math.pi, math.pi, grid)
    fig, axes = plt.subplots(1, len(losses), figsize=(3.4 * len(losses) + 1, 3.3), squeeze=False)
    fig.subplots_adjust(wspace=0.35)
    mesh = None
    for ax, name in zip(axes[0], losses):
        gen = torch.Generator().manual_seed(seed)
        z = sim.gd_surface(name, pos, neg, num_batches=num_batches, batch_size=batch_size, generator=gen)
        mesh = ax.pcolormesh(neg.numpy(), pos.numpy(), z.numpy(), shading="auto", vmin=0, vmax=1, cmap="viridis")
        ax.plot([neg[0], pos[-1]], [neg[0], pos[-1]], "w--", lw=0.8)
        ax.set_title(_TITLES.get(name, name))
        ax.set_xlabel(r"$\mu_\mathrm{neg}$")
        _pi_ticks(ax, "x", [0.25 * math.pi, 0.5 * math.pi, 0.75 * math.pi, math.pi])
        _pi_ticks(ax, "y", [0.1 * math.pi, 0.3 * math.pi, 0.5 * math.pi])
    axes[0][0].set_ylabel(r"$\mu_\mathrm{pos}$")
    fig.colorbar(mesh, ax=axes[0].tolist(), label="expected GD (share of the full gradient)")
    fig.suptitle(f"Gradient dissipation (batch {batch_size}, {num_batches} batches per cell)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_weight_curves(path: str, *, grid: int = 100, num_batches: int = 1000, batch_size: int = 128,
                       temperatures=TEMPERATURES, seed: int = 0) -> str:
    """Expected largest softmax weight vs. mean negative angle, one curve per temperature."""
    plt = _pyplot()
    neg = torch.linspace(0.05 * math.pi, math.pi, grid)
    gen = torch.Generator().manual_seed(seed)
    curves = sim.weight_curves(neg, temperatures, num_batches=num_batches, batch_size=batch_size, generator=gen)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for tau, curve in zip(temperatures, curves):
        ax.plot(neg.numpy(), curve.numpy(), label=fr"$\tau$ = {tau:g}")
    ax.axhline(1.0 / (batch_size - 1), color="grey", lw=0.8, ls=":", label="uniform")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\mu_\mathrm{neg}$")
    ax.set_ylabel(r"E[max$_j$ W$_{ij}$]")
    _pi_ticks(ax, "x", [0.25 * math.pi, 0.5 * math.pi, 0.75 * math.pi, math.pi])
    ax.set_title("Weight of the hardest negative (softmax W)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_ratio_surfaces(path: str, *, grid: int = 100, batch_size: int = 128, losses=RATIO_LOSSES,
                        vmax: float = 5.0) -> str:
    """R over (theta_pos, theta_neg), the dissipated / inverted region shaded."""
    plt = _pyplot()
    tp = torch.linspace(0.05 * math.pi, 0.5 * math.pi, grid, dtype=torch.float64)
    tn = torch.linspace(0.05 * math.pi, math.pi, grid, dtype=torch.float64)
    fig, axes = plt.subplots(1, len(losses), figsize=(3.6 * len(losses) + 1, 3.3), squeeze=False)
    fig.subplots_adjust(wspace=0.35)
    mesh = None
    for ax, name in zip(axes[0], losses):
        r, mask = sim.ratio_surface(name, tp, tn, batch_size=batch_size)
        mesh = ax.pcolormesh(tn.numpy(), tp.numpy(), r.clamp(max=vmax).numpy(), shading="auto", vmin=0, vmax=vmax,
                             cmap="magma")
        shade = torch.where(mask, 1.0, float("nan")).numpy()
        ax.pcolormesh(tn.numpy(), tp.numpy(), shade, shading="auto", cmap="Greys", vmin=0, vmax=1.6, alpha=0.6)
        ax.set_title(_TITLES.get(name, name))
        ax.set_xlabel(r"$\theta_\mathrm{neg}$")
        _pi_ticks(ax, "x", [0.25 * math.pi, 0.5 * math.pi, 0.75 * math.pi, math.pi])
        _pi_ticks(ax, "y", [0.1 * math.pi, 0.3 * math.pi, 0.5 * math.pi])
    axes[0][0].set_ylabel(r"$\theta_\mathrm{pos}$")
    fig.colorbar(mesh, ax=axes[0].tolist(), label=f"R (clipped at {vmax:g}); grey: dissipated")
    fig.suptitle("Ratio of the pull to the push", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def make_figures(out_dir: str, *, grid: int = 100, num_batches: int = 1000, batch_size: int = 128, seed: int = 0,
                 which=("gd", "w", "r")) -> list[str]:
    """Write ``gd_surface.png``, ``w_temperature.png`` and ``r_surface.png`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if "gd" in which:
        paths.append(plot_gd_surfaces(os.path.join(out_dir, "gd_surface.png"), grid=grid,
                                      num_batches=num_batches, batch_size=batch_size, seed=seed))
    if "w" in which:
        paths.append(plot_weight_curves(os.path.join(out_dir, "w_temperature.png"), grid=grid,
                                        num_batches=num_batches, batch_size=batch_size, seed=seed))
    if "r" in which:
        paths.append(plot_ratio_surfaces(os.path.join(out_dir, "r_surface.png"), grid=grid, batch_size=batch_size))
    return paths


#: the W telemetry of a training run's ``stats.csv`` (trainer's StatsCollector), one panel each
W_TELEMETRY = (("entropy", "entropy of W, H (nats)"), ("effective_negatives", "effective negatives exp(H)"),
               ("max_weight", "largest weight max_j W_ij"))
#: the global normaliser's panel, drawn when the run logged it (``normalizer='global'``)
NORMALIZER_TELEMETRY = (("normalizer_ratio", "global normaliser g_i / u_i (row sum of W)"),)


def telemetry_panels(columns) -> tuple:
    """The ``(key, label)`` panels that a ``stats.csv`` with these ``columns`` can draw."""
    return W_TELEMETRY + (NORMALIZER_TELEMETRY if "normalizer_ratio_mean" in columns else ())


def plot_w_telemetry(stats_csv: str, path: str) -> str:
    """W over training from a run's ``stats.csv``: the mean over anchors and the 10-90 % band of W's
    entropy, effective number of negatives and largest weight, against the step (and the global
    normaliser's ``g_i / u_i`` where the run logged it). Raises ``ValueError``
    naming the file when it has no such columns (a run logged before the telemetry existed)."""
    import csv

    with open(stats_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "entropy_mean" not in rows[0]:
        raise ValueError(f"{stats_csv}: no W telemetry columns (entropy_mean, ...); it comes from runs with the "
                         "trainer's per-step statistics of this version")
    plt = _pyplot()
    step = [float(r["step"]) for r in rows]
    panels = telemetry_panels(rows[0])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        col = lambda name: [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]  # noqa: E731
        ax.fill_between(step, col(f"{key}_q10"), col(f"{key}_q90"), alpha=0.25, label="10-90 % of anchors")
        ax.plot(step, col(f"{key}_mean"), label="mean over anchors")
        ax.plot(step, col(f"{key}_q50"), "--", linewidth=0.8, label="median")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"W over training: {os.path.basename(os.path.dirname(os.path.abspath(stats_csv)))}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

"""Figures for the analyses: matplotlib (Agg, headless) helpers that write PNG files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VARIANT_COLOURS = {"cot": "tab:orange", "repeat": "tab:green", "repeat+cot": "tab:purple"}
MAX_BARS = 60  # beyond this many names, figures summarise instead of drawing a bar per name
MAX_POINTS = 5000  # scatter plots draw a deterministic sample of at most this many points


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path | str) -> Path:
    """Write a figure as PNG (creating the folder) and free it."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
    return path


def _short(name: str, width: int = 28) -> str:
    tail = name.split("/")[-1]
    return tail if len(tail) <= width else tail[: width - 1] + "…"


def _label_points(ax: Any, x: np.ndarray, y: np.ndarray, labels: Sequence[str] | None) -> None:
    if labels is None or len(labels) > 40:
        return
    for xi, yi, label in zip(x, y, labels, strict=True):
        ax.annotate(_short(label), (xi, yi), fontsize=7, alpha=0.8,
                    xytext=(3, 3), textcoords="offset points")


def scatter(
    path: Path | str,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    labels: Sequence[str] | None = None,
    diagonal: bool = False,
    fit: bool = True,
    note: str | None = None,
) -> Path:
    """A labelled scatter plot with an optional y = x line and least-squares fit line."""
    plt = _pyplot()
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    shown = np.arange(len(xs))
    if len(xs) > MAX_POINTS:  # the fit uses every point; the dots are a fixed sample
        shown = np.sort(np.random.default_rng(0).choice(len(xs), MAX_POINTS, replace=False))
    ax.scatter(xs[shown], ys[shown], s=22 if len(xs) <= 300 else 5, alpha=0.8,
               color="tab:blue", edgecolor="none")  # fmt: skip
    _label_points(ax, xs, ys, labels)
    finite = np.isfinite(xs) & np.isfinite(ys)
    if diagonal and finite.any():
        lo = float(min(xs[finite].min(), ys[finite].min()))
        hi = float(max(xs[finite].max(), ys[finite].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x")
    if fit and finite.sum() >= 2 and np.ptp(xs[finite]) > 0:
        slope, intercept = np.polyfit(xs[finite], ys[finite], 1)
        grid = np.linspace(xs[finite].min(), xs[finite].max(), 50)
        ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1, label="least squares")
    if note:
        ax.text(0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if diagonal or fit:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def shift_arrows(
    path: Path | str,
    base: np.ndarray,
    shifted: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str] | None = None,
    title: str,
    note: str | None = None,
) -> Path:
    """Base points (black) with a line to each prompt-shifted version, one colour per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    for variant, points in shifted.items():
        colour = VARIANT_COLOURS.get(variant, "tab:grey")
        for (x0, y0), (x1, y1) in zip(base, points, strict=True):
            ax.plot([x0, x1], [y0, y1], color=colour, lw=0.8, alpha=0.6)
        ax.scatter(points[:, 0], points[:, 1], s=16, color=colour, label=variant, zorder=3)
    ax.scatter(base[:, 0], base[:, 1], s=22, color="black", label="base", zorder=4)
    _label_points(ax, base[:, 0], base[:, 1], labels)
    if note:
        ax.text(0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.set_xlabel("PC 1 within the span of the mean shift vectors")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def ranked_bars(
    path: Path | str,
    names: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    note: str | None = None,
) -> Path:
    """Horizontal grouped bars, one group per name and one bar per series."""
    plt = _pyplot()
    n = max(len(names), 1)
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.32 * n * max(len(series), 1) ** 0.5))
    height = 0.8 / max(len(series), 1)
    rows = np.arange(len(names))
    for k, (label, values) in enumerate(series.items()):
        ax.barh(rows + k * height, np.asarray(values, dtype=float), height=height, label=label)
    ax.set_yticks(rows + height * (len(series) - 1) / 2)
    ax.set_yticklabels([_short(name) for name in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if note:
        ax.text(0.98, 0.02, note, transform=ax.transAxes, va="bottom", ha="right", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def distributions(
    path: Path | str,
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    note: str | None = None,
    bins: int = 60,
) -> Path:
    """Overlaid histograms of a few series (one per label): a bounded figure for any count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    arrays = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] or [np.zeros(0)])
    edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else bins
    for label, values in arrays.items():
        values = values[np.isfinite(values)]
        ax.hist(values, bins=edges, alpha=0.55, label=f"{label} (median {np.median(values):.3g})"
                if values.size else label)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("models")
    ax.set_title(title)
    if note:
        ax.text(0.98, 0.98, note, transform=ax.transAxes, va="top", ha="right", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


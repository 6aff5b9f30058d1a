"""PNG plots of evaluation results: confusion matrices, per-class scores, before/after bars,
metrics per stage and training-loss curves; the other analyses draw their own figures through
`figure` and `save`, so matplotlib is set up here alone.

matplotlib runs on its Agg backend (files only, no display), chosen on import so that a machine
without a screen never tries to open a window. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 120


def figure(rows: int = 1, cols: int = 1, **kwargs):
    """(figure, axes): `plt.subplots` for the analyses that draw their own figures; `save` it."""
    return plt.subplots(rows, cols, **kwargs)


def save(fig, path: str) -> str:
    """Writes `fig` to `path` as PNG and frees it; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _grid(n: int, width: float = 3.6, height: float = 3.2, max_cols: int = 3):
    """A figure with `n` panels in rows of at most `max_cols`; unused panels hidden."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = figure(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def confusion_matrix(confusion, label_names, path: str, title: str) -> str:
    """Counts with the true label on rows and the prediction on columns, each cell annotated."""
    m = np.asarray(confusion)
    k = len(label_names)
    size = max(4.5, 0.7 * k + 2.5)
    fig, ax = figure(figsize=(size + 1.0, size))
    image = ax.imshow(m, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="examples")
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    dark = m.max() / 2 if m.size and m.max() else 1
    for i in range(k):
        for j in range(k):
            color = "white" if m[i, j] > dark else "black"
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", color=color, fontsize=9)
    return save(fig, path)


def per_class_scores(per_class: list[dict], path: str, title: str) -> str:
    """Grouped bars of precision, recall and F1 for each class."""
    names = [row["label"] for row in per_class]
    x = np.arange(len(names))
    fig, ax = figure(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
    for offset, key, label in (
        (-0.27, "precision", "precision"),
        (0, "recall", "recall"),
        (0.27, "f1", "F1"),
    ):
        ax.bar(x + offset, [row[key] for row in per_class], width=0.27, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def comparison_bars(values: dict[str, dict[str, float]], path: str, title: str) -> str:
    """One panel per metric, one bar per model: `values[model][metric]` (NaN bars are left out)."""
    models = list(values)
    metrics = list(values[models[0]])
    fig, axes = _grid(len(metrics))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, metrics):
        heights = [values[x].get(metric) for x in models]
        shown = [h if _finite(h) else 0.0 for h in heights]
        bars = ax.bar(models, shown, color=colors[: len(models)])
        for bar, h in zip(bars, heights):
            ax.annotate(
                f"{h:.4g}" if _finite(h) else "n/a",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(_readable(metric))
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


def metrics_by_stage(rows: list[dict], metrics: list[tuple[str, str]], path: str, title: str):
    """One panel per metric (`(key, label)`), its value after each stage (`row["stage"]`)."""
    stages = [row["stage"] for row in rows]
    fig, axes = _grid(len(metrics))
    for ax, (key, label) in zip(axes, metrics):
        ys = [row.get(key) for row in rows]
        ax.plot(stages, [y if _finite(y) else np.nan for y in ys], marker="o")
        if not any(_finite(y) for y in ys):
            _note(ax, "n/a at every stage")
            ax.set_yticks([])
        ax.set_title(label)
        ax.set_xlabel("after stage (0 = before training)")
        ax.set_xticks(stages)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


def loss_curves(curves: list[tuple[str, list, list]], path: str, title: str) -> str:
    """Training loss against the optimizer step; several curves (e.g. stages) run end to end on
    one axis, each in its own colour, with a dotted line where the next begins."""
    fig, ax = figure(figsize=(7.5, 4))
    offset = 0
    for i, (label, steps, values) in enumerate(curves):
        xs = [offset + s for s in steps]
        ax.plot(xs, values, marker="." if len(xs) < 30 else None, label=label)
        if i:
            ax.axvline(offset, color="grey", linestyle=":", linewidth=1)
        offset += max(steps, default=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step" + (" (stages end to end)" if len(curves) > 1 else ""))
    ax.set_ylabel("training loss (mean NLL per target token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return save(fig, path)


def _readable(metric: str) -> str:
    """distinct_2 -> distinct-2, macro_f1 -> macro-F1, mean_length -> mean length."""
    name = metric.replace("_", " ").replace("distinct ", "distinct-")
    return name.replace("macro f1", "macro-F1").replace("mean nll", "mean NLL")


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)

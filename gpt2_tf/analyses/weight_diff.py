"""How far fine-tuning moved each weight: two checkpoints compared layer by layer.

Both sides are read as Hugging Face-named states (`weights.state_of` for a built model, or a
checkpoint folder in any format `weights` reads), so a base model, a fully tuned one and a LoRA run
(adapters folded in) compare name by name. Per weight, with D = B - A:

  mean_abs, max_abs   mean and max of |D|
  std                 standard deviation of D (population, ddof=0)
  cosine              mean over rows of cos(A_i, B_i)
  euclidean           mean over rows of ||B_i - A_i||
  relative            ||D|| / ||A|| (Frobenius), comparable across layers of different scale

Rows are the first axis of a 2-D weight (Keras/Conv1D kernels are [in, out], so a row is one input
unit's outgoing weights; an embedding row is one token); a 1-D weight is one row. A row that is all
zeros on either side has no cosine and is left out of that mean (NaN when every row is).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from gpt2_tf.core import reports
from gpt2_tf.core.reports import md_table, number
from gpt2_tf.evaluation.metrics import cosine_similarity

METRICS = ("mean_abs", "max_abs", "std", "cosine", "euclidean", "relative")
LABELS = {
    "mean_abs": "mean |B - A|",
    "max_abs": "max |B - A|",
    "std": "std of B - A",
    "cosine": "mean row cosine(A, B)",
    "euclidean": "mean row ||B - A||",
    "relative": "relative change ||B - A|| / ||A||",
}
_BLOCK = re.compile(r"h\.(\d+)\.(.+)")
SUBLAYERS = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


@dataclasses.dataclass
class WeightDiff:
    name: str
    shape: tuple[int, ...]
    mean_abs: float
    max_abs: float
    std: float
    cosine: float
    euclidean: float
    relative: float

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.shape))

    def row(self) -> dict:
        return {"name": self.name, "shape": self.shape_text, **self.values()}

    def values(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in METRICS}


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(1, -1) if x.ndim < 2 else x.reshape(x.shape[0], -1)  # [R, C]


def diff_tensor(name: str, a: np.ndarray, b: np.ndarray) -> WeightDiff:
    """The metrics of one weight, computed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b - a
    ra, rb = _rows(a), _rows(b)
    defined = (np.linalg.norm(ra, axis=1) > 0) & (np.linalg.norm(rb, axis=1) > 0)
    cos = cosine_similarity(ra[defined], rb[defined])
    norm_a = np.linalg.norm(a)
    return WeightDiff(
        name=name,
        shape=tuple(a.shape),
        mean_abs=float(np.abs(d).mean()),
        max_abs=float(np.abs(d).max()),
        std=float(d.std()),
        cosine=float(cos.mean()) if defined.any() else float("nan"),
        euclidean=float(np.linalg.norm(_rows(d), axis=1).mean()),
        relative=float(np.linalg.norm(d) / norm_a) if norm_a > 0 else float("nan"),
    )


def _parameters(state: dict) -> dict:
    """The state without what is not a separate parameter: the causal-mask buffers, and the LM
    head, which GPT-2 ties to `wte.weight`."""
    from gpt2_tf.model.weights import HF_BUFFERS

    return {k: v for k, v in state.items() if k != "lm_head.weight" and not HF_BUFFERS.fullmatch(k)}


def _sort_key(name: str) -> tuple:
    """Model order: embeddings, then block by block (sub-layers in order, weight before bias),
    then the rest (ln_f, a head), as `weights.name_table` lists them; files hold keys sorted."""
    if name in ("wte.weight", "wpe.weight"):
        return (0, name != "wte.weight")
    m = _BLOCK.fullmatch(name)
    if not m:
        prefix, _, param = name.rpartition(".")
        return (2, prefix, param != "weight")
    sub, _, param = m[2].rpartition(".")
    rank = SUBLAYERS.index(sub) if sub in SUBLAYERS else len(SUBLAYERS)
    return (1, int(m[1]), rank, param != "weight", m[2])


def compare_states(a: dict, b: dict, label_a: str = "A", label_b: str = "B") -> list[WeightDiff]:
    """One WeightDiff per weight, in the model's order. A key on one side only, or a shape that
    differs, is an error naming the key."""
    a, b = _parameters(a), _parameters(b)
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    if only_a or only_b:
        raise KeyError(
            f"the checkpoints hold different weights: only in {label_a}: {only_a[:10]}; "
            f"only in {label_b}: {only_b[:10]}"
        )
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(
                f"key {k!r}: shape {tuple(a[k].shape)} in {label_a}, {tuple(b[k].shape)} "
                f"in {label_b}"
            )
    return [diff_tensor(k, a[k], b[k]) for k in sorted(a, key=_sort_key)]


def read_state(path: str) -> dict[str, np.ndarray]:
    """A checkpoint folder (Hugging Face / ours, OpenAI, keras-hub) or hub id -> its state."""
    from gpt2_tf.core import hub
    from gpt2_tf.model.weights import HF_PATTERNS, READERS, detect_format

    folder = hub.resolve(path, HF_PATTERNS, what="GPT-2 weights")
    _, state, _ = READERS[detect_format(folder)](folder)
    return state


def compare_models(model_a, model_b) -> list[WeightDiff]:
    """Two built models (e.g. before and after `merge_lora`), through `weights.state_of`."""
    from gpt2_tf.model.weights import state_of

    return compare_states(state_of(model_a), state_of(model_b))


# ---- table, CSV --------------------------------------------------------------------------------
def markdown_table(diffs: list[WeightDiff]) -> str:
    rows = [[d.name, d.shape_text, *d.values().values()] for d in diffs]
    return md_table(["weight", "shape", *METRICS], rows, align="ll" + "r" * len(METRICS))


def write_csv(diffs: list[WeightDiff], path: str) -> None:
    reports.write_csv(path, [d.row() for d in diffs], ["name", "shape", *METRICS])


def summary(diffs: list[WeightDiff]) -> dict:
    """Whole-model figures: how many weights changed, the largest change and where."""
    changed = [d for d in diffs if d.max_abs > 0]
    top = max(diffs, key=lambda d: d.relative if not np.isnan(d.relative) else -1.0)
    return {
        "weights": len(diffs),
        "changed": len(changed),
        "unchanged": [d.name for d in diffs if d.max_abs == 0],
        "max_abs": max(d.max_abs for d in diffs),
        "largest_relative_change": {"name": top.name, "relative": top.relative},
    }


# ---- heat maps ---------------------------------------------------------------------------------
def block_grid(diffs: list[WeightDiff], metric: str):
    """(block labels, kind labels, [n_blocks, n_kinds] values) of the `h.N.*` weights."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    cells = {}
    for d in diffs:
        m = _BLOCK.fullmatch(d.name)
        if m:
            cells[(int(m[1]), m[2])] = getattr(d, metric)
    blocks = sorted({b for b, _ in cells})
    kinds = list(dict.fromkeys(k for _, k in cells))  # the blocks' own order
    grid = np.array([[cells.get((b, k), np.nan) for k in kinds] for b in blocks])
    return [f"h.{b}" for b in blocks], kinds, grid


def _annotate(ax, values, shown, max_cells: int = 400) -> None:
    """Writes each cell's value when there are few enough cells to read."""
    if values.size > max_cells:
        return
    for (i, j), v in np.ndenumerate(values):
        dark = not np.isnan(shown[i, j]) and shown[i, j] < 0.5  # viridis is dark at its low end
        color = "white" if dark else "black"
        ax.text(j, i, number(v), ha="center", va="center", fontsize=6.5, color=color)


def plot_metrics(diffs: list[WeightDiff], path: str, title: str) -> None:
    """Weights (rows) x metrics (columns); each column is coloured on its own 0..1 scale, since
    the metrics differ in range, and the cells carry their values."""
    from gpt2_tf.analyses import plots

    values = np.array([list(d.values().values()) for d in diffs])  # [W, M]
    lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
    shown = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    fig, ax = plots.figure(figsize=(9, 1.5 + 0.22 * len(diffs)))
    image = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(METRICS)), METRICS, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(diffs)), [d.name for d in diffs], fontsize=7)
    _annotate(ax, values, shown, max_cells=2000)  # a row per weight: room for every value
    fig.colorbar(image, ax=ax, fraction=0.04, label="position within the column's range")
    ax.set_title(title, fontsize=9, pad=22)
    plots.save(fig, path)


def plot_blocks(diffs: list[WeightDiff], metric: str, path: str, title: str) -> None:
    """Transformer blocks (rows) x weight kinds (columns) for one metric, on one colour scale."""
    from gpt2_tf.analyses import plots

    blocks, kinds, grid = block_grid(diffs, metric)
    fig, ax = plots.figure(figsize=(1.8 + 0.75 * len(kinds), 2.0 + 0.35 * len(blocks)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(kinds)), kinds, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(blocks)), blocks, fontsize=8)
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    _annotate(ax, grid, (grid - lo) / (hi - lo if hi > lo else 1.0))
    fig.colorbar(image, ax=ax, fraction=0.04, label=LABELS[metric])
    others = [d for d in diffs if not _BLOCK.fullmatch(d.name)]
    note = ", ".join(f"{d.name} {number(getattr(d, metric))}" for d in others)
    ax.set_title(f"{title}\noutside the blocks: {note}", fontsize=8)
    plots.save(fig, path)


# ---- everything, into a folder -----------------------------------------------------------------
def write_report(
    diffs: list[WeightDiff], output_dir: str, label_a: str, label_b: str, metric: str = "relative"
) -> dict[str, str]:
    """weight_diff.csv / .json / .md and the two heat maps; returns {kind: path}."""
    import os

    os.makedirs(output_dir, exist_ok=True)
    paths = {
        k: os.path.join(output_dir, n)
        for k, n in (
            ("csv", "weight_diff.csv"),
            ("json", "weight_diff.json"),
            ("markdown", "weight_diff.md"),
            ("metrics_plot", "weight_diff_metrics.png"),
            ("blocks_plot", "weight_diff_blocks.png"),
        )
    }
    write_csv(diffs, paths["csv"])
    info = {
        "a": label_a,
        "b": label_b,
        "summary": summary(diffs),
        "weights": [d.row() for d in diffs],
    }
    reports.write_json(paths["json"], info)
    s = info["summary"]
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(
            f"# Weight difference\n\nA = `{label_a}`, B = `{label_b}`, D = B - A. "
            f"{s['changed']} of {s['weights']} weights changed; largest relative change "
            f"{number(s['largest_relative_change']['relative'])} in "
            f"`{s['largest_relative_change']['name']}`.\n\n{markdown_table(diffs)}\n\n"
            f"![metrics]({os.path.basename(paths['metrics_plot'])})\n"
            f"![blocks]({os.path.basename(paths['blocks_plot'])})\n"
        )
    versus = f"B = {label_b} vs A = {label_a}"
    plot_metrics(diffs, paths["metrics_plot"], f"Weight difference per weight: {versus}")
    title = f"{LABELS[metric]} per block and weight kind: {versus}"
    plot_blocks(diffs, metric, paths["blocks_plot"], title)
    return paths

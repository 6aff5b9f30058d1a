"""Packed and padded training learn the same (issue 19): validation loss after each epoch.

    python -m benchmarks.same_learning [--epochs 4] [--seeds 2]

The real Dolly sample (`../shared/data/dolly`) prepared at seq_len 512, the tiny preset trained
from the same random weights with `--packing` and `--nopacking`, each for whole epochs, so after
epoch k both have seen the same training examples. Packed rows hold about three examples each
here, so the packed run takes 3 rows a step against the padded run's 8 examples, to keep the
examples per update alike. Writes `benchmarks/results/same_learning.{png,json}`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile

from benchmarks.cases import SHARED

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def prepared(seq_len: int) -> str:
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.tasks import get_task
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

    folder = tempfile.mkdtemp()
    options = {"input_jsonl": os.path.join(SHARED, "dolly", "dolly_first743.jsonl")}
    tok = GPT2Tokenizer.from_pretrained(os.path.join(SHARED, "gpt2_tokenizer"))
    prepare(get_task("dolly"), tok, PrepOptions(folder, seq_len, task=options))
    return folder


def curve(data_dir: str, packing: bool, epochs: int, seed: int) -> list[float]:
    """Validation loss at the end of each epoch."""
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    out = tempfile.mkdtemp()
    cfg = TrainConfig(
        data_dir=data_dir,
        output_dir=out,
        init_from="tiny",
        batch_size=3 if packing else 8,
        epochs=epochs,
        learning_rate=1e-3,
        warmup_steps=10,
        packing=packing,
        precision="float32",
        strategy="one_device",
        dropout=0.0,
        num_samples=0,
        log_every=50,
        seed=seed,
    )
    Trainer(cfg).run()
    with open(os.path.join(out, "metrics.csv"), newline="", encoding="utf-8") as f:
        return [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    opts = parser.parse_args()
    data = prepared(512)
    runs = {
        f"{'packed' if packing else 'padded'}, seed {seed}": curve(data, packing, opts.epochs, seed)
        for seed in range(opts.seeds)
        for packing in (True, False)
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "same_learning.json"), "w") as f:
        json.dump(runs, f, indent=2)

    from gpt2_tf.analyses import plots

    fig, ax = plots.figure()
    for name, losses in runs.items():
        style = "-" if name.startswith("packed") else "--"
        ax.plot(range(1, len(losses) + 1), losses, style, marker="o", label=name)
    ax.set_xlabel("epoch (the same training examples seen by both)")
    ax.set_ylabel("validation loss")
    ax.set_title("Dolly sample, tiny model: packed and padded training")
    ax.legend()
    plots.save(fig, os.path.join(RESULTS, "same_learning.png"))
    for name, losses in runs.items():
        print(f"{name}: " + ", ".join(f"{x:.3f}" for x in losses))


if __name__ == "__main__":
    main()

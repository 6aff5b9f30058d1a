"""The evaluation loop: a model's sums over a prepared split, the one loop behind training's
validation, `make eval-*` and the analyses.

A GPT-2 language model runs its [*, vocab] head only at target positions (`losses.lm_target_sums`,
as in training); any other model gives logits for the batch (`losses.batch_sums`). A classifier
split (labels [B]) also gives each example's predicted label.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from gpt2_tf.core.compiled import ModelFunction, for_model
from gpt2_tf.evaluation import metrics
from gpt2_tf.model import losses, speed


@dataclasses.dataclass
class Sums:
    """Weighted sums over a split: NLL, weight (target tokens or examples), correct predictions;
    for a classifier also the labels and predictions, one per example."""

    nll: float = 0.0
    count: float = 0.0
    correct: float = 0.0
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None

    def lm_metrics(self) -> dict:
        mean = self.nll / max(self.count, 1.0)
        return {
            "loss": mean,
            "perplexity": metrics.perplexity(self.nll, self.count),
            "token_accuracy": self.correct / max(self.count, 1.0),
            "target_tokens": int(self.count),
        }

    def classifier_metrics(self, num_classes: int) -> dict:
        confusion = metrics.confusion_matrix(self.labels, self.predictions, num_classes)
        return {
            "loss": self.nll / max(self.count, 1.0),
            "accuracy": self.correct / max(self.count, 1.0),
            "macro_f1": metrics.macro_f1(confusion),
        }


def _batch_sums(model, x, y, w):
    if hasattr(model, "backbone") and hasattr(model, "logits"):  # a GPT-2 language model
        return losses.lm_target_sums(model, x, y, w)
    logits = model(x)  # a Keras model's default: inference
    sums = losses.batch_sums(y, logits, w)
    if y.shape.rank == 1:  # a classifier: each example's label too
        return (*sums, tf.argmax(logits, -1, output_type=tf.int32))
    return sums


def _step(model) -> ModelFunction:
    ref = weakref.ref(model)  # held weakly: see compiled.for_model

    def make():
        fn = lambda x, y, w: _batch_sums(ref(), x, y, w)  # noqa: E731
        return ModelFunction(model, fn, also=(speed.enabled,), reduce_retracing=True)

    return for_model(model, "evaluation_step", make)


def run(model, dataset, max_batches: int = 0) -> Sums:
    """Sums of `model` over `(x, y, sample_weight)` batches (the first `max_batches`; 0: all)."""
    step = _step(model)
    out, labels, predictions = Sums(), [], []
    for i, (x, y, w) in enumerate(dataset):
        if max_batches and i >= max_batches:
            break
        sums = step(x, y, w)
        out.nll += float(sums[0])
        out.count += float(sums[1])
        out.correct += float(sums[2])
        if len(sums) > 3:
            labels.append(y.numpy())
            predictions.append(sums[3].numpy())
    if labels:
        out.labels, out.predictions = np.concatenate(labels), np.concatenate(predictions)
    return out


def perplexity_on(model, dataset) -> dict:
    """Perplexity of `model` on `(x, y, sample_weight)` batches: exp(Σ w·NLL / Σ w)."""
    sums = run(model, dataset)
    return {
        "perplexity": metrics.perplexity(sums.nll, sums.count),
        "mean_nll": sums.nll / max(sums.count, 1.0),
        "target_tokens": int(sums.count),
    }


def classifier_predictions(model, dataset, order=None) -> tuple[np.ndarray, np.ndarray]:
    """(true labels [N], predicted labels [N]) over a classifier split, in the split's order:
    `order` gives each batched example's index in the split when the batches reorder it
    (`data.batches.load_split`'s length buckets)."""
    sums = run(model, dataset)
    if order is None:
        return sums.labels, sums.predictions
    labels, predictions = np.empty_like(sums.labels), np.empty_like(sums.predictions)
    labels[order], predictions[order] = sums.labels, sums.predictions
    return labels, predictions

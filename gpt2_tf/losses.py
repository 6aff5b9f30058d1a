"""Losses and metrics, as sums: a batch gives (loss sum, weight sum, correct), so every mean is
taken over the target tokens (or examples) of the whole global batch, whatever the number of
replicas or accumulation steps.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def batch_sums(y, logits, sample_weight):
    """(NLL sum, weight sum, correct sum) in float32; LM: y [B, T], classifier: y [B]."""
    logits = tf.cast(logits, tf.float32)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)  # [B, T] or [B]
    w = tf.cast(sample_weight, tf.float32) * tf.ones_like(nll)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32)
    return tf.reduce_sum(nll * w), tf.reduce_sum(w), tf.reduce_sum(correct * w)


def perplexity(nll_sum: float, count: float) -> float:
    """exp of the mean NLL over all target tokens (inf past float range)."""
    mean = nll_sum / max(count, 1.0)
    return math.exp(mean) if mean < 700 else float("inf")


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def per_class_prf(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class (0 where a class is never predicted or present)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(confusion: np.ndarray) -> float:
    return float(per_class_prf(confusion)[2].mean())

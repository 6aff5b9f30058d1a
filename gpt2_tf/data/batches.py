"""The batches a prepared split is read in outside training: padding-free by default.

LM tasks pack several examples a row (`packing`), classifiers crop each batch to a length bucket
(`buckets`); `packing=False` reads the padded records (`records.load_tfrecords`). The sums over
a split are the same either way (tested), so evaluation, perplexity and predictions spend their
compute on real tokens as training does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gpt2_tf.data.buckets import BucketSplit
from gpt2_tf.data.packing import PackedSplit
from gpt2_tf.data.records import CLASSIFIER, load_tfrecords, read_metadata


def load_split(
    folder: str,
    split: str,
    batch_size: int,
    *,
    packing: bool = True,
    tokenizer=None,
    stage=None,
) -> tuple[tf.data.Dataset, np.ndarray | None]:
    """(`(x, y, w)` batches of a whole split, `order`). `batch_size` counts packed rows of
    seq_len for LM tasks with `packing`, else examples. `order` is, for each example as the
    batches hold them, its index in the split (classifiers' buckets reorder it), or None when the
    batches keep the split's order (padded) or hold no per-example result (packed LM rows)."""
    meta = read_metadata(folder)
    if not packing:
        return load_tfrecords(folder, split, batch_size, tokenizer=tokenizer, stage=stage), None
    if meta["kind"] != CLASSIFIER:
        packed = PackedSplit(folder, split, tokenizer=tokenizer, stage=stage)
        return packed.dataset(batch_size, shuffle=False), None
    buckets = BucketSplit(folder, split, tokenizer=tokenizer, stage=stage)
    plan = buckets.plan(batch_size, shuffle=False, drop_remainder=False)
    order = np.array([i for _, indices in plan for i in indices], np.int64)
    return buckets.dataset(plan), order

"""Length buckets for classifier tasks: batches of a few fixed lengths instead of `seq_len`, so
the compute goes to real tokens rather than padding.

A classifier reads one example a row and pools its last real token (`GPT2Classifier.pool`), so
it cannot share a row with another; instead each batch is cropped to the shortest of a few
lengths (`bucket_lengths`: every multiple of 8 below seq_len, and seq_len) that holds all of
its examples. The records are right-padded, so cropping removes padding only: the logits, loss
and gradient of an example are those of its padded row.

Why every multiple of 8: on real emotion rows (seq_len 128, batch 32, GPT-2 124M) four buckets
(seq_len/8, /4, /2, seq_len) left 49% of the computed positions padding, at 333 real tokens/s;
multiples of 8 left 27%, at 439 (`make bench BENCH_ARGS=--only epoch`). The step traces once
whatever the length ([batch, None]); under XLA a shape is compiled per length, at most
seq_len / 8 of them.

`BucketSplit` reads a split once (its padded token ids and labels, int32) and each epoch then:

1. draws a permutation of the split from `(seed, epoch)` (`packing.permutation`, as packed LM
   epochs do);
2. puts each example into the smallest bucket that holds it, keeping the permutation's order;
3. from the shortest bucket up, cuts each bucket's examples into batches of exactly
   `batch_size`; a bucket's leftover examples (fewer than a batch) join the next longer bucket,
   in permutation order, so only the longest bucket can leave a partial batch, which training
   drops as the padded path drops its remainder (at most `batch_size - 1` examples an epoch);
4. orders the batches of all buckets by a second draw from `(seed, epoch)`.

`plan` gives the epoch's batches as `(length, example indices)`; `dataset` their `(x, y, w)`
batches, `x = {"token_ids", "padding_mask"}` of `[batch, length]`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gpt2_tf.data.packing import permutation
from gpt2_tf.data.records import (
    CLASSIFIER,
    _check,
    read_metadata,
    read_split,
)

STEP = 8  # bucket lengths: every multiple of this below seq_len, and seq_len
# An XLA training step compiles one program per batch shape: there, batches are padded up to a
# coarser grid of at most this many lengths (`compiled_width`). The plan stays the same.
XLA_WIDTHS = 8


def compiled_width(seq_len: int) -> int:
    """The grid XLA batches are padded to: the multiple of 8 that makes at most `XLA_WIDTHS`
    lengths up to seq_len (16 at seq_len 128: 16, 32, ..., 128)."""
    return max(STEP, -(-seq_len // XLA_WIDTHS // STEP) * STEP)


def bucket_lengths(seq_len: int, shortest: int = 0) -> list[int]:
    """The bucket lengths for `seq_len`: every multiple of 8 below it and seq_len itself, without
    those shorter than `shortest` (the shortest example), which no example would use; ascending."""
    out = {*range(STEP, seq_len, STEP), seq_len}
    return sorted(n for n in out if n >= shortest or n == seq_len)


def bucket_plan(
    lengths,
    buckets,
    batch_size: int,
    order=None,
    batch_order_seed=None,
    drop_remainder: bool = True,
) -> list[tuple[int, list[int]]]:
    """Batches `(bucket length, example indices)` of the examples in `order` (default: as
    given). Each example goes to the smallest bucket that holds it; each bucket's examples, in
    `order`, make batches of `batch_size`, its leftovers joining the next bucket (in `order`).
    The full batches come bucket by bucket, shortest first, or in an order drawn from
    `batch_order_seed`; the longest bucket's leftovers make a last partial batch after them
    unless `drop_remainder`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    buckets = sorted(int(b) for b in buckets)
    order = np.arange(len(lengths)) if order is None else np.asarray(order)
    if len(lengths) and lengths.max() > buckets[-1]:
        raise ValueError(f"an example of {lengths.max()} tokens exceeds the longest bucket")
    rank = np.empty(len(lengths), dtype=np.int64)
    rank[order] = np.arange(len(order))  # where each example comes in `order`
    which = np.searchsorted(buckets, lengths[order], side="left")  # smallest bucket that fits
    batches: list[tuple[int, list[int]]] = []
    carry: list[int] = []
    for b, length in enumerate(buckets):
        stream = sorted(carry + [int(i) for i in order[which == b]], key=lambda i: rank[i])
        full = len(stream) - len(stream) % batch_size
        batches += [(length, stream[s : s + batch_size]) for s in range(0, full, batch_size)]
        carry = stream[full:]
    if batch_order_seed is not None:
        shuffled = np.random.default_rng(batch_order_seed).permutation(len(batches))
        batches = [batches[i] for i in shuffled]
    if carry and not drop_remainder:
        batches.append((buckets[-1], carry))
    return batches


class BucketSplit:
    """One classifier split's examples, batched by length buckets anew for each epoch."""

    def __init__(self, folder: str, split: str, *, seq_len=None, tokenizer=None, stage=None):
        meta = read_metadata(folder)
        _check(meta, folder, seq_len, tokenizer)
        if meta["kind"] != CLASSIFIER:
            raise ValueError(f"{folder}: length buckets are for classifiers; {meta['task']} is not")
        self.seq_len = int(meta["seq_len"])
        ids, lengths, labels = [], [], []
        for block in read_split(folder, meta, split, stage):
            ids.append(block["input_ids"].astype(np.int32))
            lengths.append(block["length"])
            labels.append(block["label"].astype(np.int32))
        self.token_ids = np.concatenate(ids) if ids else np.zeros((0, self.seq_len), np.int32)
        self.lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, int)
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        shortest = int(self.lengths.min()) if len(self.lengths) else 0
        self.buckets = bucket_lengths(self.seq_len, shortest)

    def __len__(self) -> int:
        return len(self.lengths)

    def plan(
        self,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
    ) -> list[tuple[int, list[int]]]:
        """The batches of an epoch, `(length, example indices)`: the epoch's permutation (or the
        split's order when not `shuffle`) cut into buckets; the batches in a seeded order."""
        order = permutation(len(self), seed, epoch) if shuffle else None
        return bucket_plan(
            self.lengths,
            self.buckets,
            batch_size,
            order,
            batch_order_seed=[seed, epoch, 1],
            drop_remainder=drop_remainder,
        )

    def batch(self, length: int, indices) -> tuple[dict, np.ndarray, np.ndarray]:
        """numpy `(x, y, w)` of the examples `indices`, cropped to `length`."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and self.lengths[indices].max() > length:
            raise ValueError(f"cropping to {length} would cut real tokens")
        mask = np.arange(length)[None, :] < self.lengths[indices][:, None]
        x = {
            "token_ids": self.token_ids[indices, :length],
            "padding_mask": mask.astype(np.int32),
        }
        return x, self.labels[indices], np.ones(len(indices), np.float32)

    def dataset(self, plan, split_into: int = 1, width: int = STEP) -> tf.data.Dataset:
        """The planned batches as `(x, y, w)`, in the plan's order, each cut into `split_into`
        equal consecutive parts (the micro-batches of one optimizer step). The length dimension
        is left unknown, so one tf.function trace serves every bucket. `width`: each batch is
        padded up to a multiple of it (at most seq_len), which adds padding only (XLA steps pass
        `compiled_width`, for fewer shapes)."""
        parts = []
        for length, indices in plan:
            part = len(indices) // split_into
            parts += [(length, indices[k * part : (k + 1) * part]) for k in range(split_into)]
        # Runs of equal-sized parts, each one tensor: the full batches, then a partial one.
        runs: list[list] = []
        for p in parts:
            if runs and len(runs[-1][-1][1]) == len(p[1]):
                runs[-1].append(p)
            else:
                runs.append([p])
        datasets = []
        for run in runs:
            idx = np.array([list(ix) for _, ix in run], dtype=np.int64)
            datasets.append((idx, np.array([length for length, _ in run], np.int32)))
        if not datasets:  # an empty plan: no batches
            datasets.append((np.zeros((0, 0), np.int64), np.zeros(0, np.int32)))
        datasets = [
            tf.data.Dataset.from_tensor_slices(
                (
                    self.token_ids[idx],  # [parts, examples, seq_len]
                    self.lengths[idx].astype(np.int32),
                    lengths,
                    self.labels[idx],
                )
            )
            for idx, lengths in datasets
        ]
        ds = datasets[0]
        for more in datasets[1:]:  # (concatenate: the length dimensions become unknown)
            ds = ds.concatenate(more)

        def crop(ids, lengths, length, labels):
            length = tf.minimum(-(-length // width) * width, self.seq_len)
            mask = tf.range(length)[None, :] < lengths[:, None]
            x = {"token_ids": ids[:, :length], "padding_mask": tf.cast(mask, tf.int32)}
            return x, labels, tf.ones(tf.shape(labels), tf.float32)

        ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)


def load_bucketed(
    folder: str,
    split: str,
    batch_size: int,
    *,
    seq_len=None,
    tokenizer=None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
    stage=None,
) -> tf.data.Dataset:
    """`load_tfrecords` for a classifier split in length buckets: `(x, y, w)` batches of
    `batch_size` examples (one partial batch at most, unless `drop_remainder`)."""
    split_ = BucketSplit(folder, split, seq_len=seq_len, tokenizer=tokenizer, stage=stage)
    plan = split_.plan(batch_size, seed, epoch, shuffle=shuffle, drop_remainder=drop_remainder)
    return split_.dataset(plan)

"""Packing for LM tasks: several whole examples share one row of `seq_len`, so the compute goes to
real tokens rather than padding.

The prepared records stay one padded example each (`records.py`); packing happens where batches are
built. `PackedSplit` reads a split's real tokens once (only the real ones: the memory of its real
tokens, int32), and each epoch then:

1. draws a permutation of the split from `(seed, epoch)` (numpy's PCG64, the same on any machine);
2. packs it greedily, first fit: each example, in that order, goes to the first row with room for
   it, else opens a new row (`pack_plan`; an example is never split, and a row holds at most
   `seq_len` tokens);
3. builds the rows: `token_ids`, `padding_mask`, `segment_ids` (0 = padding, 1..k = the row's
   k-th example), the next-token labels and weights. An example's weights are those of its padded
   record, moved to where it sits: a weight on t exactly when token t+1 is one of its targets
   (after its prompt, before its end), so no target crosses a boundary and the last token of an
   example has none.

The rows are `(x, y, w)` batches like `load_tfrecords`'s, with `x["segment_ids"]` added, which the
model reads (`gpt2.input_positions_and_mask`): attention within each example, positions from 0.
The NLL sums over a packed batch are those of the same examples padded.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gpt2_tf.data.records import (
    CLASSIFIER,
    _check,
    read_metadata,
    read_split,
)


def permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of a split's examples, fixed by `seed`."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def pack_plan(lengths, seq_len: int, order=None) -> list[list[int]]:
    """First-fit packing of the examples in `order` (default: as given) into rows of `seq_len`:
    each row is the list of its examples' indices, in the order they were placed. Examples of
    length 0 have no tokens and no targets, and are left out."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.arange(len(lengths)) if order is None else np.asarray(order)
    if len(lengths) and lengths.max() > seq_len:
        raise ValueError(f"an example of {lengths.max()} tokens does not fit seq_len {seq_len}")
    room = np.empty(len(order), dtype=np.int64)  # free tokens of each open row
    rows: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        if n == 0:
            continue
        fits = np.flatnonzero(room[: len(rows)] >= n)
        if len(fits):
            r = int(fits[0])
        else:
            r = len(rows)
            rows.append([])
            room[r] = seq_len
        rows[r].append(int(i))
        room[r] -= n
    return rows


def pack_sequences(
    sequences: list[list[int]], width: int, pad_id: int = 0
) -> tuple[dict, list[tuple[int, int]]]:
    """Packs token sequences (in their order, first fit) into rows of `width` for a forward pass
    that attends within each sequence only: numpy model inputs `{"token_ids", "padding_mask",
    "segment_ids"}` [rows, width] and, per sequence, `(row, start)`, where its tokens begin.
    What the analyses use for many short texts (answer scoring, sentence embeddings): a
    sequence's hidden states are those it gets alone in a row of its own."""
    empty = [i for i, s in enumerate(sequences) if not len(s)]
    if empty:
        raise ValueError(f"sequence {empty[0]} is empty: each needs at least one token")
    rows = pack_plan([len(s) for s in sequences], width)
    ids = np.full((len(rows), width), pad_id, np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    where = [(0, 0)] * len(sequences)
    for r, members in enumerate(rows):
        at = 0
        for k, i in enumerate(members, start=1):
            n = len(sequences[i])
            ids[r, at : at + n], segments[r, at : at + n] = sequences[i], k
            where[i] = (r, at)
            at += n
    x = {"token_ids": ids, "padding_mask": (segments > 0).astype(np.int32), "segment_ids": segments}
    return x, where


class PackedSplit:
    """One LM split's examples, held as their real tokens, packed anew for each epoch."""

    def __init__(self, folder: str, split: str, *, seq_len=None, tokenizer=None, stage=None):
        meta = read_metadata(folder)
        _check(meta, folder, seq_len, tokenizer)
        if meta["kind"] == CLASSIFIER:
            raise ValueError(f"{folder}: packing is for LM tasks; {meta['task']} is a classifier")
        self.seq_len, self.pad_id = int(meta["seq_len"]), int(meta["pad_id"])
        tokens, lengths, prompts = [], [], []
        for block in read_split(folder, meta, split, stage):
            ids, length = block["input_ids"], block["length"]
            tokens += [row[:n].astype(np.int32) for row, n in zip(ids, length)]
            lengths.append(length)
            prompts.append(block["prompt_length"])
        self.lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, int)
        self.prompt_lengths = np.concatenate(prompts).astype(np.int64) if prompts else self.lengths
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.tokens = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def plan(self, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list[list[int]]:
        """The rows of an epoch: example indices, packed first fit in the epoch's permutation
        (or in the split's order when not `shuffle`)."""
        order = permutation(len(self), seed, epoch) if shuffle else None
        return pack_plan(self.lengths, self.seq_len, order)

    def rows(self, plan: list[list[int]]) -> tuple[dict, np.ndarray, np.ndarray]:
        """numpy `(x, y, w)` of the planned rows, each [rows, seq_len]."""
        shape = (len(plan), self.seq_len)
        ids = np.full(shape, self.pad_id, np.int32)
        labels = np.full(shape, self.pad_id, np.int32)
        segments = np.zeros(shape, np.int32)
        weights = np.zeros(shape, np.float32)
        for r, examples in enumerate(plan):
            at = 0
            for k, i in enumerate(examples, start=1):
                n, start = int(self.lengths[i]), int(self.offsets[i])
                ids[r, at : at + n] = self.tokens[start : start + n]
                labels[r, at : at + n - 1] = self.tokens[start + 1 : start + n]
                segments[r, at : at + n] = k
                # Position t carries loss when t+1 is a target: prompt_length <= t+1 < length.
                first = max(int(self.prompt_lengths[i]), 1) - 1
                weights[r, at + first : at + n - 1] = 1.0
                at += n
        x = {
            "token_ids": ids,
            "padding_mask": (segments > 0).astype(np.int32),
            "segment_ids": segments,
        }
        return x, labels, weights

    def dataset(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """The epoch's packed rows as `(x, y, w)` batches of `batch_size` rows."""
        x, y, w = self.rows(self.plan(seed, epoch, shuffle))
        ds = tf.data.Dataset.from_tensor_slices((x, y, w))
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def load_packed(
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
    """`load_tfrecords` for packed rows: `(x, y, w)` batches of `batch_size` packed rows."""
    packed = PackedSplit(folder, split, seq_len=seq_len, tokenizer=tokenizer, stage=stage)
    return packed.dataset(
        batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_remainder=drop_remainder
    )

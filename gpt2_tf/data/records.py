"""The TFRecord contract shared by every task: writing shards, `metadata.json`, and reading back.

Each example holds `input_ids` (int64 [seq_len], right-padded with the pad id), `length` (real
tokens), `source_index` (its raw row), and `prompt_length` (LM tasks: leading tokens with no loss)
or `label` (classifier tasks). Padding is known from `length` only: the pad id may be
`<|endoftext|>`.

`load_tfrecords` turns a split into `(x, y, sample_weight)` batches that Keras `fit` consumes:
`x = {"token_ids", "padding_mask"}`; LM tasks get `y` = the next token and a weight of 1 exactly on
positions whose next token is a target (after the prompt, before the padding); classifiers get the
label.
"""

from __future__ import annotations

import glob
import json
import os

import tensorflow as tf

METADATA = "metadata.json"
LM, CLASSIFIER = "lm", "classifier"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _int64(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def serialize(input_ids, length, source_index, prompt_length=None, label=None) -> bytes:
    features = {
        "input_ids": _int64(input_ids),
        "length": _int64([length]),
        "source_index": _int64([source_index]),
    }
    if label is not None:
        features["label"] = _int64([label])
    else:
        features["prompt_length"] = _int64([prompt_length or 0])
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # Features are a protobuf map: without `deterministic`, their order follows the process's
    # hash seed, and two preps of the same inputs differ byte for byte.
    return example.SerializeToString(deterministic=True)


class ShardedWriter:
    """Streams examples into `num_shards` files per split, round-robin, so memory stays flat."""

    def __init__(self, folder: str, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        self.folder, self.num_shards = folder, num_shards
        self._writers: dict[str, list[tf.io.TFRecordWriter]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def write(self, split: str, record: bytes, length: int) -> None:
        if split not in self._writers:
            self._writers[split] = [
                tf.io.TFRecordWriter(
                    os.path.join(self.folder, shard_name(split, i, self.num_shards))
                )
                for i in range(self.num_shards)
            ]
            self.counts[split] = {"examples": 0, "tokens": 0, "shards": self.num_shards}
        count = self.counts[split]
        self._writers[split][count["examples"] % self.num_shards].write(record)
        count["examples"] += 1
        count["tokens"] += int(length)

    def close(self) -> None:
        for writers in self._writers.values():
            for w in writers:
                w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metadata(folder: str) -> dict:
    path = os.path.join(folder, METADATA)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no {METADATA}; run the task's prep_dataset first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check(meta: dict, folder: str, seq_len, tokenizer) -> None:
    if seq_len is not None and meta["seq_len"] != seq_len:
        raise ValueError(
            f"{folder}: prepared with seq_len={meta['seq_len']}, the caller expects "
            f"seq_len={seq_len}; prepare again with --seq_len={seq_len}"
        )
    if tokenizer is not None:
        have, want = meta["tokenizer"]["sha256"], tokenizer.fingerprint
        if have != want:
            raise ValueError(
                f"{folder}: prepared with another tokenizer "
                f"({meta['tokenizer']['source']}, sha256 {have[:12]}…) than the "
                f"caller's ({tokenizer.source}, sha256 {want[:12]}…)"
            )


def _parse_fn(meta: dict):
    seq_len, kind = meta["seq_len"], meta["kind"]
    spec = {
        "input_ids": tf.io.FixedLenFeature([seq_len], tf.int64),
        "length": tf.io.FixedLenFeature([], tf.int64),
    }
    spec["label" if kind == CLASSIFIER else "prompt_length"] = tf.io.FixedLenFeature([], tf.int64)
    pad_id = meta["pad_id"]

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        ids = tf.cast(ex["input_ids"], tf.int32)  # [T]
        positions = tf.range(seq_len)
        x = {
            "token_ids": ids,
            "padding_mask": tf.cast(positions < tf.cast(ex["length"], tf.int32), tf.int32),
        }
        if kind == CLASSIFIER:
            return x, tf.cast(ex["label"], tf.int32), tf.constant(1.0)
        # Position t predicts token t+1; it carries loss when t+1 is a target token.
        y = tf.concat([ids[1:], [pad_id]], 0)
        start = tf.cast(ex["prompt_length"], tf.int32)
        end = tf.cast(ex["length"], tf.int32)
        weight = tf.logical_and(positions + 1 >= tf.maximum(start, 1), positions + 1 < end)
        return x, y, tf.cast(weight, tf.float32)

    return parse


def split_files(folder: str, split: str, stage: int | None = None) -> list[str]:
    pattern = f"{split}-stage{stage}-*.tfrecord" if stage else f"{split}-*.tfrecord"
    files = sorted(glob.glob(os.path.join(folder, pattern)))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no TFRecord files for split {split!r}"
            f"{f' stage {stage}' if stage else ''} ({pattern})"
        )
    return files


def read_split(folder: str, meta: dict, split: str, stage=None):
    """Yields a split's records in file-name order (so an example's index is fixed), parsed in
    blocks of 1,024 as numpy arrays: input_ids [n, seq_len], length, and label or prompt_length
    (what `packing` and `buckets` read a split with). A damaged shard is named."""
    field = "label" if meta["kind"] == CLASSIFIER else "prompt_length"
    spec = {
        "input_ids": tf.io.FixedLenFeature([int(meta["seq_len"])], tf.int64),
        "length": tf.io.FixedLenFeature([], tf.int64),
        field: tf.io.FixedLenFeature([], tf.int64),
    }
    try:
        for path in split_files(folder, split, stage):
            for record in tf.data.TFRecordDataset(path).batch(1024):
                yield {k: v.numpy() for k, v in tf.io.parse_example(record, spec).items()}
    except tf.errors.DataLossError as e:  # a damaged shard: say which, and what to do
        raise explain_data_loss(folder, e) from e


def split_examples(meta: dict, split: str, stage: int | None = None) -> int:
    """Examples in a split, from `metadata.json`: one stage of it, or all of its stages (staged
    text data names its training split's files `train-stage{k}-*`, which `train-*` matches)."""
    splits = meta["splits"]
    if stage:
        return splits[f"{split}-stage{stage}"]["examples"]
    return sum(
        c["examples"] for s, c in splits.items() if s == split or s.startswith(f"{split}-stage")
    )


def load_tfrecords(
    folder: str,
    split: str,
    batch_size: int,
    *,
    seq_len: int | None = None,
    tokenizer=None,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    stage: int | None = None,
) -> tf.data.Dataset:
    """`(x, y, sample_weight)` batches of one split; checks seq_len and tokenizer when given.

    `shuffle`: each pass is a uniform permutation of the whole split, fixed by `seed`. Prep
    writes a split in source order (alphabetical, for Wiktionary), and a shuffle window smaller
    than the split keeps the end of the file out of the start of every epoch. The window is the
    split, so its serialized records (the size of its TFRecord files) are held in memory while
    they are drawn: 5 MB for the 21,700 Wiktionary examples at 128 tokens.
    """
    meta = read_metadata(folder)
    _check(meta, folder, seq_len, tokenizer)
    files = split_files(folder, split, stage)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 4),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        window = max(split_examples(meta, split, stage), 1)
        ds = ds.shuffle(window, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(_parse_fn(meta), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def damaged_record_file(folder: str) -> tuple[str, str] | None:
    """(file, TensorFlow's words) of the first TFRecord file in `folder` that cannot be read
    to its end (cut short, or a record whose checksum fails), or None. Run after a
    `DataLossError`, which names no file."""
    for path in sorted(glob.glob(os.path.join(folder, "*.tfrecord"))):
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.DataLossError as e:
            return path, e.message.strip().splitlines()[0]
    return None


def explain_data_loss(folder: str, error: Exception) -> Exception:
    """The error to raise for a `DataLossError` while reading `folder`'s records."""
    found = damaged_record_file(folder)
    if found is None:
        return error
    path, why = found
    return OSError(
        f"{path}: the TFRecord file is damaged ({why}); run the task's prep_dataset again "
        "(with --overwrite) to write it anew"
    )


def split_prompts(folder: str, split: str, n: int) -> list[list[int]]:
    """The prompts (ids before the first target token) of a split's first `n` LM examples;
    for plain text, the first half of each example."""
    x, _, w = next(iter(load_tfrecords(folder, split, n)))
    prompts = []
    for ids, mask, weights in zip(x["token_ids"].numpy(), x["padding_mask"].numpy(), w.numpy()):
        first_target = int(weights.argmax()) + 1 if weights[0] == 0 and weights.any() else 0
        end = first_target or max(int(mask.sum()) // 2, 1)
        prompts.append(ids[:end].tolist())
    return prompts

"""absl flags shared by the pipelines, and the calls they make into the library.

A pipeline script defines its task's own flags, calls `define_prep_flags(...)` for the common
ones, and in `main` calls `run_prep(task, {...its options...})`. Every flag has a default and a
help string; nothing runs on import.
"""

from __future__ import annotations

import os

from absl import flags

FLAGS = flags.FLAGS


def define_prep_flags(task: str, seq_len: int) -> None:
    flags.DEFINE_string(
        "tokenizer",
        None,
        "Tokenizer folder or hub id (default: GPT-2's "
        "vocabulary: $GPT2_TF_TOKENIZER, ../shared/data/gpt2_tokenizer, or `gpt2`).",
    )
    flags.DEFINE_string("output_dir", os.path.join("tfrecords", task), "Output folder.")
    flags.DEFINE_integer("seq_len", seq_len, "Tokens per example (padded to this length).")
    flags.DEFINE_integer("seed", 0, "Seed of the split (and of --subsample).")
    flags.DEFINE_integer("num_shards", 1, "TFRecord shards per split.")
    flags.DEFINE_enum(
        "on_error",
        "raise",
        ["raise", "skip"],
        "Bad rows: stop with an error naming file, line and field, or skip and count.",
    )
    flags.DEFINE_boolean("overwrite", False, "Replace prepared data already in --output_dir.")


def prep_options(task_options: dict, **extra):
    from gpt2_tf.prep import PrepOptions

    return PrepOptions(
        output_dir=FLAGS.output_dir,
        seq_len=FLAGS.seq_len,
        seed=FLAGS.seed,
        num_shards=FLAGS.num_shards,
        on_error=FLAGS.on_error,
        overwrite=FLAGS.overwrite,
        task=task_options,
        **extra,
    )


def run_prep(task: str, task_options: dict, **extra) -> dict:
    """Runs `task`'s prep with the common flags; returns the metadata written."""
    from gpt2_tf.prep import prepare
    from gpt2_tf.tasks import get_task
    from gpt2_tf.tokenizer import GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(FLAGS.tokenizer)
    return prepare(get_task(task), tokenizer, prep_options(task_options, **extra))

"""Compare two GPT-2 checkpoints weight by weight: `make weight-diff A=folder B=folder`.

A and B are checkpoint folders (a trained `runs/<task>/final`, a pretrained base, a folder written
by `save_pretrained`, an OpenAI or keras-hub checkpoint). Prints a Markdown table and writes
weight_diff.csv, weight_diff.json, weight_diff.md and two heat maps into --output_dir.
"""

import os

from absl import app, flags

from gpt2_tf import cli
from gpt2_tf.core.run_folder import ANALYSIS

flags.DEFINE_string("a", None, "Checkpoint A, the reference (e.g. the base model).", required=True)
flags.DEFINE_string("b", None, "Checkpoint B (e.g. the fine-tuned model).", required=True)
flags.DEFINE_string(
    "output_dir", None, "Where the results go (default: <B>/../analysis/weight_diff)."
)
flags.DEFINE_enum(
    "metric",
    "relative",
    ["mean_abs", "max_abs", "std", "cosine", "euclidean", "relative"],
    "The metric of the blocks x weight-kinds heat map.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from gpt2_tf.analyses import weight_diff

    if not FLAGS.a or not FLAGS.b:
        raise app.UsageError("pass two checkpoint folders: --a and --b (make: A=... B=...)")
    diffs = weight_diff.compare_states(
        weight_diff.read_state(FLAGS.a), weight_diff.read_state(FLAGS.b), FLAGS.a, FLAGS.b
    )
    b = os.path.normpath(FLAGS.b)
    out = FLAGS.output_dir or os.path.join(os.path.dirname(b), ANALYSIS, "weight_diff")
    paths = weight_diff.write_report(diffs, out, FLAGS.a, FLAGS.b, FLAGS.metric)
    print(weight_diff.markdown_table(diffs))
    print(f"wrote {', '.join(os.path.basename(p) for p in paths.values())} to {out}")


if __name__ == "__main__":
    cli.run(main)

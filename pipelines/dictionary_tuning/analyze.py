"""Analyse a trained dictionary_tuning model on its test split: `make analyze-dictionary`.

Forward examples: generated vs reference definitions (cosine similarity of sentence embeddings).
Reverse examples: exact match and top-k accuracy of the generated word, and word-embedding cosine.
Writes metrics.json, examples.csv, word_pca.png and report.md into --output_dir.
"""

import os

from absl import flags

from gpt2_tf import cli
from gpt2_tf.core.run_folder import ANALYSIS, FINAL

flags.DEFINE_string(
    "model_dir", os.path.join("runs", "dictionary_tuning", FINAL), "A trained model folder."
)
flags.DEFINE_string(
    "data_dir", os.path.join("tfrecords", "dictionary_tuning"), "The prepared TFRecords."
)
flags.DEFINE_string("split", "test", "The split to analyse.")
flags.DEFINE_string(
    "output_dir", None, "Where the results go (default: <model_dir>/../analysis/dictionary)."
)
flags.DEFINE_integer("max_examples", 200, "Examples analysed, evenly spaced; 0 = the whole split.")
flags.DEFINE_integer("max_new_tokens", 48, "Tokens generated per definition (forward).")
flags.DEFINE_integer("word_tokens", 8, "Tokens generated per word (reverse).")
flags.DEFINE_integer("k", 5, "Reverse: candidates per definition (greedy + k-1 samples).")
flags.DEFINE_float("temperature", 1.0, "Reverse: sampling temperature of the candidates.")
flags.DEFINE_integer("top_k", 40, "Reverse: the candidates are sampled from this many tokens.")
flags.DEFINE_integer("batch_size", 32, "Prompts generated together.")
flags.DEFINE_enum(
    "embedder",
    "auto",
    ["auto", "minilm", "gpt2"],
    "Sentence embeddings: all-MiniLM-L6-v2 (auto: when installed), or the trained model's "
    "mean-pooled hidden states.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from gpt2_tf.analyses.dictionary import analyze, read_split
    from gpt2_tf.evaluation.metrics import get_embedder
    from gpt2_tf.serve.inference import load_trained

    model, tokenizer, _ = load_trained(FLAGS.model_dir)
    examples = read_split(FLAGS.data_dir, FLAGS.split, tokenizer, FLAGS.max_examples)
    embed = get_embedder(model, tokenizer, FLAGS.embedder, label=FLAGS.model_dir)
    out = FLAGS.output_dir or os.path.join(
        os.path.dirname(os.path.normpath(FLAGS.model_dir)), ANALYSIS, "dictionary"
    )
    title = f"Dictionary analysis of {FLAGS.model_dir} on {FLAGS.data_dir} ({FLAGS.split})"
    settings = {
        k: getattr(FLAGS, k)
        for k in ("max_new_tokens", "word_tokens", "k", "temperature", "top_k", "batch_size")
    }
    results = analyze(model, tokenizer, examples, embed, out, title, **settings)
    for direction in ("forward", "reverse"):
        summary = {k: v for k, v in results[direction].items() if k != "per_example"}
        print(direction, summary)
    print(f"wrote metrics.json, examples.csv, word_pca.png, report.md to {out}")


if __name__ == "__main__":
    cli.run(main)

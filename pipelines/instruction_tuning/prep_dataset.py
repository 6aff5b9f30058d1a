"""Prep instruction data (Dolly-15k format) into padded TFRecords: `make prep-dolly`."""

from absl import flags

from gpt2_tf import cli

flags.DEFINE_string(
    "input_jsonl",
    None,
    "Dolly-format JSONL (instruction, context, response, "
    "category). Default: databricks/databricks-dolly-15k from the hub when online, "
    "else the sample bundled with gpt2_tf.",
)
flags.DEFINE_list("categories", [], "Keep only these categories (comma-separated); all if empty.")
cli.define_prep_flags("instruction_tuning", seq_len=512)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.run_prep(
        "instruction_tuning", {"input_jsonl": FLAGS.input_jsonl, "categories": FLAGS.categories}
    )


if __name__ == "__main__":
    cli.run(main)

"""Prep Wiktionary senses into padded TFRecords (word <-> definition): `make prep-dictionary`."""

from absl import flags

from gpt2_tf import cli

flags.DEFINE_string(
    "input_jsonl",
    None,
    "Wiktionary senses, one JSON object a line: {word, pos, definition, examples[]}. Required: "
    "this task has no hub source (`make prep-dictionary` passes "
    "../shared/data/wiktionary/flat_senses.jsonl where it exists).",
)
flags.DEFINE_enum(
    "direction",
    "forward",
    ["forward", "reverse", "both"],
    "forward: word -> definition (+ example); reverse: definition -> word; both: one of each "
    "per sense.",
)
cli.define_prep_flags("dictionary_tuning", seq_len=128)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.run_prep(
        "dictionary_tuning", {"input_jsonl": FLAGS.input_jsonl, "direction": FLAGS.direction}
    )


if __name__ == "__main__":
    cli.run(main)

"""Prep GLUE RTE (premise, hypothesis, label) into padded TFRecords: `make prep-rte`."""

from absl import flags

from gpt2_tf import cli

flags.DEFINE_string(
    "input_dir",
    None,
    "GLUE RTE folder with train.tsv and dev.tsv. Default: "
    "tensorflow-datasets' glue/rte (downloaded when online).",
)
cli.define_prep_flags("entailment_tuning", seq_len=256)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.run_prep("entailment_tuning", {"input_dir": FLAGS.input_dir})


if __name__ == "__main__":
    cli.run(main)

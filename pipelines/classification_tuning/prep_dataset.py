"""Prep text classification data (emotion by default) into padded TFRecords: `make prep-emotion`."""

from absl import flags

from gpt2_tf import cli
from gpt2_tf.data.tasks import classification

flags.DEFINE_string(
    "input",
    None,
    "A folder with train.txt, val.txt, test.txt (`text;label` "
    "lines, splits kept), or one .jsonl/.csv file (split 80/10/10). Default: "
    "dair-ai/emotion from the hub when online.",
)
flags.DEFINE_string("text_field", "text", "Text field of a .jsonl/.csv --input.")
flags.DEFINE_string(
    "label_field", "label", "Label field (a name or an id) of a .jsonl/.csv --input."
)
flags.DEFINE_list(
    "label_names",
    [],
    "Label names in id order (comma-separated); default: "
    "emotion's " + ",".join(classification.LABELS) + ".",
)
cli.define_prep_flags("classification_tuning", seq_len=128)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    options = {
        "input": FLAGS.input,
        "text_field": FLAGS.text_field,
        "label_field": FLAGS.label_field,
        "label_names": FLAGS.label_names,
    }
    # --label_names changes the spec itself (metadata.json records its names and counts).
    cli.run_prep(classification.with_label_names(FLAGS.label_names), options)


if __name__ == "__main__":
    cli.run(main)

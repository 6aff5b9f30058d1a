"""Prep a plain corpus (.txt/.jsonl/.json) into packed TFRecord blocks: `make prep-text`."""

from absl import flags

from gpt2_tf import cli

flags.DEFINE_list(
    "text_files", None, "Files or folders (their .txt/.jsonl/.json files, sorted), comma-separated."
)
flags.DEFINE_string("text_field", "text", "The document's field in .jsonl files.")
flags.DEFINE_boolean(
    "txt_split_blank_lines",
    False,
    "In .txt files, each block between blank lines is a document (a lyrics file holding several "
    "songs); else the whole file is one.",
)
flags.DEFINE_float(
    "subsample", 1.0, "Keep this fraction of the documents (whole documents, seeded by --seed)."
)
flags.DEFINE_integer(
    "num_stages", 1, "Split the train documents into this many stages (train-stage1..N files)."
)
flags.mark_flag_as_required("text_files")
cli.define_prep_flags("text_tuning", seq_len=256)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    options = {
        "text_files": FLAGS.text_files,
        "text_field": FLAGS.text_field,
        "txt_split_blank_lines": FLAGS.txt_split_blank_lines,
    }
    cli.run_prep("text_tuning", options, subsample=FLAGS.subsample, num_stages=FLAGS.num_stages)


if __name__ == "__main__":
    cli.run(main)

"""Export a trained text_tuning model as a SavedModel for serving (make export-...)."""

from gpt2_tf import cli

cli.define_export_flags("text_tuning")


def main(argv):
    del argv
    cli.run_export()


if __name__ == "__main__":
    cli.run(main)

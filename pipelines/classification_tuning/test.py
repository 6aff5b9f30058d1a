"""Run a trained classification_tuning model on --prompt / --input_file inputs (make test-...)."""

from gpt2_tf import cli

cli.define_test_flags("classification_tuning")


def main(argv):
    del argv
    cli.run_test()


if __name__ == "__main__":
    cli.run(main)

"""Staged fine-tuning on text_tuning data prepared with --num_stages N (make staged-text): train on
stage 1..N in turn, each from the previous stage's weights, evaluating after each."""

from gpt2_tf import cli

cli.define_staged_flags()


def main(argv):
    del argv
    cli.run_staged()


if __name__ == "__main__":
    cli.run(main)

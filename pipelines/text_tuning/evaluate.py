"""Evaluate a trained text_tuning run beside its base model (make eval-...): metrics,
plots and report.md in <run>/eval."""

from gpt2_tf import cli

cli.define_eval_flags("text_tuning")


def main(argv):
    del argv
    cli.run_eval()


if __name__ == "__main__":
    cli.run(main)

"""Evaluate a trained entailment_tuning run beside its base model (make eval-...): metrics,
plots and report.md in <run>/eval."""

from gpt2_tf import cli, evaluation

evaluation.define_flags("entailment_tuning")


def main(argv):
    del argv
    evaluation.run_from_flags()


if __name__ == "__main__":
    cli.run(main)

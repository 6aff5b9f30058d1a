"""Evaluate a trained text_tuning run beside its base model (make eval-...): metrics,
plots and report.md in <run>/eval."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

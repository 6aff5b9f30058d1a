"""Run a trained text_tuning model on --prompt / --input_file inputs (make test-...)."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

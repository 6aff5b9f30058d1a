"""Export a trained text_tuning model as a SavedModel for serving (make export-...)."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

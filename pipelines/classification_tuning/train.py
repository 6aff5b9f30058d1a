"""Train the emotion classifier on prepared TFRecords (every setting is a flag)."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

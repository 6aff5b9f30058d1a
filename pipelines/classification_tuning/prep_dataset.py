"""Prep text classification data (emotion by default) into padded TFRecords: `make prep-emotion`."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

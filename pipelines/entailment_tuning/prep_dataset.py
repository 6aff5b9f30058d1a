"""Prep GLUE RTE (premise, hypothesis, label) into padded TFRecords: `make prep-rte`."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

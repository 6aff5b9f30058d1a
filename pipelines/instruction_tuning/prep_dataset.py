"""Prep instruction data (Dolly-15k format) into padded TFRecords: `make prep-dolly`."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

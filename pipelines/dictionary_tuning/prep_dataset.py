"""Prep Wiktionary senses into padded TFRecords (word <-> definition): `make prep-dictionary`."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

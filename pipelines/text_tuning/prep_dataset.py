"""Prep a plain corpus (.txt/.jsonl/.json) into packed TFRecord blocks: `make prep-text`."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

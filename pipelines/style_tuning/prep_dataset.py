"""Prep a chat log into padded TFRecords that teach one person's texting style: `make prep-chat`."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

"""Train on prepared instruction_tuning TFRecords: every setting is a flag (--flagfile works)."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

"""`python -m pipelines <verb> <task-or-alias> [flags]`: see pipelines/runner.py."""

from pipelines import runner

if __name__ == "__main__":
    runner.main()

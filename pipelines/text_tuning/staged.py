"""Staged fine-tuning on text_tuning data prepared with --num_stages N (make staged-text): train on
stage 1..N in turn, each from the previous stage's weights, evaluating after each."""

from pipelines import runner

if __name__ == "__main__":
    runner.shim(__spec__.name)

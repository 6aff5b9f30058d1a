"""Train on prepared text_tuning TFRecords: every setting is a flag (--flagfile works)."""

from gpt2_tf import cli

cli.define_train_flags("text_tuning", batch_size=8, learning_rate=5e-4)


def main(argv):
    del argv
    cli.run_train()


if __name__ == "__main__":
    cli.run(main)

"""Train the emotion classifier on prepared TFRecords (every setting is a flag)."""

from gpt2_tf import cli

cli.define_train_flags("classification_tuning", batch_size=32, learning_rate=5e-4)


def main(argv):
    del argv
    cli.run_train()


if __name__ == "__main__":
    cli.run(main)

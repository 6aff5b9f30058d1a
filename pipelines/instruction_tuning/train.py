"""Train on prepared instruction_tuning TFRecords: every setting is a flag (--flagfile works)."""

from gpt2_tf import cli

# 3 epochs, as instruction-tuning recipes use; the bundled sample is 64 training examples.
cli.define_train_flags("instruction_tuning", batch_size=8, learning_rate=5e-4, epochs=3)


def main(argv):
    del argv
    cli.run_train()


if __name__ == "__main__":
    cli.run(main)

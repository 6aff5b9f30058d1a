"""Train on prepared entailment_tuning TFRecords: every setting is a flag (--flagfile works)."""

from gpt2_tf import cli

# LoRA by default, as in the original RTE project.
cli.define_train_flags(
    "entailment_tuning", lora_rank=8, lora_alpha=16, learning_rate=1e-3, batch_size=16
)


def main(argv):
    del argv
    cli.run_train()


if __name__ == "__main__":
    cli.run(main)

"""A training run in its own process, for tests that need one: logical CPU devices must be set
before TensorFlow starts, multi-worker runs need one process per worker, and the resume test
kills a process hard. Usage: python -m tests.train_worker CONFIG_JSON WEIGHTS_NPZ [N_CPUS]
"""

import json
import sys


def main(config_path: str, weights_path: str, cpus: int = 1) -> None:
    import tensorflow as tf

    if cpus > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpus
        )
    import numpy as np

    from gpt2_tf.train.trainer import TrainConfig, Trainer

    with open(config_path, encoding="utf-8") as f:
        trainer = Trainer(TrainConfig(**json.load(f)))
    print("REPLICAS", trainer.replicas, flush=True)
    result = trainer.run()
    np.savez(weights_path, *[np.asarray(v) for v in trainer.model.trainable_variables])
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)

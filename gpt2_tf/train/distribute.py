"""One helper from a strategy name to a `tf.distribute` strategy (as in TF Model Garden).

`mirrored` spans every local GPU (or, with none, every logical CPU device, which is how the
tests run it); `multi_worker_mirrored` spans machines listed in `TF_CONFIG`; `auto` picks
`mirrored` with several GPUs and `one_device` otherwise.

One inter-op thread for one replica on CPU: each oneDNN matrix product already uses every core,
and two side by side oversubscribe them; on the 2-core benchmark machine a GPT-2 124M float32
training step went from 6.7 to 6.2 s.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def configure_cpu_threads(strategy: str, inter_op_threads: int = 0) -> None:
    """Sets TensorFlow's inter-op thread count; 0 = auto: 1 for one replica on a machine with no
    GPU, else TensorFlow's default.

    Why 1: see the module docstring. Must run before TensorFlow starts its runtime; after that
    it only logs that it could not.
    """
    if inter_op_threads == 0:
        cpu_only = not tf.config.list_physical_devices("GPU")
        if not (cpu_only and strategy in ("auto", "one_device")):
            return
        inter_op_threads = 1
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        if tf.config.threading.get_inter_op_parallelism_threads() != inter_op_threads:
            logging.info("inter-op threads not set: TensorFlow's runtime already started")


def _local_devices() -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def get_strategy(name: str = "auto", tpu_address: str = "") -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose among {list(STRATEGIES)}")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_local_devices()[0])
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(_local_devices())
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)

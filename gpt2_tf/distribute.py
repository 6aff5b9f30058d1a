"""One helper from a strategy name to a `tf.distribute` strategy (as in TF Model Garden).

`mirrored` spans every local GPU (or, with none, every logical CPU device, which is how the
tests run it); `multi_worker_mirrored` spans machines listed in `TF_CONFIG`; `auto` picks
`mirrored` with several GPUs and `one_device` otherwise.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


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

"""Where a gpt2_tf train step's time goes: one step under `tf.profiler`, summed per op type.

    python -m benchmarks.profile_step [float32|mixed_bfloat16] [lora_rank] [preset] [--memory]

Prints the step's wall time, then milliseconds and call counts per TensorFlow op type and the
slowest non-MatMul ops by name (the figures quoted in the closing note of issue 7). With
`--memory`, instead: the TensorFlow CPU allocator's peak above what stays resident (weights and
optimizer state) for the forward pass alone, forward plus gradients, and the whole step.
"""

from __future__ import annotations

import collections
import glob
import os
import sys
import tempfile
import time


def op_times(logdir: str) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(ms per op type, calls per op type, ms per op name) from a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_type, calls, by_name = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:  # the executor's threads; "Process" is the executor itself
            if not line.name.startswith(("tf_Compute", "tf_numa")):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if name.endswith("Process"):
                    continue
                kind = name.split(":")[-1]
                by_type[kind] += event.duration_ps / 1e9
                calls[kind] += 1
                by_name[name] += event.duration_ps / 1e9
    return by_type, calls, by_name


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import gpt2_tf  # noqa: F401  (first: it sets TensorFlow's oneDNN choice, as make bench's cases)

    # isort: split
    import tensorflow as tf

    from benchmarks.cases import _synthetic_lm_data
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    memory = "--memory" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--memory"]
    precision = args[0] if args else "float32"
    lora = int(args[1]) if len(args) > 1 else 0
    preset = args[2] if len(args) > 2 else "124M"
    data = _synthetic_lm_data(tempfile.mkdtemp(), 256, 4 * 8)
    trainer = Trainer(
        TrainConfig(
            data_dir=data,
            output_dir=tempfile.mkdtemp(),
            init_from=preset,
            batch_size=4,
            max_steps=6,
            precision=precision,
            lora_rank=lora,
            strategy="one_device",
            dropout=0.0,
            num_samples=0,
            clipnorm=1.0,
            weight_decay=0.01,
            packing=False,  # the padded step (full-length rows: packing adds only its mask)
        )
    )
    batches = iter(trainer._epoch_dataset(0, 0))
    for _ in range(2):  # trace and warm up
        float(trainer.step(batches)["loss"])
    if memory:
        return memory_peaks(trainer, batches)
    start = time.perf_counter()
    float(trainer.step(batches)["loss"])
    print(f"step: {time.perf_counter() - start:.2f} s")
    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    float(trainer.step(batches)["loss"])
    tf.profiler.experimental.stop()
    by_type, calls, by_name = op_times(logdir)
    print(f"op time under the profiler: {sum(by_type.values()):.0f} ms")
    for kind, ms in by_type.most_common(20):
        print(f"{ms:9.1f} ms {calls[kind]:5d}  {kind}")
    print("slowest ops other than MatMul:")
    others = [(k, v) for k, v in by_name.most_common() if "MatMul" not in k]
    for name, ms in others[:15]:
        print(f"{ms:9.1f} ms  {name[:120]}")


def memory_peaks(trainer, batches) -> None:
    """The allocator's peaks (`tf.config.experimental.get_memory_info`, which covers CPU too)
    for the phases of a step. The process's RSS adds TensorFlow's own ~0.8 GB to these."""
    import resource

    import tensorflow as tf

    batch = next(batches)
    forward = tf.function(lambda b: trainer.step.forward_sums(*b, training=True)[0])

    @tf.function
    def gradients(b):  # each gradient is summed away as it comes: none is held to the end
        return tf.add_n([tf.reduce_sum(g) for g in trainer.step.micro(b)[0]])

    phases = {
        "forward (training, no tape)": lambda: float(forward(batch)),
        "forward and gradients": lambda: float(gradients(batch)),
        "train step": lambda: float(trainer.step(batches)["loss"]),
    }
    for name, run in phases.items():
        run()
        tf.config.experimental.reset_memory_stats("CPU:0")
        resident = tf.config.experimental.get_memory_info("CPU:0")["current"]
        run()
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        print(f"{name}: peak {(peak - resident) / 2**20:,.0f} MB above {resident / 2**20:,.0f} MB")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()

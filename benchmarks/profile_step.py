"""Where a gpt2_tf train step's time goes: one step under `tf.profiler`, summed per op type.

    python -m benchmarks.profile_step [float32|mixed_bfloat16] [lora_rank] [preset]

Prints the step's wall time, then milliseconds and call counts per TensorFlow op type and the
slowest non-MatMul ops by name (the figures quoted in the closing note of issue 7).
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
    import tensorflow as tf

    from benchmarks.cases import _synthetic_lm_data
    from gpt2_tf.training import TrainConfig, Trainer

    precision = sys.argv[1] if len(sys.argv) > 1 else "float32"
    lora = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    preset = sys.argv[3] if len(sys.argv) > 3 else "124M"
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
        )
    )
    batches = iter(trainer._epoch_dataset(0, 0))
    for _ in range(2):  # trace and warm up
        float(trainer._train_step(batches)["loss"])
    start = time.perf_counter()
    float(trainer._train_step(batches)["loss"])
    print(f"step: {time.perf_counter() - start:.2f} s")
    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    float(trainer._train_step(batches)["loss"])
    tf.profiler.experimental.stop()
    by_type, calls, by_name = op_times(logdir)
    print(f"op time under the profiler: {sum(by_type.values()):.0f} ms")
    for kind, ms in by_type.most_common(20):
        print(f"{ms:9.1f} ms {calls[kind]:5d}  {kind}")
    print("slowest ops other than MatMul:")
    others = [(k, v) for k, v in by_name.most_common() if "MatMul" not in k]
    for name, ms in others[:15]:
        print(f"{ms:9.1f} ms  {name[:120]}")


if __name__ == "__main__":
    main()

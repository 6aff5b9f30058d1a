"""Where a train step's time goes, for gpt2_tf and for the bench's two peers: one step under a
profiler, summed per op type.

    python -m benchmarks.profile_step [float32|mixed_bfloat16] [lora_rank] [preset]
                                      [--system gpt2_tf|keras_hub|hf] [--memory]

The step is the one `make bench` times (`cases.train_step_*`: batch 4 x 256 tokens, AdamW,
clipping; LoRA on c_attn for gpt2_tf and Hugging Face's PEFT, keras-hub's own `enable_lora`).
gpt2_tf's and keras-hub's steps run under `tf.profiler`, Hugging Face's under `torch.profiler`.
keras-hub runs as in the bench, with TensorFlow's own oneDNN setting: gpt2_tf, which may turn
oneDNN on (`hardware.prefer_onednn`), is not imported in its process.

Prints the step's wall time (median of 3 after 2 warm-ups), the profiled step's op time split into
matrix products and the rest, ms and calls per op type, and the slowest other ops by name (the
figures quoted in the closing notes of issues 7 and 20). With `--memory` (gpt2_tf), instead: the
TensorFlow CPU allocator's peak above what stays resident (weights and optimizer state) for the
forward pass alone, forward plus gradients, and the whole step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import statistics
import tempfile
import time

SYSTEMS = ("gpt2_tf", "keras_hub", "hf")
# PyTorch's matrix products (self time: the autograd nodes and aten::linear / matmul that call
# them take little of their own). Attention's softmax-and-products kernel, where PyTorch picks
# it, counts with the rest.
TORCH_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def is_product(op_type: str) -> bool:
    """A matrix product: TensorFlow's MatMul ops (plain, batched, fused with a bias, oneDNN's
    `_Mkl*` forms) and Einsum (keras-hub's attention and projections), or PyTorch's
    `TORCH_PRODUCTS`."""
    return "MatMul" in op_type or op_type == "Einsum" or op_type in TORCH_PRODUCTS


def op_times(events) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(ms per op type, calls per op type, ms per op name) from a `tf.profiler` trace's events
    (`_trace_events`). An XLA program's events nest (the launch holds its fusions): each is
    counted under its own type."""
    by_type, calls, by_name = collections.Counter(), collections.Counter(), collections.Counter()
    for name, start, end in events:
        kind = name.split(":")[-1]
        by_type[kind] += end - start
        calls[kind] += 1
        by_name[name] += end - start
    return by_type, calls, by_name


def covered_ms(spans) -> float:
    """The time covered by (start, end) spans in ms, overlaps counted once: products running
    side by side on two threads (TensorFlow's default inter-op pool, as keras-hub runs) take
    their wall time, not the sum of theirs."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _trace_events(logdir: str):
    """(op name, start ms, end ms) of each op event on TensorFlow's executor threads in the
    `tf.profiler` trace under `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:  # the executor's threads; "Process" is the executor itself
            if not line.name.startswith(("tf_Compute", "tf_numa")):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if not name.endswith("Process"):
                    start = (line.timestamp_ns * 1000 + event.offset_ps) / 1e9
                    yield name, start, start + event.duration_ps / 1e9


def _profile_tensorflow(step) -> tuple:
    """(wall s, product spans in ms, ms and calls per op type, ms per op name) of one step."""
    import tensorflow as tf

    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    step()
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    events = list(_trace_events(logdir))  # the trace file read and parsed once
    by_type, calls, by_name = op_times(events)
    products = [(s, e) for name, s, e in events if is_product(name.split(":")[-1])]
    return wall, products, by_type, calls, by_name


def _profile_torch(step) -> tuple:
    """`_profile_tensorflow`'s figures, from `torch.profiler`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    by_type, calls = collections.Counter(), collections.Counter()
    for event in prof.key_averages():  # self times: each op's own, without the ops it calls
        by_type[event.key] += event.self_cpu_time_total / 1e3
        calls[event.key] += event.count
    products = [
        (e.time_range.start / 1e3, e.time_range.end / 1e3)
        for e in prof.events()
        if e.name in TORCH_PRODUCTS
    ]
    return wall, products, by_type, calls, by_type  # PyTorch's ops by name: by type


def profile(
    system: str,
    precision: str = "float32",
    lora_rank: int = 0,
    preset: str = "124M",
    steps: int = 3,
) -> dict:
    """One system's bench training step: `step_s` (median wall time of `steps` steps after two
    warm-ups), then one step under the profiler: its wall time `profiled_s`, the part of it in
    which a matrix product ran `product_ms` (`is_product`, `covered_ms`), and ms / calls per op
    type (`by_type`, `calls`) and ms per op name (`by_name`; PyTorch's: per op type)."""
    from benchmarks import cases

    if system not in SYSTEMS:
        raise ValueError(f"--system {system!r}: choose among {', '.join(SYSTEMS)}")
    a = dict(batch=4, lora_rank=lora_rank, precision=precision, **cases.row_size(preset))
    if system == "gpt2_tf":
        step, _, _ = cases.train_step_ours(a, steps + 3)
    else:
        step = getattr(cases, f"train_step_{system}")(a)
    for _ in range(2):  # trace (or first-call set-up) and warm up
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    wall, products, by_type, calls, by_name = (
        _profile_torch if system == "hf" else _profile_tensorflow
    )(step)
    return dict(
        step_s=statistics.median(times),
        step_times=times,
        profiled_s=wall,
        product_ms=covered_ms(products),
        by_type=by_type,
        calls=calls,
        by_name=by_name,
    )


def report(system: str, setting: str, p: dict) -> None:
    times = ", ".join(f"{t:.2f}" for t in p["step_times"])
    print(f"{system}, {setting}: step {p['step_s']:.2f} s (median of {times})")
    wall = p["profiled_s"] * 1e3
    print(
        f"profiled step {wall:,.0f} ms: matrix products {p['product_ms']:,.0f} ms "
        f"({p['product_ms'] / wall:.0%}), the rest {wall - p['product_ms']:,.0f} ms"
    )
    for kind, ms in p["by_type"].most_common(20):
        print(f"{ms:9.1f} ms {p['calls'][kind]:5d}  {kind}")
    print("slowest ops other than matrix products:")

    def product(name):  # TensorFlow's names end in ":<op type>"; PyTorch's are its types
        return is_product(name) or is_product(name.split(":")[-1])

    others = [(k, v) for k, v in p["by_name"].most_common() if not product(k)]
    for name, ms in others[:15]:
        print(f"{ms:9.1f} ms  {name[:120]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precision", nargs="?", default="float32")
    parser.add_argument("lora_rank", nargs="?", type=int, default=0)
    parser.add_argument("preset", nargs="?", default="124M")
    parser.add_argument("--system", default="gpt2_tf", choices=SYSTEMS)
    parser.add_argument("--memory", action="store_true", help="gpt2_tf's allocator peaks")
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if opts.system == "gpt2_tf":
        import gpt2_tf  # noqa: F401  (first: it sets TensorFlow's oneDNN choice, as the bench's)
    if opts.memory:
        if opts.system != "gpt2_tf":
            parser.error("--memory reads gpt2_tf's allocator: use it with --system gpt2_tf")
        return memory_peaks(opts.precision, opts.lora_rank, opts.preset)
    lora = f"LoRA r{opts.lora_rank}" if opts.lora_rank else "full"
    p = profile(opts.system, opts.precision, opts.lora_rank, opts.preset)
    report(opts.system, f"{lora}, {opts.precision}, {opts.preset}", p)


def memory_peaks(precision: str, lora_rank: int, preset: str) -> None:
    """The allocator's peaks (`tf.config.experimental.get_memory_info`, which covers CPU too)
    for the phases of a step. The process's RSS adds TensorFlow's own ~0.8 GB to these."""
    import resource

    import tensorflow as tf

    from benchmarks import cases

    a = dict(batch=4, lora_rank=lora_rank, precision=precision, **cases.row_size(preset))
    step, trainer, batches = cases.train_step_ours(a, 8)
    for _ in range(2):  # trace and warm up
        step()
    batch = next(batches)
    forward = tf.function(lambda b: trainer.step.forward_sums(*b, training=True)[0])

    @tf.function
    def gradients(b):  # each gradient is summed away as it comes: none is held to the end
        return tf.add_n([tf.reduce_sum(g) for g in trainer.step.micro(b)[0]])

    phases = {
        "forward (training, no tape)": lambda: float(forward(batch)),
        "forward and gradients": lambda: float(gradients(batch)),
        "train step": step,
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

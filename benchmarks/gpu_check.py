"""`make gpu-check`: gpt2_tf on this machine's GPUs, in under 10 minutes, as one table.

    python -m benchmarks.gpu_check [--cpu] [--quick]

1. **tests**: the parity and training tests (weights and logits against Hugging Face, the speed
   paths against the plain model, the XLA step against the graph step, training, generation) with
   TensorFlow on the GPU (TF32 off and deterministic ops on, as tests/conftest.py sets them).
2. **mirrored**: one training run over every visible GPU (`--strategy=mirrored`), GPT-2 124M from
   random weights on the bundled instruction sample, `--precision=auto` and `--jit_compile=auto`.
3. **throughput**: 124M training tokens/s on one GPU at batch 8 x 1024 in bfloat16 (float32 where
   the GPU has no bfloat16), and its model-FLOPs utilisation: 6 x parameters x tokens/s over the
   GPU's bfloat16 dense peak (a table of known GPUs) and over its measured matmul rate.
4. **generation**: greedy decoding, 124M, batch 1 and 8, new tokens/s.
5. **export**: a SavedModel (strings in, strings out) written, loaded and run; its greedy output
   equals `generate`'s.

Each check runs in its own process with its own time limit, so one failure or hang leaves the
others' rows. With no GPU visible it says so and exits 0. `--cpu` runs the same checks on the CPU
with a tiny model (`--quick`: two of the tests in one process, the other four checks in one
more), which is how tests/test_gpu_check.py checks the script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = [
    "tests/test_weights.py",
    "tests/test_model.py",
    "tests/test_speed_paths.py",
    "tests/test_train_step.py",
    "tests/test_training.py",
    "tests/test_generation.py",
]
# --quick (the CPU dry run that `make test` makes): that pytest runs at all, in one process.
QUICK_TESTS = [
    "tests/test_model.py::test_cached_decoding_equals_full_forward",
    "tests/test_train_step.py::test_auto_chooses_by_device",
]
# bfloat16 dense tensor-core peaks (FLOP/s, no sparsity) by a name the GPU reports.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "RTX A6000": 155e12,
}
LIMITS = {"tests": 300, "mirrored": 150, "throughput": 150, "generation": 90, "export": 120}


def peak_bf16(name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # longest names first within a family (dict order)
        if key in name:
            return value
    return None


# ---- the checks, each run in a child process (python -m benchmarks.gpu_check --child NAME) ----
def _device_setup(cpu: bool):
    if cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Before any check imports TensorFlow: gpt2_tf makes its oneDNN choice then, as in every
    # gpt2_tf process (loaded after TensorFlow, an AVX2-only CPU kept oneDNN off and
    # --jit_compile=auto chose XLA).
    import gpt2_tf  # noqa: F401


def check_mirrored(cpu: bool, quick: bool) -> dict:
    import tempfile

    import tensorflow as tf

    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.tasks import get_task
    from gpt2_tf.data.tasks.instruction import BUNDLED
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    gpus = len(tf.config.list_physical_devices("GPU"))
    data = tempfile.mkdtemp()
    options = PrepOptions(data, 1024, task={"input_jsonl": BUNDLED})  # offline: the sample
    prepare(get_task("dolly"), GPT2Tokenizer.from_pretrained(), options)
    cfg = TrainConfig(
        data_dir=data,
        output_dir=tempfile.mkdtemp(),
        init_from="tiny" if cpu else "124M",
        batch_size=2 * max(gpus, 1),
        max_steps=6 if cpu else 20,
        learning_rate=3e-4,
        strategy="mirrored" if gpus else "one_device",
        num_samples=0,
        log_every=2,
        eval_batches=2,
    )
    start = time.monotonic()
    trainer = Trainer(cfg)
    result = trainer.run()
    return {
        "replicas": trainer.replicas,
        "precision": trainer.cfg.precision,
        "jit_compile": trainer.cfg.jit_compile,
        "steps": result["steps"],
        "train_loss": result["train"]["loss"],
        "val_loss": result["validation"]["loss"],
        "real_tokens_per_second": result["train"]["tokens_per_second"],
        "seconds": time.monotonic() - start,
    }


def check_throughput(cpu: bool, quick: bool) -> dict:
    import statistics
    import tempfile

    import tensorflow as tf

    from benchmarks.cases import _synthetic_lm_data
    from gpt2_tf.core.hardware import bfloat16_support
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    gpus = tf.config.list_physical_devices("GPU")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "") if gpus else ""
    bf16, _ = bfloat16_support()
    precision = "mixed_bfloat16" if bf16 else "float32"
    batch, seq_len = (2, 64) if cpu else (8, 1024)
    steps = 3 if cpu else 8
    data = _synthetic_lm_data(tempfile.mkdtemp(), seq_len, batch * (steps + 3))
    trainer = Trainer(
        TrainConfig(
            data_dir=data,
            output_dir=tempfile.mkdtemp(),
            init_from="tiny" if cpu else "124M",
            batch_size=batch,
            max_steps=steps + 2,
            precision=precision,
            strategy="one_device",
            dropout=0.0,
            num_samples=0,
            packing=False,  # full-length rows: every position is a real token
        )
    )
    iterator = iter(trainer._epoch_dataset(0, 0))
    for _ in range(2):  # compile and warm up
        float(trainer.step(iterator)["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(trainer.step(iterator)["loss"])
        times.append(time.perf_counter() - start)
    tokens_per_second = batch * seq_len / statistics.median(times)
    flops = 6 * trainer.model.count_params() * tokens_per_second
    n = 1024 if cpu else 8192
    dtype = tf.bfloat16 if bf16 else tf.float32
    x = tf.cast(tf.random.normal([n, n]), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(x, x)[:1, :1], tf.float32)))
    float(product())
    start = time.perf_counter()
    for _ in range(5):
        float(product())
    rate = 5 * 2 * n**3 / (time.perf_counter() - start)
    peak = peak_bf16(name) if bf16 else None
    return {
        "device": name or "CPU",
        "precision": precision,
        "jit_compile": trainer.cfg.jit_compile,
        "tokens_per_second": tokens_per_second,
        "mfu_of_peak": flops / peak if peak else None,
        "peak_flops": peak,
        "mfu_of_measured_matmul": flops / rate,
        "matmul_flops": rate,
    }


def check_generation(cpu: bool, quick: bool) -> dict:
    import statistics

    import keras
    import numpy as np

    from gpt2_tf import GPT2Config, GPT2LanguageModel

    keras.utils.set_random_seed(0)
    model = GPT2LanguageModel(GPT2Config.from_preset("tiny" if cpu else "124M"))
    out = {}
    for batch in (1, 8):
        prompts = np.random.default_rng(0).integers(0, 50000, (batch, 32)).tolist()
        new = 16 if cpu else 128

        def run(prompts=prompts, new=new):
            return model.generate(prompts, new, stop_token_ids=())

        run()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        out[f"batch_{batch}_new_tokens_per_second"] = batch * new / statistics.median(times)
    return out


def check_export(cpu: bool, quick: bool) -> dict:
    import tempfile

    import keras
    import tensorflow as tf

    from gpt2_tf import GPT2Config, GPT2LanguageModel, GPT2Tokenizer
    from gpt2_tf.serve.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = GPT2LanguageModel(GPT2Config.from_preset("tiny"))
    tok = GPT2Tokenizer.from_pretrained()
    start = time.monotonic()
    path = export_saved_model(model, tok, tempfile.mkdtemp(), version=1)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    prompts = ["The capital of France is", "Once upon a time"]
    got = serve(
        prompts=tf.constant(prompts),
        max_new_tokens=tf.constant(8),
        temperature=tf.constant(0.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
    )
    texts = [t.decode("utf-8") for t in got["outputs"].numpy()]
    want = model.generate(prompts, 8, tokenizer=tok)
    return {"seconds": time.monotonic() - start, "equals_generate": texts == want, "path": path}


CHECKS = {
    "mirrored": check_mirrored,
    "throughput": check_throughput,
    "generation": check_generation,
    "export": check_export,
}


# ---- the parent: runs each check in a child, prints the table ---------------------------------
def visible_gpus() -> list[str]:
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(g).get("device_name", g.name)
        for g in tf.config.list_physical_devices("GPU")
    ]


def _children(names: list[str], cpu: bool, quick: bool) -> dict[str, dict]:
    """Runs the checks `names` in one child process, in turn, under the sum of their limits:
    {name: its result, or {"error": why}}. The child prints one `RESULT name {json}` line per
    check as it finishes, so a failure or a hang keeps the rows already done."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", ",".join(names)]
    cmd += ["--cpu"] * cpu + ["--quick"] * quick
    limit = sum(LIMITS[name] for name in names)
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=_env(cpu)
        )
        stdout, why = proc.stdout, None
    except subprocess.TimeoutExpired as stopped:
        stdout, why = _text(stopped.stdout), f"stopped after {limit} s"
    results = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            name, _, result = line[7:].partition(" ")
            results[name] = json.loads(result)
    if why is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        why = tail[0][:300]
    return {name: results.get(name, {"error": why}) for name in names}


def _text(out) -> str:
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else out or ""


def _env(cpu: bool) -> dict:
    env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_tests(cpu: bool, quick: bool) -> dict:
    workers = "0" if quick else "2"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers]
    cmd += QUICK_TESTS if quick else TESTS
    if not quick:  # separate processes that start CPU devices of their own
        cmd += ["-k", "not sigkill and not multi_worker and not mirrored_equals"]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=LIMITS["tests"], env=_env(cpu)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {LIMITS['tests']} s"}
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    out = {"summary": summary, "wall_s": time.monotonic() - start}
    if proc.returncode:
        out["error"] = summary
    return out


def _row(name: str, r: dict) -> tuple[str, str]:
    if "error" in r:
        return "FAILED", r["error"]
    if name == "tests":
        return "ok", r["summary"]
    if name == "mirrored":
        return "ok", (
            f"{r['replicas']} replica(s), {r['precision']}, XLA {r['jit_compile']}: "
            f"{r['steps']} steps, train loss {r['train_loss']:.3f}, validation loss "
            f"{r['val_loss']:.3f}, {r['real_tokens_per_second']:,.0f} real tokens/s"
        )
    if name == "throughput":
        peak = (
            f"{100 * r['mfu_of_peak']:.1f}% of the {r['peak_flops'] / 1e12:.0f} TFLOP/s peak"
            if r["mfu_of_peak"]
            else "no peak known for this device"
        )
        return "ok", (
            f"{r['device']}, {r['precision']}, XLA {r['jit_compile']}: "
            f"{r['tokens_per_second']:,.0f} tokens/s; MFU {peak}, "
            f"{100 * r['mfu_of_measured_matmul']:.1f}% of its measured matmul rate "
            f"({r['matmul_flops'] / 1e12:.1f} TFLOP/s)"
        )
    if name == "generation":
        return "ok", (
            f"batch 1: {r['batch_1_new_tokens_per_second']:,.1f}, batch 8: "
            f"{r['batch_8_new_tokens_per_second']:,.1f} new tokens/s"
        )
    status = "ok" if r["equals_generate"] else "FAILED"
    return status, f"written, loaded and run in {r['seconds']:.0f} s; equals generate(): " + str(
        r["equals_generate"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU, tiny sizes")
    parser.add_argument("--quick", action="store_true", help="fewer tests")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        _device_setup(opts.cpu)
        for name in opts.child.split(","):
            result = json.dumps(CHECKS[name](opts.cpu, opts.quick))
            print(f"RESULT {name} {result}", flush=True)
        return 0
    if opts.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    gpus = visible_gpus()
    if not gpus and not opts.cpu:
        print(
            "gpu-check: no GPU is visible to TensorFlow (tf.config.list_physical_devices('GPU') "
            "is empty), so there is nothing to check. On a GPU machine: the NVIDIA driver "
            "(nvidia-smi), and TensorFlow's CUDA libraries (pip install -e '.[gpu]', which "
            "make gpu-check does where nvidia-smi exists)."
        )
        return 0
    where = ", ".join(gpus) if gpus else "CPU (--cpu)"
    print(f"gpu-check on {where}", flush=True)
    start, rows = time.monotonic(), []

    def report(results: dict[str, dict]) -> None:
        for name, result in results.items():
            status, text = _row(name, result)
            rows.append((name, status, text))
            print(f"  {name}: {status}: {text}", flush=True)

    report({"tests": run_tests(opts.cpu, opts.quick)})
    # Each check in a child of its own; --quick runs the four in one child (the CPU dry run: one
    # TensorFlow start-up instead of four).
    for group in [list(CHECKS)] if opts.quick else [[name] for name in CHECKS]:
        report(_children(group, opts.cpu, opts.quick))
    print()
    print("| check | result | figures |")
    print("|---|---|---|")
    for name, status, text in rows:
        print(f"| {name} | {status} | {text} |")
    print(f"\nwall time {time.monotonic() - start:.0f} s")
    return 0 if all(status == "ok" for _, status, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

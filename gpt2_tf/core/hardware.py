"""What this machine can do, read in one place: bfloat16 hardware, oneDNN, GPUs, TPUs.

`--precision=auto` and `--jit_compile=auto` (every `train.py`), generation's XLA choice and the
rows of `make bench` come from here, so a speed path is chosen by what the machine has rather
than assumed. bfloat16 pays where the device does it natively: GPUs of compute capability 8.0 or
later, TPUs, and CPUs with AMX-BF16 or AVX512-BF16 when TensorFlow runs its oneDNN kernels.
Elsewhere it is emulated and slower than float32 (measured on an AVX2-only AMD EPYC: 52 against 72
tokens/s, GPT-2 124M training).
"""

from __future__ import annotations

import functools
import os
import platform

from absl import logging

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Why oneDNN is on or off in this process, once `prefer_onednn` has run (see `describe_cpu`).
_onednn_reason = "TensorFlow's default"
REPORTED_CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512f", "avx512_bf16", "avx512_vnni", "avx2")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels. TensorFlow turns them on by default on
    Linux x86 CPUs with AVX-512 VNNI or BF16, AVX-VNNI or AMX; `TF_ENABLE_ONEDNN_OPTS` overrides."""
    try:  # TensorFlow's own answer (a private module, read nowhere else)
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        if setting is not None:
            return setting.strip().lower() in ("1", "true")
        wanted = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"}
        return platform.system() == "Linux" and bool(wanted & cpu_flags())


def onednn_uses_amx() -> bool:
    """Whether TensorFlow's oneDNN kernels run on AMX tiles here (oneDNN on, AMX-BF16 present):
    the speed paths whose measurements came from AMX pick their shapes by it."""
    return onednn_enabled() and "amx_bf16" in cpu_flags()


def prefer_onednn() -> str:
    """Turns TensorFlow's oneDNN kernels on for an x86-64 CPU with AVX2 and FMA, unless
    `TF_ENABLE_ONEDNN_OPTS` is set (the user's choice stands) or TensorFlow is already loaded
    (then nothing can change). Returns why oneDNN is on or off.

    TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI or BF16, AVX-VNNI or
    AMX, and leaves AVX2-only CPUs (AMD EPYC up to Zen 3, older Xeons) to its plain kernels.
    Measured on such a CPU (`make bench`'s AVX2-only rows; GPT-2 124M, batch 4 x 256, float32),
    oneDNN's kernels ran the training step 1.8x (full) and 2.0x (LoRA) as fast, its matrix
    products at 184 against 151 GFLOP/s, and greedy generation 1.06-1.09x. bfloat16 there still
    runs TensorFlow's own kernels: oneDNN has none for AVX2."""
    global _onednn_reason
    import sys

    if ONEDNN_ENV in os.environ:
        _onednn_reason = f"{ONEDNN_ENV}={os.environ[ONEDNN_ENV]} (set before gpt2_tf loaded)"
    elif "tensorflow" in sys.modules:
        _onednn_reason = "TensorFlow's default (it loaded before gpt2_tf)"
    elif platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= cpu_flags():
        os.environ[ONEDNN_ENV] = "1"
        _onednn_reason = "turned on by gpt2_tf (x86-64 with AVX2: faster float32 training)"
    return _onednn_reason


M_TOP_PAD = -2  # glibc's mallopt parameter number (malloc.h)
HEAP_TOP_PAD = 64 << 20
_heap_reason = "glibc's default"


def keep_freed_heap(pad: int = HEAP_TOP_PAD) -> str:
    """Has glibc keep up to `pad` bytes free at the top of each heap, and start each thread's
    heap with that much room, so that large short-lived buffers reuse memory instead of mapping
    fresh pages. Leaves glibc alone where `MALLOC_TOP_PAD_` is set (the user's choice stands) and
    off glibc. Returns what it did.

    Why: on Python 3.11 TensorFlow's generator dataset kernel (`Dataset.from_generator`, and the
    trainer's input pipeline builds one too) fixes glibc's mmap threshold at 128 KB for the whole
    process (`mallopt(M_MMAP_THRESHOLD)` in `ApplyPython311MemoryPatch`, seen in gdb). From then
    on every allocation above 128 KB that the heap cannot serve is a fresh mmap, freed with
    munmap: oneDNN's packing buffers (0.6-1.5 MB per thread, per matrix product) above all.
    Each GPT-2 124M training step (batch 4 x 256, AMD EPYC Zen 4, 2 cores) then faulted in 108 MB
    of zeroed pages (27,600 faults) in LoRA bfloat16 and 387 MB (99,000) in full float32, about
    4% of its CPU time in the kernel. With the pad: no faults; steps 3.3% (LoRA bfloat16), 2.5%
    (full bfloat16) and 3.5% (full float32) faster, as the median ratio of steps alternating
    between two processes; peak RSS 30-50 MB lower in bfloat16, level in float32. Runs when
    gpt2_tf is imported: a thread's heap made before keeps its small size."""
    global _heap_reason
    import ctypes

    if "MALLOC_TOP_PAD_" in os.environ:
        _heap_reason = f"MALLOC_TOP_PAD_={os.environ['MALLOC_TOP_PAD_']} (set by the user)"
    elif platform.libc_ver()[0] != "glibc":
        _heap_reason = "not glibc: left alone"
    elif not ctypes.CDLL(None).mallopt(M_TOP_PAD, pad):
        _heap_reason = "glibc refused mallopt(M_TOP_PAD): left alone"
    else:
        _heap_reason = f"glibc keeps {pad >> 20} MB free atop each heap (set by gpt2_tf)"
    return _heap_reason


def describe_cpu() -> str:
    """One line: the CPU model, its AMX / AVX-512 flags, whether oneDNN is on, and what
    `keep_freed_heap` did."""
    flags = cpu_flags()
    shown = [f for f in REPORTED_CPU_FLAGS if f in flags] or ["none of AMX, AVX-512, AVX2"]
    onednn = "on" if onednn_enabled() else "off"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores; {', '.join(shown)}; "
        f"TensorFlow oneDNN {onednn} ({_onednn_reason}); heap: {_heap_reason}"
    )


def _gpu_capabilities() -> list[tuple[int, int] | None]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # does not start TensorFlow's runtime
    return [tf.config.experimental.get_device_details(g).get("compute_capability") for g in gpus]


def bfloat16_support(strategy: str = "auto") -> tuple[bool, str]:
    """(whether bfloat16 is native on the device training will use, why)."""
    if strategy == "tpu":
        return True, "TPUs compute in bfloat16 natively"
    capabilities = _gpu_capabilities()
    if capabilities:
        if all(cc is not None and tuple(cc) >= (8, 0) for cc in capabilities):
            return True, f"GPU compute capability {capabilities[0]} (8.0 or later: bfloat16 cores)"
        return False, f"GPU compute capability {capabilities} (below 8.0: no bfloat16 cores)"
    native = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
    if not native:
        return False, f"the CPU ({cpu_model()}) has neither AMX-BF16 nor AVX512-BF16"
    if not onednn_enabled():
        return False, (
            f"the CPU has {' and '.join(native)}, but TensorFlow's oneDNN is off "
            "(TF_ENABLE_ONEDNN_OPTS=0), and its plain kernels emulate bfloat16"
        )
    return True, f"the CPU ({cpu_model()}) has {' and '.join(native)} and TensorFlow runs oneDNN"


def resolve_precision(requested: str, strategy: str = "auto") -> tuple[str, str]:
    """`auto` -> `mixed_bfloat16` where bfloat16 is native, else `float32`; any other value is
    kept. Returns (Keras dtype policy, why), and logs the choice for `auto`."""
    if requested != "auto":
        return requested, "set explicitly"
    native, why = bfloat16_support(strategy)
    precision = "mixed_bfloat16" if native else "float32"
    logging.info("--precision=auto chose %s: %s", precision, why)
    return precision, why


JIT_CHOICES = ("auto", "true", "false")


def resolve_jit_compile(
    requested: str, strategy: str = "auto", precision: str = "float32", replicas: int = 1
) -> tuple[bool, str]:
    """Whether the training step runs as one XLA program (`train/step.py`), and why.

    `auto`: XLA on GPUs and TPUs, and on CPUs where TensorFlow runs without oneDNN; the graph
    step where it runs oneDNN. Measured (GPT-2 124M, batch 4 x 256, tokens/s, graph / XLA): on
    an Intel Xeon with AMX, float32 253 / 231, LoRA 380 / 322, bfloat16 483 / 220; on an
    AVX2-only CPU (emulated) with oneDNN 183 / 149 full and 273 / 231 LoRA, and without
    oneDNN 101 / 149 and 134 / 231 (XLA's XNNPACK products outrun TensorFlow's plain ones).
    Never for `mixed_float16` (its loss-scale optimizer merges across replicas) nor for several
    replicas on one CPU (XLA cannot place a replica on a second logical CPU device)."""
    if requested not in JIT_CHOICES:
        raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {requested!r}")
    blocked = None
    if precision == "mixed_float16":
        blocked = "mixed_float16's loss-scale optimizer needs the graph step"
    elif strategy == "mirrored" and replicas > 1 and not _gpu_capabilities():
        blocked = "XLA cannot place replicas on several logical CPU devices"
    if requested == "true":
        if blocked:
            raise ValueError(f"--jit_compile=true: {blocked}")
        return True, "set explicitly"
    if requested == "false":
        return False, "set explicitly"
    if blocked:
        choice, why = False, blocked
    elif strategy == "tpu":
        choice, why = True, "TPUs run XLA programs"
    elif _gpu_capabilities():
        choice, why = True, "GPUs: one XLA program fuses the step's element-wise work"
    elif onednn_enabled():
        choice, why = False, "TensorFlow runs oneDNN, whose kernels ran the graph step faster"
    else:
        choice, why = True, "TensorFlow runs without oneDNN, and XLA's kernels ran the step faster"
    logging.info("--jit_compile=auto chose %s: %s", choice, why)
    return choice, why


def resolve_decode_jit(rows: int) -> tuple[bool, str]:
    """Whether a decoding loop of `rows` (the batch bucket) runs as one XLA program
    (`generation.Generator`), and why: on GPUs always, on a CPU for a single row.

    One row is matrix-vector work, bound by reading the weights, and XLA's own matrix-vector
    loops read them faster than TensorFlow's kernels (oneDNN's or Eigen's). The graph loop runs
    each block's work as small XLA programs too (`speed.decoding`), laid out for few rows, where
    the whole-loop program folds the kernels' transposes away. Measured, GPT-2 124M, prompt 32,
    128 new tokens, new tokens/s (graph / XLA, medians of 3 alternating calls in one process),
    AMD EPYC (Zen 4), oneDNN on: batch 1 41.7 / 42.0, batch 8 203.8 / 141.7. Before the graph
    loop's XLA programs, on an earlier EPYC host: batch 1 36.3 / 43.3, batch 8 170.9 / 165.4."""
    if _gpu_capabilities():
        return True, "GPUs: XLA fuses each decoding step's small kernels"
    if rows <= 1:
        return True, "one row on a CPU: XLA's matrix-vector loops read the weights faster"
    return False, f"{rows} rows on a CPU: the graph loop with XLA block programs ran faster"

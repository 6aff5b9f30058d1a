"""--precision=auto: bfloat16 exactly where the device has it natively, and what was chosen is
recorded (train_config.json, flags.txt)."""

import json
import os
import platform
import subprocess
import sys

import keras
import pytest

from gpt2_tf.core import hardware
from gpt2_tf.train.trainer import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine(monkeypatch, flags=(), onednn=True, gpus=()):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: onednn)
    monkeypatch.setattr(hardware, "_gpu_capabilities", lambda: list(gpus))


@pytest.mark.parametrize(
    "flags, onednn, gpus, strategy, want",
    [
        (
            ("avx512f", "amx_bf16", "amx_tile"),
            True,
            (),
            "auto",
            "mixed_bfloat16",
        ),  # Sapphire Rapids
        (("avx512f", "avx512_bf16"), True, (), "auto", "mixed_bfloat16"),  # Zen 4/5, Cooper Lake
        (("avx2", "fma"), False, (), "auto", "float32"),  # AVX2 only: bfloat16 emulated
        (("avx512f", "avx512_bf16"), False, (), "auto", "float32"),  # TF_ENABLE_ONEDNN_OPTS=0
        (("avx2",), False, ((8, 0),), "auto", "mixed_bfloat16"),  # A100
        (("avx2",), False, ((9, 0), (9, 0)), "mirrored", "mixed_bfloat16"),  # two H100s
        (("avx512_bf16",), True, ((7, 5),), "auto", "float32"),  # T4: the GPU trains
        (("avx2",), False, (), "tpu", "mixed_bfloat16"),
    ],
)
def test_auto_chooses_bfloat16_where_it_is_native(monkeypatch, flags, onednn, gpus, strategy, want):
    machine(monkeypatch, flags, onednn, gpus)
    precision, why = hardware.resolve_precision("auto", strategy)
    assert precision == want and why
    for explicit in ("float32", "mixed_bfloat16", "mixed_float16"):  # a set value is kept
        assert hardware.resolve_precision(explicit, strategy)[0] == explicit


def _tensorflow_says_onednn_is_on() -> bool:
    """TensorFlow's own start-up line, read from a fresh process (not through hardware.py)."""
    code = "import tensorflow as tf; tf.constant(1.0) + 1.0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return "oneDNN custom operations are on" in out.stderr


def test_auto_on_this_machine_follows_its_cpu_flags_and_onednn():
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":")[1].split()
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU trains here: its compute capability decides (covered above)")
    onednn = _tensorflow_says_onednn_is_on()
    assert hardware.onednn_enabled() == onednn
    native = ("amx_bf16" in flags or "avx512_bf16" in flags) and onednn
    precision, why = hardware.resolve_precision("auto")
    print(f"{hardware.describe_cpu()}: auto -> {precision} ({why})")
    assert precision == ("mixed_bfloat16" if native else "float32")


def test_the_trainer_records_the_precision_it_ran(dolly_dir, tmp_path):
    want, _ = hardware.resolve_precision("auto")
    before = keras.mixed_precision.dtype_policy().name
    cfg = TrainConfig(dolly_dir, str(tmp_path), max_steps=1, num_samples=0, strategy="one_device")
    assert cfg.precision == "auto"  # the default
    trainer = Trainer(cfg)
    assert trainer.cfg.precision == want and trainer.model.dtype_policy.name == want
    assert keras.mixed_precision.dtype_policy().name == before  # the global policy untouched
    trainer.run()
    with open(tmp_path / "train_config.json", encoding="utf-8") as f:
        assert json.load(f)["precision"] == want


def test_train_py_writes_the_resolved_precision_to_flags_txt(dolly_dir, tmp_path):
    want, _ = hardware.resolve_precision("auto")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.instruction_tuning.train",
        f"--data_dir={dolly_dir}",
        f"--output_dir={tmp_path}",
        "--max_steps=1",
        "--num_samples=0",
        "--eval_batches=1",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"--precision=auto chose {want}" in out.stderr
    lines = (tmp_path / "flags.txt").read_text().splitlines()
    assert f"--precision={want}" in lines


def _in_a_fresh_process(code: str, env: dict) -> list[str]:
    full = {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "3"}
    full.pop("TF_ENABLE_ONEDNN_OPTS", None)
    full.update({k: v for k, v in env.items() if k == "TF_ENABLE_ONEDNN_OPTS"})
    out = subprocess.run(
        [sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_gpt2_tf_turns_onednn_on_for_an_avx2_only_cpu():
    """On an AVX2-only CPU (emulated) TensorFlow alone leaves oneDNN off; imported first, gpt2_tf
    turns it on, and training then takes the graph step. A user's TF_ENABLE_ONEDNN_OPTS=0
    stands, and the step is then the XLA one; TensorFlow loaded first keeps its default."""
    from benchmarks import avx2_only

    why = avx2_only.unavailable()
    if why:
        pytest.skip(f"AVX2 emulation: {why}")
    clean = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env = avx2_only.env(base=clean)
    probe = (
        "from gpt2_tf.core import hardware as h; "
        "print(h.onednn_enabled(), h.resolve_jit_compile('auto')[0])"
    )
    assert _in_a_fresh_process(probe, env) == ["True", "False"]
    off = {**env, "TF_ENABLE_ONEDNN_OPTS": "0"}
    assert _in_a_fresh_process(probe, off) == ["False", "True"]
    if avx2_only.method() == avx2_only.CPUID:  # TensorFlow's own choice from what CPUID shows
        late = "import tensorflow; " + probe
        assert _in_a_fresh_process(late, env) == ["False", "True"]
    else:
        print("TensorFlow's own oneDNN choice on an AVX2-only CPU not checked: CPUID is not masked")


def test_gpt2_tf_sees_the_emulated_avx2_only_cpu():
    """Under the CPUID-faulting emulation, gpt2_tf's own hardware checks, which read
    /proc/cpuinfo rather than CPUID, see the CPU the libraries see: AVX2 and FMA but no AVX-512,
    AMX or AVX-VNNI flags, so bfloat16 is not native and `auto` precision is float32, as on an
    AVX2-only AMD EPYC. (They saw this machine's avx512_bf16 before and chose mixed_bfloat16.)"""
    from benchmarks import avx2_only

    why = avx2_only.unavailable() or (
        avx2_only.method() != avx2_only.CPUID and "CPUID faulting is not offered here"
    )
    if why:
        pytest.skip(f"AVX2 emulation: {why}")
    probe = (
        "from gpt2_tf.core import hardware as h; f = h.cpu_flags(); "
        "hidden = [x for x in f if x.startswith(('avx512', 'amx')) or x == 'avx_vnni']; "
        "print({'avx2', 'fma'} <= f, len(hidden), h.bfloat16_support()[0], "
        "h.resolve_precision('auto')[0])"
    )
    assert _in_a_fresh_process(probe, avx2_only.env())[-4:] == ["True", "0", "False", "float32"]
    # The same process, unmasked, still reads the machine's own flags.
    native = _in_a_fresh_process(probe, {})[-4:]
    assert native[0] == "True" and int(native[1]) > 0


HEAP_PROBE = """
import ctypes, resource, threading
import gpt2_tf  # sets glibc's top pad unless MALLOC_TOP_PAD_ is set
import tensorflow as tf

# A generator dataset kernel: on Python 3.11 TensorFlow then fixes glibc's mmap threshold at 128 KB.
for _ in tf.data.Dataset.from_generator(
    lambda: iter([1]), output_signature=tf.TensorSpec([], tf.int32)
):
    pass
libc, size, faults = ctypes.CDLL(None), 1_200_000, []

def products():  # a oneDNN matrix product's packing buffer, on a thread of its own, 50 times
    p = ctypes.c_void_p()
    for i in range(53):
        if i == 3:
            start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        libc.posix_memalign(ctypes.byref(p), 128, size)
        ctypes.memset(p, 1, size)
        libc.free(p)
    faults.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start) / 50)

thread = threading.Thread(target=products)
thread.start()
thread.join()
print(faults[0])
"""


def test_freed_buffers_are_reused_not_faulted_in_again():
    """After TensorFlow fixes glibc's mmap threshold (its generator dataset kernel, Python 3.11),
    a 1.2 MB buffer taken and freed over and over, as oneDNN does per matrix product, faulted in
    all of its 293 pages each time; with gpt2_tf's heap pad it reuses the heap. A user's
    MALLOC_TOP_PAD_ stands (here glibc's own default, 128 KB: the control)."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator only")
    if "MALLOC_TOP_PAD_" in os.environ:
        pytest.skip("MALLOC_TOP_PAD_ is set here: gpt2_tf leaves the heap as it is told")
    control = float(_in_a_fresh_process(HEAP_PROBE, {"MALLOC_TOP_PAD_": "131072"})[-1])
    padded = float(_in_a_fresh_process(HEAP_PROBE, {})[-1])
    print(f"page faults per 1.2 MB buffer: {control:.0f} at glibc's default, {padded:.0f} padded")
    if control < 200:
        pytest.skip(f"TensorFlow left glibc's mmap threshold dynamic here ({control:.0f} faults)")
    assert padded < control / 2

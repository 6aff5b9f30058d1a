"""An AVX2-only x86 CPU, emulated on this one: `env()` gives the environment under which a
process sees no AVX-512, AMX or AVX-VNNI (`avx2_only.c`, loaded with LD_PRELOAD): neither in
CPUID, where the libraries look, nor in /proc/cpuinfo, where gpt2_tf's own hardware checks look
(so `--precision=auto` takes float32 there, as on the AVX2 machine).

Why: the issues are measured on two machine kinds, an Intel Xeon with AMX (TensorFlow runs
oneDNN) and a 2-core AVX2-only AMD EPYC (TensorFlow runs without it), and a session has one of
them. Every library involved chooses its kernels from CPUID, so masking CPUID runs the same
software paths as on the AVX2 machine (TensorFlow itself turns oneDNN off), on this machine's
cores, caches and memory. `make bench` adds such rows beside the native ones.

Where the kernel offers no CPUID faulting (the AMD EPYC with AVX-512 of this project's later
sessions), `method()` is "isa caps": each library's own switch caps its instruction set
(`ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`, XLA's
`--xla_cpu_max_isa`), and TensorFlow's oneDNN default on an AVX2-only CPU (off) is set for the
processes that do not import gpt2_tf (`env(tensorflow_default=True)`); gpt2_tf turns it on there
itself (`hardware.prefer_onednn`); gpt2_tf's own hardware checks still read the machine's
flags there. TensorFlow's own kernels are compiled for AVX, so they run
the same code on both CPUs. Not covered: code XLA emits for its own dot products still uses
wider vectors in part (a 2048² float32 product ran at 330 GFLOP/s capped, 388 uncapped, where
oneDNN's capped rate was 202).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "avx2_only.c")
BUILD = os.path.join(HERE, "build")
WIDER = ("avx512f", "amx_tile", "avx_vnni")  # what the emulation takes away


@functools.cache
def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next(x for x in f if x.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


CPUID, CAPS = "cpuid", "isa caps"
# Each library's own cap on the instruction set it dispatches to (the "isa caps" method).
ISA_CAPS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, in TensorFlow and in PyTorch
    "DNNL_MAX_CPU_ISA": "AVX2",  # the same, for older oneDNN builds
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own kernels
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL, where PyTorch calls it
}
XLA_CAP = "--xla_cpu_max_isa=AVX2"


def unavailable() -> str | None:
    """Why the emulation cannot (or need not) run here, or None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return "needs Linux on x86-64"
    if not any(f in _flags() for f in WIDER):
        return "this CPU is AVX2-only already: the native rows are those"
    return None


def method() -> str:
    """CPUID faulting where the kernel offers it and gcc can build the library, else the caps."""
    if "cpuid_fault" in _flags() and shutil.which("gcc") is not None:
        return CPUID
    return CAPS


def library() -> str:
    """The built preload library, compiled from `avx2_only.c` when missing or older."""
    out = os.path.join(BUILD, "avx2_only.so")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(SOURCE):
        os.makedirs(BUILD, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", out, SOURCE], check=True)
    return out


def env(tensorflow_default: bool = False, base: dict | None = None) -> dict[str, str]:
    """The variables to add to a process's environment (`base`, default os.environ) for the
    emulation. `tensorflow_default`: the process runs TensorFlow without gpt2_tf (keras-hub),
    so under the caps it gets the oneDNN setting TensorFlow itself takes on an AVX2-only CPU
    (under CPUID faulting TensorFlow makes that choice itself)."""
    base = os.environ if base is None else base
    if method() == CPUID:
        preload = " ".join(x for x in (library(), base.get("LD_PRELOAD", "")) if x)
        return {"LD_PRELOAD": preload}
    out = dict(ISA_CAPS)
    out["XLA_FLAGS"] = " ".join(x for x in (base.get("XLA_FLAGS", ""), XLA_CAP) if x)
    if tensorflow_default and "TF_ENABLE_ONEDNN_OPTS" not in base:
        out["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return out

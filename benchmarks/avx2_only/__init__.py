"""An AVX2-only x86 CPU, emulated on this one: `env()` gives the environment under which a
process sees no AVX-512, AMX or AVX-VNNI (`avx2_only.c`, loaded with LD_PRELOAD).

Why: the issues are measured on two machine kinds, an Intel Xeon with AMX (TensorFlow runs
oneDNN) and a 2-core AVX2-only AMD EPYC (TensorFlow runs without it), and a session has one of
them. Every library involved chooses its kernels from CPUID, so masking CPUID runs the same
software paths as on the AVX2 machine (TensorFlow itself turns oneDNN off), on this machine's
cores, caches and memory. `make bench` adds such rows beside the native ones.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "avx2_only.c")
BUILD = os.path.join(HERE, "build")
WIDER = ("avx512f", "amx_tile", "avx_vnni")  # what the emulation takes away


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next(x for x in f if x.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def unavailable() -> str | None:
    """Why the emulation cannot (or need not) run here, or None."""
    flags = _flags()
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return "needs Linux on x86-64"
    if not any(f in flags for f in WIDER):
        return "this CPU is AVX2-only already: the native rows are those"
    if "cpuid_fault" not in flags:
        return "the kernel offers no CPUID faulting on this machine (no cpuid_fault flag)"
    if shutil.which("gcc") is None:
        return "needs gcc to build benchmarks/avx2_only/avx2_only.c"
    return None


def library() -> str:
    """The built preload library, compiled from `avx2_only.c` when missing or older."""
    out = os.path.join(BUILD, "avx2_only.so")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(SOURCE):
        os.makedirs(BUILD, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", out, SOURCE], check=True)
    return out


def env() -> dict[str, str]:
    """The variables to add to a process's environment for the emulation."""
    preload = " ".join(x for x in (library(), os.environ.get("LD_PRELOAD", "")) if x)
    return {"LD_PRELOAD": preload}

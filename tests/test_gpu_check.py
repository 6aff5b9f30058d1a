"""`make gpu-check` (benchmarks/gpu_check.py): without a GPU it says so and exits 0; with
`--cpu` every check runs (tiny sizes) and its row is ok, so the script works before anyone runs
it on a GPU; the peak table names the right GPU."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from benchmarks.gpu_check import peak_bf16
from gpt2_tf.core import hardware
from tests.conftest import shell_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
    """The script as `make gpu-check` runs it from a shell."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=shell_env()
    )


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible")
def test_without_a_gpu_it_says_so_and_exits_cleanly():
    done = _run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no GPU is visible to TensorFlow" in done.stdout


@pytest.mark.slow
def test_every_check_runs_on_the_cpu():
    done = _run("--cpu", "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    names = [line.split("|")[1].strip() for line in table]
    assert names == ["tests", "mirrored", "throughput", "generation", "export"]
    assert all(line.split("|")[2].strip() == "ok" for line in table), table
    assert "equals generate(): True" in done.stdout
    # The checks train on the step a user's run gets here: the children load gpt2_tf before
    # TensorFlow, as this process did (after it, an AVX2-only CPU kept oneDNN off and
    # --jit_compile=auto chose XLA where a user's run takes the graph step).
    xla, _ = hardware.resolve_jit_compile("auto")
    for name in ("mirrored", "throughput"):
        (row,) = [line for line in table if line.split("|")[1].strip() == name]
        assert f"XLA {str(xla).lower()}" in row, (xla, row)


def test_the_peak_table_tells_gpus_apart():
    assert peak_bf16("NVIDIA H200") == 989e12
    assert peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16("NVIDIA A10G") == 125e12
    assert peak_bf16("NVIDIA L40S") == 362e12 and peak_bf16("NVIDIA L4") == 121e12
    assert peak_bf16("Tesla V100-SXM2-16GB") is None

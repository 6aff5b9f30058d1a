"""CPU threading chosen before TensorFlow starts (each case in a fresh process)."""

import subprocess
import sys

import pytest

SCRIPT = """
import tensorflow as tf
from gpt2_tf.train.distribute import configure_cpu_threads
{before}
configure_cpu_threads({strategy!r}, {threads})
print("THREADS", tf.config.threading.get_inter_op_parallelism_threads())
"""


def _threads(strategy, threads=0, before=""):
    code = SCRIPT.format(strategy=strategy, threads=threads, before=before)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split("THREADS")[-1])


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.parametrize(
    "strategy, threads, want_cpu_only",
    [("one_device", 0, 1), ("auto", 0, 1), ("mirrored", 0, 0), ("one_device", 3, 3)],
)
def test_inter_op_threads(strategy, threads, want_cpu_only):
    # With no GPU, one replica gets one inter-op thread and mirrored keeps TF's default (0);
    # with a GPU, auto leaves TensorFlow's default (0) alone. An explicit count always holds.
    want = want_cpu_only if threads or not _has_gpu() else 0
    assert _threads(strategy, threads) == want


def test_too_late_leaves_the_runtime_alone():
    # The runtime already started: setting is impossible, and no error is raised.
    assert _threads("one_device", before="tf.constant(1.0) + 1.0") == 0

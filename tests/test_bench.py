"""`make bench` still runs on this code: every gpt2_tf, Hugging Face and keras-hub case of the
quick plan's train, generate and epoch groups, each in its own process as the bench runs it, gives a
figure (a restructuring once left every case failing on a moved import while the suite passed)."""

import pytest

from benchmarks import bench


@pytest.mark.slow
@pytest.mark.parametrize("group", ["train", "generate", "epoch"])
def test_the_quick_benchmark_cases_run(group):
    plan = bench.plan(True)
    cases = [c for c in plan[group] if not c[4].get("skip")]
    seen = set()
    for _, case, _, _, args in cases:
        if case in seen:  # one of each system: the same code runs for the other settings
            continue
        seen.add(case)
        result = bench.run_case(case, dict(args, warmup=0, reps=1))
        assert "error" not in result, f"{case}: {result['error']}"
    assert len(seen) == 3, seen  # gpt2_tf, Hugging Face and keras-hub


def test_the_avx2_emulation_hides_the_wider_instructions_from_every_library():
    """Under benchmarks/avx2_only a process sees no AVX-512 or AMX: PyTorch picks its AVX2
    kernels, TensorFlow alone runs without oneDNN, as on an AVX2-only AMD EPYC, and oneDNN's
    kernels in a gpt2_tf process are its AVX2 ones (by either method of the emulation)."""
    import os
    import subprocess
    import sys

    from benchmarks import avx2_only

    why = avx2_only.unavailable()
    if why:
        pytest.skip(f"AVX2 emulation: {why}")
    probe = (  # TensorFlow first: its own choice, before gpt2_tf's (hardware.prefer_onednn)
        "import torch, tensorflow\n"
        "from gpt2_tf.core.hardware import onednn_enabled\n"
        "print(torch.backends.cpu.get_cpu_capability(), onednn_enabled())"
    )
    unset = ("LD_PRELOAD", "TF_ENABLE_ONEDNN_OPTS")
    plain = {k: v for k, v in os.environ.items() if k not in unset}
    keras_hub = avx2_only.env(tensorflow_default=True, base=plain)
    env = {**plain, **keras_hub, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["AVX2", "False"]
    ours = (  # oneDNN names the instruction set it dispatches to when it makes its first kernel
        "import gpt2_tf, tensorflow as tf\n"
        "print(gpt2_tf.core.hardware.onednn_enabled())\n"
        "tf.matmul(tf.ones([64, 64]), tf.ones([64, 64])).numpy()"
    )
    env = {**plain, **avx2_only.env(base=plain), "TF_CPP_MIN_LOG_LEVEL": "3", "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", ours], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "True"
    isa = [x for x in out.stdout.splitlines() if ",isa:" in x]
    assert isa and "AVX2" in isa[0] and "512" not in isa[0], isa
    native = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=plain,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert native.stdout.strip() != "AVX2"  # the emulation, not the machine, took them away


@pytest.mark.parametrize("peer", ["hf", "keras_hub"])
def test_paired_rows_name_cases_that_exist(peer):
    """`benchmarks.paired` pairs gpt2_tf's case with the peer's, with the bench's own settings."""
    from benchmarks import cases, paired

    for row in (*paired.ROWS, "generate"):
        args, systems = paired.cases(row, True, peer)
        assert systems[0].endswith("_ours") and systems[1].endswith(f"_{peer}")
        assert all(callable(getattr(cases, s)) for s in systems)
        if row != "generate":
            assert (args["precision"], args["lora_rank"]) == paired.ROWS[row]


def test_a_rows_systems_take_their_turns_one_at_a_time_round_the_row():
    """`run_in_turns`: three processes' warm-ups and timed calls never overlap, and the timed
    calls go round the three, so every system of a row is timed in the same minutes."""
    probe = dict(sleep=0.15, warmup=1, reps=3)
    results = bench.run_in_turns([("turns_probe", probe)] * 3, timeout=60)
    spans = sorted(
        (start, end, system)
        for system, result in enumerate(results)
        for start, end in result["spans"]
    )
    assert len(spans) == 3 * 4
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        assert start >= end  # one at a time
    order = [system for *_, system in spans]
    assert order == [0, 1, 2] * 4  # the warm-ups, then each round of timed calls

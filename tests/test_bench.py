"""`make bench` still runs on this code: every gpt2_tf, Hugging Face and keras-hub case of the
quick plan's train, generate and epoch groups, each in its own process as the bench runs it, gives a
figure (a restructuring once left every case failing on a moved import while the suite passed)."""

import re

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


def test_covered_time_counts_overlapping_spans_once():
    from benchmarks.profile_step import covered_ms

    assert covered_ms([]) == 0
    assert covered_ms([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (1.5, 2.5)]) == 4.0


@pytest.mark.slow
def test_profile_step_splits_every_systems_step_into_products_and_the_rest(capsys):
    """`python -m benchmarks.profile_step --system ...` on the bench's full training step of
    each system (LoRA's would need PEFT, which only the bench extra installs): matrix products,
    found under each system's own op names (oneDNN's, Eigen's, keras-hub's Einsum, PyTorch's
    aten::mm), take part of the profiled step's wall time, and the report splits the step into
    them and the rest."""
    from benchmarks import profile_step

    for system in profile_step.SYSTEMS:
        p = profile_step.profile(system, "float32", 0, "tiny", steps=1)
        assert len(p["step_times"]) == 1 and p["step_s"] > 0
        assert 0 < p["product_ms"] < p["profiled_s"] * 1e3, system
        assert any(profile_step.is_product(kind) for kind in p["by_type"]), p["by_type"]
        assert any(not profile_step.is_product(kind) for kind in p["by_type"]), p["by_type"]
        profile_step.report(system, "full, float32, tiny", p)
        text = capsys.readouterr().out
        assert f"{system}, full, float32, tiny: step " in text
        assert re.search(r"matrix products [\d,]+ ms \(\d+%\), the rest [\d,]+ ms", text), text


def _bench_run(train: dict, generate: dict, rate: float = 100e9, slower=None) -> dict:
    """A bench run's JSON: a matmul row at `rate` float32 FLOP/s (the higher of two runs, the
    other at `slower`, if given), train rows {(setting, lora): {case: result}} and generation
    rows {batch: {case: new tokens/s}}."""
    matmul = {"n": 2048, "float32": rate, "bfloat16": 2 * rate, "bandwidth": 25e9}
    if slower:
        matmul["runs"] = [dict(matmul), {**matmul, "float32": slower}]
    rows = [
        {
            "group": "matmul",
            "case": "matmul",
            "variant": None,
            "lora": None,
            "args": {"n": 2048},
            "result": matmul,
        }
    ]
    for (precision, lora), results in train.items():
        args = {"batch": 4, "lora_rank": lora, "precision": precision}
        rows += [
            {"group": "train", "case": c, "variant": precision, "lora": lora, "args": args}
            | {"result": r}
            for c, r in results.items()
        ]
    for batch, results in generate.items():
        rows += [
            {"group": "generate", "case": c, "variant": batch, "lora": None, "args": {}}
            | {"result": {"new_tokens_per_second": v}}
            for c, v in results.items()
        ]
    machine = {"cpu": "test CPU", "cores": 2, "python": "3.11"}
    return {"machine": machine, "quick": False, "rows": rows, "wall_seconds": 1}


def test_a_row_past_its_bound_is_named_with_the_matmul_rates_it_outran():
    """A figure over 100% of the machine bound can only mean the matrix-multiply case ran in a
    slower window: the report says so, naming the rows and the rates, and only then."""
    from benchmarks.report import markdown

    def report(tokens_per_second):
        rows = {"train_ours": tokens_per_second, "train_hf": 150.0}
        train = {("float32", 8): {c: {"tokens_per_second": v} for c, v in rows.items()}}
        return markdown(_bench_run(train, {}, slower=90e9), bench.PARAMS_124M)

    # LoRA's bound at 100 GFLOP/s: 100e9 / (4 x 124.4M) = 200.9 tokens/s
    over = report(250.0)
    assert "| 124.4 |" in over
    assert (
        "Past 100% of the bound: LoRA r8, float32, gpt2_tf. No step runs faster than the "
        "machine's matrix products, so the matrix-multiply case (100.0 and 90.0 GFLOP/s "
        "float32) ran in a slower window"
    ) in over
    assert "Past 100%" not in report(190.0)


def test_the_issue_20_targets_are_judged_against_the_lower_of_peer_and_bound():
    """Training must reach the lower of 1.3x the best peer and 90% of the machine bound (and
    1.1x the best peer), with no more peak RSS than Hugging Face; generation 1.4x / 2x Hugging
    Face; rows a run skipped are listed, not judged."""
    from benchmarks import targets

    def train(ours, hf, keras_hub, rss=(2000, 2100)):
        return {
            "train_ours": {"tokens_per_second": ours, "peak_rss_mb": rss[0]},
            "train_hf": {"tokens_per_second": hf, "peak_rss_mb": rss[1]},
            "train_keras_hub": {"tokens_per_second": keras_hub, "peak_rss_mb": 5000},
        }

    skipped = {"skipped": "skipped: bfloat16 is not native here"}
    run = _bench_run(
        {
            # LoRA bound at 100 GFLOP/s: 100e9 / (4 x 124.4M) = 200.9 tokens/s, 90%: 180.8;
            # 1.3x the best peer (150) is 195: the bound's share is the target, and 180 misses it
            ("float32", 8): train(180.0, 150.0, 120.0),
            # full: 90% of the bound (133.9) is 120.5, under 1.3x the best peer (130)
            ("float32", 0): train(125.0, 100.0, 90.0, rss=(2200, 2100)),
            ("mixed_bfloat16", 0): {c: skipped for c in ("train_ours", *targets.PEERS)},
        },
        {
            1: {"generate_ours": 27.0, "generate_hf": 20.0},
            8: {"generate_ours": 100.0, "generate_hf": 50.0},
        },
    )
    checks = {c["target"]: c for c in targets.judge(run, bench.PARAMS_124M)}
    lora = checks["train LoRA r8, float32: tokens/s"]
    assert not lora["met"] and lora["required"].startswith("180.8 (the lower of")
    assert checks["train LoRA r8, float32: x the best peer"]["met"]  # 1.2x
    full = checks["train full, float32: tokens/s"]
    assert full["met"] and full["required"].startswith("120.5 ")
    assert checks["train full, float32: x the best peer"]["met"]  # 1.25x
    assert not checks["train full, float32: peak RSS MB"]["met"]  # 2,200 against 2,100
    assert checks["train LoRA r8, float32: peak RSS MB"]["met"]
    assert checks["train full, mixed_bfloat16"]["met"] is None
    assert not checks["generate batch 1: x Hugging Face"]["met"]  # 1.35x
    assert checks["generate batch 8: x Hugging Face"]["met"]  # 2.0x

    # A peer slow enough: 1.3x it is the target, under the bound's share.
    slow_peer = _bench_run({("float32", 8): train(160.0, 120.0, 100.0)}, {})
    speed, floor, _ = targets.judge(slow_peer, bench.PARAMS_124M)
    assert speed["met"] and speed["required"].startswith("156.0 ")
    assert floor["met"]
    # The matmul case in a slower window (the row past its bound, 100.5): 1.3x the peer stands.
    past = _bench_run({("float32", 8): train(150.0, 120.0, 100.0)}, {}, rate=50e9)
    speed, _, _ = targets.judge(past, bench.PARAMS_124M)
    assert not speed["met"] and speed["required"] == (
        "156.0 (1.3x the best peer: a figure of this row is past the bound, 100.5)"
    )
    # Ahead of both targets' lower one but under 1.1x the best peer: the floor is missed.
    close = _bench_run({("float32", 8): train(185.0, 175.0, 100.0)}, {})
    speed, floor, _ = targets.judge(close, bench.PARAMS_124M)
    assert speed["met"] and not floor["met"]

    assert targets.section(run | {"quick": True}, None) == ""  # the tiny model: not judged
    text = targets.section(run, bench.PARAMS_124M)
    assert "| train LoRA r8, float32: tokens/s | 180.0 (99.6% of it) |" in text
    assert (
        "5 of 8 targets met; missed: train LoRA r8, float32: tokens/s; train full, float32: "
        "peak RSS MB; generate batch 1: x Hugging Face."
    ) in text

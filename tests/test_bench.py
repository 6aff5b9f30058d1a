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

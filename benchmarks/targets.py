"""Issue 20's targets, judged on one bench run (`make bench` ends its file with them):

- training, full and LoRA, float32, and bfloat16 where the CPU runs it natively: gpt2_tf's
  tokens/s at least the lower of 1.3x the best peer (Hugging Face, keras-hub) and 90% of the
  machine bound (the matrix-multiply rate / 6N full, / 4N LoRA), and at least 1.1x the best
  peer in every row;
- peak training memory (RSS) no more than Hugging Face's in the same row;
- generation at least 1.4x Hugging Face at batch 1 and 2x at batch 8.

The AVX2-only rows emulated on a wider CPU (`benchmarks/avx2_only`) are judged too, against
their own matrix-multiply rate. Where a row's figure is past its bound, the matrix-multiply case
ran in a slower window (`report.markdown` says so) and the bound is too low to judge by: the
target is then 1.3x the best peer. Rows a run skipped or could not finish are listed, not judged.

    python -m benchmarks.targets benchmarks/results/bench.json   # an earlier run's verdicts
"""

from __future__ import annotations

import argparse
import json

from benchmarks import report

PEER_FACTOR = 1.3  # x the best peer ...
BOUND_SHARE = 0.9  # ... or this share of the machine bound, whichever is lower
FLOOR_FACTOR = 1.1  # x the best peer, in every row
GENERATION_FACTOR = {1: 1.4, 8: 2.0}  # x Hugging Face, by batch
PEERS = ("train_hf", "train_keras_hub")


def _check(target: str, value: str, required: str, met: bool | None) -> dict:
    return {"target": target, "value": value, "required": required, "met": met}


def _training(rows: list[dict], params: int | None) -> list[dict]:
    rate, rate_avx2 = report.machine_rates(rows)
    train = [r for r in rows if r["group"] == "train"]
    checks = []
    for setting in dict.fromkeys(report.setting_of(r) for r in train):
        same = {r["case"]: r["result"] for r in train if report.setting_of(r) == setting}
        row = next(r for r in train if report.setting_of(r) == setting)
        ours = same.get("train_ours", {})
        value = ours.get("tokens_per_second")
        peers = [same.get(p, {}).get("tokens_per_second") for p in PEERS]
        if not value or not all(peers):
            why = ours.get("skipped") or "gpt2_tf's or a peer's figure is missing"
            checks.append(_check(f"train {setting}", "—", "—", None) | {"why": why})
            continue
        best = max(peers)
        own_rate = rate_avx2 if row["args"].get("emulate") else rate
        bound = report.training_bound(row, params, own_rate)
        by_peer = PEER_FACTOR * best
        peer_rule = f"{PEER_FACTOR}x the best peer"
        if not bound:
            target, how = by_peer, peer_rule
        elif max(value, *peers) > bound:  # see `report.markdown`'s past-bound note
            target = by_peer
            how = f"{peer_rule}: a figure of this row is past the bound, {bound:,.1f}"
        else:
            target = min(by_peer, BOUND_SHARE * bound)
            how = (
                f"the lower of {peer_rule}, {by_peer:,.1f}, and {BOUND_SHARE:.0%} of the bound, "
                f"{BOUND_SHARE * bound:,.1f}"
            )
        checks.append(
            _check(
                f"train {setting}: tokens/s",
                f"{value:,.1f} ({value / target:.1%} of it)",
                f"{target:,.1f} ({how})",
                value >= target,
            )
        )
        checks.append(
            _check(
                f"train {setting}: x the best peer",
                f"{value / best:.2f}x",
                f"{FLOOR_FACTOR}x",
                value >= FLOOR_FACTOR * best,
            )
        )
        rss, hf_rss = ours.get("peak_rss_mb"), same.get("train_hf", {}).get("peak_rss_mb")
        if rss and hf_rss:
            checks.append(
                _check(
                    f"train {setting}: peak RSS MB",
                    f"{rss:,.0f}",
                    f"{hf_rss:,.0f} (Hugging Face's)",
                    rss <= hf_rss,
                )
            )
    return checks


def _generation(rows: list[dict]) -> list[dict]:
    checks = []
    for batch, factor in GENERATION_FACTOR.items():
        same = {
            r["case"]: r["result"].get("new_tokens_per_second")
            for r in rows
            if r["group"] == "generate" and r["variant"] == batch
        }
        ours, hf = same.get("generate_ours"), same.get("generate_hf")
        target = f"generate batch {batch}: x Hugging Face"
        if not (ours and hf):
            if same:
                why = "gpt2_tf's or Hugging Face's figure is missing"
                checks.append(_check(target, "—", "—", None) | {"why": why})
            continue
        checks.append(_check(target, f"{ours / hf:.2f}x", f"{factor}x", ours >= factor * hf))
    return checks


def judge(run: dict, params: int | None) -> list[dict]:
    """Each target of the run as {target, value, required, met}; `met` is None where the run
    has no figure to judge (with `why`)."""
    return _training(run["rows"], params) + _generation(run["rows"])


def table(checks: list[dict]) -> list[str]:
    """Markdown lines: the verdicts, then how many targets were met."""
    if not checks:
        return []
    lines = [
        "",
        "Issue 20's targets in this run (`benchmarks/targets.py`):",
        "",
        "| target | gpt2_tf | required | met |",
        "|---|---|---|---|",
    ]
    for c in checks:
        met = {True: "yes", False: "**no**", None: f"not judged: {c.get('why', '')}"}[c["met"]]
        lines.append(f"| {c['target']} | {c['value']} | {c['required']} | {met} |")
    judged = [c for c in checks if c["met"] is not None]
    missed = [c["target"] for c in judged if not c["met"]]
    summary = f"{len(judged) - len(missed)} of {len(judged)} targets met"
    lines += ["", summary + (f"; missed: {'; '.join(missed)}." if missed else ".")]
    return lines


def section(run: dict, params: int | None) -> str:
    """The run's verdicts as the Markdown that `make bench` adds to its file; none for a
    `--quick` run, whose tiny model the targets are not about."""
    if run.get("quick"):
        return ""
    lines = table(judge(run, params))
    return "\n".join(lines) + "\n" if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description="Issue 20's targets in a bench run's JSON")
    parser.add_argument("results", help="a bench run's JSON (benchmarks/results/*.json)")
    opts = parser.parse_args()
    with open(opts.results) as f:
        run = json.load(f)
    print(section(run, report.PARAMS_124M).strip() or "a --quick run: no targets to judge")


if __name__ == "__main__":
    main()

"""Same-window ratios: gpt2_tf and a peer (Hugging Face, or keras-hub) run back to back, round
after round.

    python -m benchmarks.paired [--rounds 3] [--rows full-bf16,lora-bf16,generate]
                                [--peer hf|keras_hub] [--quick]

On this kind of shared VM the machine's speed changes by up to 2x from one minute to the next
(CPU steal, page-fault cost). `make bench` runs a row's systems in turns, step by step, for one
round; here each round runs gpt2_tf's case and then the peer's, each in its own process as in
`make bench`, and the ratio is taken within the round; the median over rounds is printed.
Rows: full-fp32, lora-fp32, full-bf16, lora-bf16, generate (batch 1 and 8).
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.bench import plan, run_case

ROWS = {
    "full-fp32": ("float32", 0),
    "lora-fp32": ("float32", 8),
    "full-bf16": ("mixed_bfloat16", 0),
    "lora-bf16": ("mixed_bfloat16", 8),
}


def cases(row: str, quick: bool, peer: str = "hf") -> tuple[dict, tuple[str, str]]:
    """(args, (gpt2_tf's case, the peer's case)) of one row, with `bench.plan`'s own settings."""
    groups = plan(quick)
    if row == "generate":
        return groups["generate"][0][4], ("generate_ours", f"generate_{peer}")
    args = next(a for *_, a in groups["train"] if (a["precision"], a["lora_rank"]) == ROWS[row])
    return args, ("train_ours", f"train_{peer}")


def figures(result: dict) -> list[float]:
    """The row's figures: one for training, one per batch for generation."""
    parts = result.get("per_batch") or [result]
    keys = ("tokens_per_second", "new_tokens_per_second")
    return [next(p[k] for k in keys if k in p) for p in parts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="full-bf16,lora-bf16,generate")
    parser.add_argument("--peer", choices=("hf", "keras_hub"), default="hf")
    parser.add_argument("--quick", action="store_true", help="tiny model, a smoke test")
    opts = parser.parse_args()
    for row in opts.rows.split(","):
        args, systems = cases(row, opts.quick, opts.peer)
        ratios = []
        for _ in range(opts.rounds):
            ours, other = (run_case(system, args) for system in systems)
            if "error" in ours or "error" in other:
                continue
            ratios.append([a / b for a, b in zip(figures(ours), figures(other))])
        for i, label in enumerate(args.get("batches", [None])):
            each = [r[i] for r in ratios]
            if not each:
                print(f"{row}: no round completed")
                continue
            name = row if label is None else f"{row} batch {label}"
            print(
                f"{name}: gpt2_tf / {opts.peer} per round "
                + ", ".join(f"{x:.2f}x" for x in each)
                + f"; median {statistics.median(each):.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The Markdown tables of a benchmark run: figures, ratio to the best other system, and the
fraction of the machine's bound each reaches: the matrix-multiply rate for training (FLOPs per
token over FLOP/s), the memory bandwidth for generation (float32 weights read once per decoding
step, for the whole batch)."""

from __future__ import annotations

from benchmarks import avx2_only

PARAMS_124M = 124_439_808  # GPT-2 124M with the tied head: the bounds' parameter count
OURS = ("train_ours", "generate_ours", "generate_saved_model")
METRIC = {
    "train": "tokens_per_second",
    "generate": "new_tokens_per_second",
    "tokenize": "texts_per_second",
    "prep": "examples_per_second",
}
NAMES = {
    "train_ours": "gpt2_tf",
    "train_hf": "HF transformers",
    "train_keras_hub": "keras-hub",
    "generate_ours": "gpt2_tf",
    "generate_saved_model": "gpt2_tf SavedModel",
    "generate_hf": "HF transformers",
    "generate_keras_hub": "keras-hub",
}


def _fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


EMULATED = ", AVX2-only CPU (emulated)"  # rows run under benchmarks/avx2_only


def setting_of(row) -> str:
    if row["group"] == "train":
        where = EMULATED if row["args"].get("emulate") else ""
        return f"{'LoRA r8' if row['lora'] else 'full'}, {row['variant']}{where}"
    if row["group"] == "generate":
        return f"batch {row['variant']}"
    if row["group"] == "tokenize":
        return "emotion train texts"
    return f"{row['variant']} (prep_dataset)"


def _flops_per_token(row, params):
    if not params:
        return None
    if row["group"] == "train":
        return (4 if row["lora"] else 6) * params
    return 2 * params if row["group"] == "generate" else None


def training_bound(row, params, rate) -> float | None:
    """A training row's machine bound in tokens/s: its precision's matrix-multiply rate in
    `rate` (the matmul case's result) over its FLOPs per token; None without either."""
    peak = rate.get("bfloat16" if "bfloat16" in row["variant"] else "float32")
    fpt = _flops_per_token(row, params)
    return peak / fpt if peak and fpt else None


def _bound_fraction(row, value, params, rate):
    """% of the machine's bound reached (see the module docstring), or None."""
    if not (value and params):
        return None
    if row["group"] == "generate" and rate.get("bandwidth"):
        steps_per_second = value / row["variant"]  # one decoding step per `batch` new tokens
        return 100 * steps_per_second * 4 * params / rate["bandwidth"]
    bound = training_bound(row, params, rate) if row["group"] == "train" else None
    return 100 * value / bound if bound else None


def _emulation(matmul: list[dict]) -> str:
    """How the AVX2-only rows were emulated (benchmarks/avx2_only.method)."""
    how = next((r["args"].get("emulation") for r in matmul if r["args"].get("emulate")), None)
    if how == avx2_only.CAPS:
        return "each library's instruction-set cap (oneDNN, PyTorch, MKL, XLA)"
    return "CPUID faulting"


def machine_rates(rows: list[dict]) -> tuple[dict, dict]:
    """The matrix-multiply case's rates: (this CPU's, the emulated AVX2-only CPU's); {} where
    the run has none."""
    matmul = [r for r in rows if r["group"] == "matmul"]
    rate = next((r["result"] for r in matmul if not r["args"].get("emulate")), {})
    return rate, next((r["result"] for r in matmul if r["args"].get("emulate")), {})


def markdown(report: dict, params: int | None) -> str:
    m = report["machine"]
    matmul = [r for r in report["rows"] if r["group"] == "matmul"]
    rate, rate_avx2 = machine_rates(report["rows"])
    lines = [
        f"# gpt2_tf benchmark{' (quick)' if report['quick'] else ''}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores"
        + (f" ({m['cpu_features']})" if m.get("cpu_features") else "")
        + f"; Python {m['python']}; "
        + ", ".join(
            f"{k} {v}" for k, v in m.items() if k not in ("cpu", "cores", "python", "cpu_features")
        ),
        "",
        *(
            [
                f"Matrix multiply (TensorFlow, {rate.get('n', 2048)}²): "
                f"float32 {_fmt(rate.get('float32', 0) / 1e9)} GFLOP/s, "
                f"bfloat16 {_fmt(rate.get('bfloat16', 0) / 1e9)} GFLOP/s. "
                f"Memory bandwidth (sum over 500 MB): {_fmt(rate.get('bandwidth', 0) / 1e9)} GB/s."
                + (
                    " Each is the higher of a run before and a run after the cases."
                    if rate.get("runs")
                    else ""
                ),
                "",
            ]
            if rate.get("float32")
            else []
        ),
        *(
            [
                f"The same, AVX2-only CPU (emulated by {_emulation(matmul)}: no AVX-512, AMX "
                f"or AVX-VNNI; TensorFlow alone would leave oneDNN off there, keras-hub runs so, "
                f"and gpt2_tf turns it on): float32 {_fmt(rate_avx2.get('float32', 0) / 1e9)} "
                f'GFLOP/s with oneDNN. Its rows ("{EMULATED[2:]}") are bounded by this rate.',
                "",
            ]
            if rate_avx2.get("float32")
            else []
        ),
        "Bounds for GPT-2 124M: training at most matmul rate / (6 x parameters) tokens/s "
        "(full) or / (4 x parameters) (LoRA); greedy decoding at most bandwidth / "
        "(4 bytes x parameters) steps/s.",
        "",
        "| group | setting | system | figure | peak RSS MB | gpt2_tf / best other "
        "| % of machine bound | CPU steal % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    past_bound = []  # rows over 100% of their bound: the matmul case ran in a slower window
    for group, metric in METRIC.items():
        rows = [r for r in report["rows"] if r["group"] == group]
        for setting in dict.fromkeys(setting_of(r) for r in rows):
            same = [r for r in rows if setting_of(r) == setting]
            others = [
                r["result"].get(metric)
                for r in same
                if r["case"] not in OURS
                and not (group == "tokenize" and r["variant"].startswith("gpt2_tf"))
            ]
            best_other = max([x for x in others if x], default=None)
            for r in same:
                value = r["result"].get(metric)
                ours = r["case"] in OURS or (
                    group == "tokenize" and r["variant"].startswith("gpt2_tf")
                )
                ratio = _fmt(value / best_other, 2) + "x" if ours and value and best_other else ""
                own_rate = rate_avx2 if r["args"].get("emulate") else rate
                bound = _bound_fraction(r, value, params, own_rate)
                frac = "" if bound is None else _fmt(bound, 1)
                name = NAMES.get(r["case"], "gpt2_tf" if group == "prep" else r["variant"])
                if bound is not None and bound > 100:
                    past_bound.append(f"{setting}, {name}")
                if value:
                    figure = f"{_fmt(value)} {metric.replace('_', ' ')}"
                elif "skipped" in r["result"]:
                    figure = r["result"]["skipped"]
                else:
                    figure = f"error: {r['result'].get('error', '')[:60]}"
                lines.append(
                    f"| {group} | {setting} | {name} | {figure} | "
                    f"{_fmt(r['result'].get('peak_rss_mb'), 0)} | {ratio} | {frac} | "
                    f"{_fmt(r['result'].get('steal_pct'), 0)} |"
                )
    if past_bound:
        runs = rate.get("runs") or [rate]
        rates = " and ".join(f"{_fmt(x.get('float32', 0) / 1e9)}" for x in runs)
        lines += [
            "",
            f"Past 100% of the bound: {'; '.join(past_bound)}. No step runs faster than the "
            f"machine's matrix products, so the matrix-multiply case ({rates} GFLOP/s float32) "
            "ran in a slower window than these rows: this run's bounds are too low and its % "
            "column too high. Compare a row's systems by their ratio (they ran in turns).",
        ]
    from benchmarks import epoch

    lines += epoch.table([r for r in report["rows"] if r["group"] == "epoch"])
    lines += [
        "",
        "CPU steal: the share of the machine's CPU time the hypervisor took during the case "
        "(from /proc/stat); figures taken under a high steal are slow for every system.",
        "",
        f"Wall time of the run: {report['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"

"""Evaluating a trained run: the `pipelines/<task>/evaluate.py` behind `make eval-<task>`.

LM tasks: perplexity on a split (exp of the mean NLL over target tokens: prompt and padding carry
no weight, as in training), and generations from the split's prompts scored by
`gpt2_tf.evaluation.metrics`.
Classifiers: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix. Both
compare the fine-tuned model with its base: the run's `init_from`, rebuilt exactly as training
built it (a preset gets the same seeded random weights; a folder or hub id is loaded again).

Everything lands in one folder (default `<run>/eval`): `metrics.json`, `metrics.csv` (long form:
model, metric, value), `samples.jsonl` (the same inputs through base and fine-tuned model), PNG
plots and `report.md`.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf

from gpt2_tf.analyses import plots
from gpt2_tf.core import run_folder
from gpt2_tf.core.compat import seeded
from gpt2_tf.core.reports import md_table, write_csv, write_json, write_jsonl
from gpt2_tf.data.batches import load_split
from gpt2_tf.data.records import CLASSIFIER, load_tfrecords, read_metadata, split_prompts
from gpt2_tf.evaluation import metrics
from gpt2_tf.evaluation.loop import classifier_predictions, perplexity_on


@dataclasses.dataclass
class EvalConfig:
    model_dir: str  # a folder written by training: runs/<task>/final or best
    output_dir: str | None = None  # None: <run>/eval, beside model_dir
    data_dir: str | None = None  # None: the data the run trained on (its train_config.json)
    split: str = "test"
    batch_size: int = 8
    num_generations: int = 20  # LM tasks: prompts taken from the start of the split
    max_new_tokens: int = 64
    sampler: str = "top_p"
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.9
    seed: int = 0
    embedder: str = "auto"  # auto (MiniLM if installed, else GPT-2), minilm, gpt2
    unit: str = "auto"  # what distinct-n counts: words, chars, or auto (chars for CJK text)
    compare_base: bool = True
    num_shown: int = 5  # side-by-side examples in the report
    # LM tasks: perplexity over packed rows; classifiers: predictions in length buckets
    # (`data.batches`); the same results as padded batches, without their compute
    packing: bool = True

    def __post_init__(self):
        from gpt2_tf.model.generation import SAMPLERS

        choices = {
            "sampler": SAMPLERS,
            "embedder": ("auto", "minilm", "gpt2"),
            "unit": ("auto", *metrics.UNITS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("batch_size", "num_generations", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


HELP = {
    "model_dir": "A trained model folder (runs/<task>/final or best).",
    "output_dir": "Where the results go (default: eval/ beside --model_dir, in the run folder).",
    "data_dir": "Prepared TFRecords (default: the run's, from its train_config.json).",
    "split": "The split evaluated (test, validation, ...).",
    "batch_size": "Batch for perplexity and predictions: packed rows of seq_len for LM tasks "
    "with --packing, else examples.",
    "num_generations": "LM tasks: prompts taken from the split for the generation metrics.",
    "max_new_tokens": "LM tasks: tokens generated per prompt.",
    "sampler": "LM tasks: greedy, temperature, top_k or top_p.",
    "temperature": "Sampling temperature.",
    "top_k": "top_k sampler: keep this many tokens.",
    "top_p": "top_p sampler: nucleus mass.",
    "seed": "Sampling seed.",
    "embedder": "Sentence embeddings for local coherence: auto (MiniLM if installed, else the "
    "GPT-2 model's mean-pooled hidden states), minilm, gpt2.",
    "unit": "What distinct-n and lexical diversity count: words (whitespace), chars, or auto "
    "(chars when the text is mostly Chinese/Japanese).",
    "compare_base": "Also evaluate the base model (the run's --init_from) side by side.",
    "num_shown": "Side-by-side examples shown in report.md.",
    "packing": "Padding-free batches: LM perplexity over packed rows (several examples a row, "
    "attention within each), classifier predictions in length buckets; the same results as "
    "--nopacking's padded rows.",
}


# ---- numbers -------------------------------------------------------------------------------------
def generate_texts(model, tokenizer, prompts: list[list[int]], cfg: EvalConfig) -> list[str]:
    """Each prompt's continuation as text (up to <|endoftext|>, which is left out)."""
    from gpt2_tf.model.generation import generate, prompt_room

    room = prompt_room(model, cfg.max_new_tokens)
    new = generate(
        model,
        [p[-room:] for p in prompts],  # a long prompt keeps its end, next to the continuation
        cfg.max_new_tokens,
        sampler=cfg.sampler,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        stop_token_ids=(tokenizer.eos_id,),
    )
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_id]) for row in new]


def generation_metrics(texts: list[str], embed, unit: str) -> dict:
    lengths = [len(metrics.units(t, unit)) for t in texts]
    return {
        "distinct_1": metrics.distinct_n(texts, 1, unit),
        "distinct_2": metrics.distinct_n(texts, 2, unit),
        "lexical_diversity": metrics.lexical_diversity(texts, unit),
        "local_coherence": metrics.local_coherence(texts, embed),
        "mean_length": float(np.mean(lengths)) if lengths else 0.0,
    }


def choose_unit(unit: str, reference_texts: list[str]) -> str:
    if unit != "auto":
        return unit
    return "chars" if metrics.mostly_cjk(reference_texts) else "words"


# ---- the run and its base model ------------------------------------------------------------------
def base_model(train_config: dict, meta: dict):
    """The model training started from: a preset's seeded random weights (the same as the run's,
    since training builds it with Keras seeded by its `seed`, as here, leaving the process's random
    state as it was) or the pretrained folder/hub id. The dropout rate stays: a rate above 0 draws
    a dropout seed, which shifts every random weight drawn after it. LoRA is left out: it is added
    after the weights and starts as a no-op."""
    from gpt2_tf.train.trainer import TrainConfig, build_model

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    known = {k: v for k, v in train_config.items() if k in fields}
    cfg = TrainConfig(**{**known, "lora_rank": 0})
    with seeded(cfg.seed):
        return build_model(cfg, meta)


def _base_or_explain(train_config: dict, meta: dict):
    try:
        return base_model(train_config, meta)
    except (OSError, ValueError) as e:  # e.g. a hub id that is not cached, offline
        raise RuntimeError(
            f"cannot rebuild the base model {train_config.get('init_from')!r}: {e}; "
            "pass --nocompare_base to evaluate without it"
        ) from e


def describe_base(train_config: dict) -> str:
    from gpt2_tf.model.config import PRESETS

    source = train_config.get("init_from", "?")
    if source in PRESETS:
        return f"`{source}` preset, random weights (seed {train_config.get('seed', 0)})"
    return f"`{source}` (pretrained)"


def read_training_loss(run_dir: str) -> tuple[list[int], list[float]]:
    """(steps, training loss) from the run's TensorBoard events, else from its metrics.csv."""
    points = {}
    events = os.path.join(run_dir, run_folder.TENSORBOARD, "train", "events.*")
    for path in sorted(glob.glob(events)):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "loss":
                    points[event.step] = float(tf.make_ndarray(value.tensor))
    logged = os.path.join(run_dir, run_folder.METRICS_CSV)
    if not points and os.path.exists(logged):
        with open(logged, encoding="utf-8") as f:
            rows = csv.DictReader(f)  # rows of evaluations alone leave train_loss empty
            points = {int(r["step"]): float(r["train_loss"]) for r in rows if r.get("train_loss")}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


# ---- the evaluations -----------------------------------------------------------------------------
def _side_by_side(model, base) -> dict:
    """{"base": ..., "fine-tuned": ...}: before, then after (the order of every table)."""
    return {**({"base": base} if base is not None else {}), "fine-tuned": model}


def evaluate_lm(model, tokenizer, data_dir: str, cfg: EvalConfig, base=None, embed=None) -> dict:
    """Perplexity and generation metrics of the model (and of `base`, when given)."""
    models = _side_by_side(model, base)
    dataset, _ = load_split(
        data_dir, cfg.split, cfg.batch_size, packing=cfg.packing, tokenizer=tokenizer
    )
    prompts = split_prompts(data_dir, cfg.split, cfg.num_generations)
    prompt_texts = [tokenizer.decode(p) for p in prompts]
    unit = choose_unit(cfg.unit, prompt_texts)
    embed = embed or metrics.get_embedder(model, tokenizer, cfg.embedder, "the fine-tuned model")
    out = {"unit": unit, "embedder": embed.name, "models": {}, "samples": []}
    generations = {}
    for name, m in models.items():
        generations[name] = generate_texts(m, tokenizer, prompts, cfg)
        out["models"][name] = {
            **perplexity_on(m, dataset),
            **generation_metrics(generations[name], embed, unit),
        }
    for i, prompt in enumerate(prompt_texts):
        out["samples"].append({"prompt": prompt, **{k: v[i] for k, v in generations.items()}})
    return out


def evaluate_classifier(model, tokenizer, data_dir: str, cfg: EvalConfig, base=None) -> dict:
    meta = read_metadata(data_dir)
    names = meta["label_names"]
    dataset, order = load_split(
        data_dir, cfg.split, cfg.batch_size, packing=cfg.packing, tokenizer=tokenizer
    )
    models = _side_by_side(model, base)
    out, predictions = {"label_names": names, "models": {}, "samples": []}, {}
    for name, m in models.items():  # labels and predictions in the split's order
        labels, predictions[name] = classifier_predictions(m, dataset, order)
        out["models"][name] = metrics.classification_metrics(labels, predictions[name], names)
    x, _, _ = next(iter(load_tfrecords(data_dir, cfg.split, cfg.num_shown)))
    for i, (ids, mask) in enumerate(zip(x["token_ids"].numpy(), x["padding_mask"].numpy())):
        text = tokenizer.decode([t for t in ids[: mask.sum()] if t != tokenizer.eos_id])
        shown = {k: names[int(v[i])] for k, v in predictions.items()}
        out["samples"].append({"text": text, "label": names[int(labels[i])], **shown})
    return out


def run(cfg: EvalConfig) -> dict:
    """Evaluates `cfg.model_dir` and writes every output; returns the results."""
    from gpt2_tf.serve.inference import load_trained

    run_dir = os.path.dirname(os.path.abspath(cfg.model_dir))
    train_config = run_folder.read_config(run_dir)
    data_dir = cfg.data_dir or train_config.get("data_dir")
    if not data_dir:
        raise ValueError(
            f"{run_dir}: no {run_folder.TRAIN_CONFIG} naming the data; pass --data_dir"
        )
    out_dir = cfg.output_dir or os.path.join(run_dir, run_folder.EVAL)
    os.makedirs(out_dir, exist_ok=True)
    model, tokenizer, task = load_trained(cfg.model_dir)
    meta = read_metadata(data_dir)
    if meta["task"] != task["task"]:
        raise ValueError(f"{data_dir} holds {meta['task']} data; the model is {task['task']}")
    base = _base_or_explain(train_config, meta) if cfg.compare_base and train_config else None
    evaluate = evaluate_classifier if task["kind"] == CLASSIFIER else evaluate_lm
    results = evaluate(model, tokenizer, data_dir, cfg, base)
    results.update(
        task=task["task"],
        kind=task["kind"],
        model_dir=cfg.model_dir,
        data_dir=data_dir,
        split=cfg.split,
        base=describe_base(train_config) if base is not None else None,
        settings=dataclasses.asdict(cfg),
    )
    write_outputs(results, out_dir, run_dir)
    return results


# ---- files ---------------------------------------------------------------------------------------
def scalars(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, int | float)}


def write_outputs(results: dict, out_dir: str, run_dir: str) -> dict:
    """metrics.json/.csv, samples.jsonl, plots and report.md; returns {file name: what it is}."""
    write_json(os.path.join(out_dir, "metrics.json"), results)
    rows = [
        {"model": name, "metric": k, "value": v}
        for name, values in results["models"].items()
        for k, v in scalars(values).items()
    ]
    write_csv(os.path.join(out_dir, "metrics.csv"), rows)
    write_jsonl(os.path.join(out_dir, "samples.jsonl"), results["samples"])
    files = {
        "metrics.json": "every number",
        "metrics.csv": "the scalar metrics, one row per model and metric",
        "samples.jsonl": "the side-by-side inputs and outputs",
    }
    if results["kind"] == CLASSIFIER:
        per_class = results["models"]["fine-tuned"]["per_class"]
        write_csv(os.path.join(out_dir, "per_class.csv"), per_class)
        files["per_class.csv"] = "precision, recall, F1 and support per class"
    files.update(_plots(results, out_dir, run_dir))
    with open(os.path.join(out_dir, run_folder.REPORT), "w", encoding="utf-8") as f:
        f.write(report(results, files))
    return {**files, run_folder.REPORT: "this report"}


def _plots(results: dict, out_dir: str, run_dir: str) -> dict:
    task, models, made = results["task"], results["models"], {}
    if results["kind"] == CLASSIFIER:
        tuned = models["fine-tuned"]
        plots.confusion_matrix(
            tuned["confusion"],
            results["label_names"],
            os.path.join(out_dir, "confusion_matrix.png"),
            f"{task}: confusion matrix on {results['split']} (fine-tuned)",
        )
        plots.per_class_scores(
            tuned["per_class"],
            os.path.join(out_dir, "per_class.png"),
            f"{task}: per-class precision, recall, F1 ({results['split']})",
        )
        made["confusion_matrix.png"] = "confusion matrix (counts; rows true, columns predicted)"
        made["per_class.png"] = "per-class precision, recall and F1"
    keys = ("accuracy", "macro_f1") if results["kind"] == CLASSIFIER else LM_METRICS
    values = {name: {k: v[k] for k in keys} for name, v in models.items()}
    plots.comparison_bars(
        values,
        os.path.join(out_dir, "comparison.png"),
        f"{task}: base vs fine-tuned on {results['split']}",
    )
    made["comparison.png"] = "base vs fine-tuned, one panel per metric"
    steps, loss = read_training_loss(run_dir)
    if steps:
        path = os.path.join(out_dir, "training_loss.png")
        plots.loss_curves([("train", steps, loss)], path, f"{task}: training loss")
        made["training_loss.png"] = "the run's training loss (TensorBoard events)"
    return made


LM_METRICS = (
    "perplexity distinct_1 distinct_2 lexical_diversity local_coherence mean_length".split()
)


# ---- report.md -----------------------------------------------------------------------------------
def _unit_note(unit: str) -> str:
    if unit == "words":
        return "whitespace words (`str.split`: case and punctuation kept)"
    return "non-space characters (the text is mostly Chinese/Japanese, which has no spaces)"


def _lm_sections(r: dict) -> list[str]:
    s, names = r["settings"], list(r["models"])
    rows = [[k, *(r["models"][n][k] for n in names)] for k in ("perplexity", "mean_nll")]
    rows.append(["target tokens", *(r["models"][n]["target_tokens"] for n in names)])
    gen = [[k, *(r["models"][n][k] for n in names)] for k in LM_METRICS[1:]]
    samples = [[i, x["prompt"], *(x[n] for n in names)] for i, x in enumerate(r["samples"])]
    return [
        f"## Perplexity on `{r['split']}`",
        "exp of the mean negative log-likelihood over the target tokens (prompt and padding "
        "positions carry no weight, as in training).",
        md_table(["", *names], rows),
        f"## Generations ({len(r['samples'])} prompts from `{r['split']}`)",
        f"Sampler `{s['sampler']}` (temperature {s['temperature']}, top_k {s['top_k']}, top_p "
        f"{s['top_p']}, seed {s['seed']}), at most {s['max_new_tokens']} new tokens; the metrics "
        f"score the continuations only, over all of them together.",
        f"- distinct-n, lexical diversity and length count {_unit_note(r['unit'])}.",
        "- local coherence: mean cosine similarity of consecutive sentences within a generation "
        f"(cut at . ! ? 。！？； and line breaks); sentence embeddings: {r['embedder']}. n/a: "
        "no generation had two sentences.",
        md_table(["metric", *names], gen),
        "## Before / after",
        md_table(["#", "prompt", *names], samples[: s["num_shown"]]),
    ]


def _classifier_sections(r: dict) -> list[str]:
    names = list(r["models"])
    rows = [[k, *(r["models"][n][k] for n in names)] for k in ("accuracy", "macro_f1")]
    per_class = [list(c.values()) for c in r["models"]["fine-tuned"]["per_class"]]
    shown = [[i, x["text"], x["label"], *(x[n] for n in names)] for i, x in enumerate(r["samples"])]
    return [
        f"## Accuracy on `{r['split']}` ({r['models']['fine-tuned']['examples']} examples)",
        md_table(["", *names], rows),
        "## Per class (fine-tuned)",
        md_table(["label", "precision", "recall", "F1", "support"], per_class),
        "![confusion matrix](confusion_matrix.png)",
        "![per-class scores](per_class.png)",
        "## Before / after",
        md_table(["#", "input", "true", *names], shown),
    ]


def report(results: dict, files: dict) -> str:
    r = results
    head = [
        f"# Evaluation: {r['task']}",
        f"- model: `{r['model_dir']}`\n- data: `{r['data_dir']}`, split `{r['split']}`\n"
        f"- base: {r['base'] or 'not compared'}",
    ]
    body = _classifier_sections(r) if r["kind"] == CLASSIFIER else _lm_sections(r)
    pictures = [
        f"![{f}]({f})"
        for f in files
        if f.endswith(".png") and f in ("comparison.png", "training_loss.png")
    ]
    listing = "\n".join(f"- `{name}`: {what}" for name, what in files.items())
    return "\n\n".join([*head, *body, "## Plots", *pictures, "## Files", listing]) + "\n"

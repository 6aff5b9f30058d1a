"""Staged fine-tuning (lyrics project): train on `train-stage1..N` in turn, measuring after each.

Data prepared with `--num_stages N` splits the train documents into N stages. Stage k trains on
its own stage only (`TrainConfig.stage = k`), starting from stage k-1's `final/` weights (stage 1
from `init_from`), each in `<output_dir>/stage{k}` with its own optimizer and schedule, so a killed
run resumes inside the stage it was in and a finished stage is not trained again. Row 0 measures
the starting model. After each stage: perplexity on validation and test, and generations from the
test prompts scored by distinct-1/2, lexical diversity and local coherence.

The sentence embedder stays the same for every row, so coherence is comparable across stages: MiniLM
when installed, else the *starting* model's mean-pooled hidden states. Results go to
`<output_dir>/eval`: `stages.json`, `stages.csv`, `samples.jsonl`, `metrics_by_stage.png`,
`training_loss.png` and `report.md`.
"""

from __future__ import annotations

import dataclasses
import os

from gpt2_tf.analyses import plots
from gpt2_tf.analyses.evaluate import (
    EvalConfig,
    base_model,
    choose_unit,
    generate_texts,
    generation_metrics,
    perplexity_on,
    read_training_loss,
)
from gpt2_tf.core import run_folder
from gpt2_tf.core.reports import md_table, write_csv, write_json, write_jsonl
from gpt2_tf.data.batches import load_split
from gpt2_tf.data.records import read_metadata, split_prompts
from gpt2_tf.evaluation import metrics
from gpt2_tf.train.trainer import TrainConfig

PPL_SPLITS = ("validation", "test")
STAGE_METRICS = [
    ("validation_perplexity", "validation perplexity"),
    ("test_perplexity", "test perplexity"),
    ("distinct_2", "distinct-2"),
    ("lexical_diversity", "lexical diversity"),
    ("local_coherence", "local coherence"),
]


@dataclasses.dataclass
class StagedConfig:
    train: TrainConfig  # output_dir is the root of stage1..N; `stage` is set per stage
    evaluation: EvalConfig  # generation settings; its split gives the prompts

    def stage_config(self, k: int) -> TrainConfig:
        previous = self.train.init_from
        if k > 1:
            previous = os.path.join(self.stage_dir(k - 1), run_folder.FINAL)
        return dataclasses.replace(
            self.train, output_dir=self.stage_dir(k), stage=k, init_from=previous
        )

    def stage_dir(self, k: int) -> str:
        return os.path.join(self.train.output_dir, f"stage{k}")


def num_stages(data_dir: str) -> int:
    n = read_metadata(data_dir).get("num_stages", 1)
    if n < 2:
        raise ValueError(
            f"{data_dir}: prepared with one stage; prepare it with --num_stages N (N >= 2)"
        )
    return n


def train_stage(cfg: StagedConfig, k: int) -> str:
    """Trains stage k unless it finished before (its result.json exists); -> its final/ folder."""
    from gpt2_tf.train.trainer import train

    folder = cfg.stage_dir(k)
    if not os.path.exists(os.path.join(folder, run_folder.RESULT)):
        train(cfg.stage_config(k))
    return os.path.join(folder, run_folder.FINAL)


class StageEvaluator:
    """Measures each stage on fixed prompts with a fixed embedder, so rows are comparable.

    Each stage's weights are loaded into one `probe` model, whose compiled generation and
    perplexity functions are then traced once, not once per stage.
    """

    def __init__(self, cfg: StagedConfig, tokenizer, start_model, probe):
        self.cfg, self.tokenizer, self.probe, data_dir = cfg, tokenizer, probe, cfg.train.data_dir
        ev = cfg.evaluation
        self.datasets = {  # packed rows, as the stages train (or padded, with --nopacking)
            s: load_split(data_dir, s, ev.batch_size, packing=ev.packing, tokenizer=tokenizer)[0]
            for s in PPL_SPLITS
        }
        self.prompts = split_prompts(data_dir, ev.split, ev.num_generations)
        self.prompt_texts = [tokenizer.decode(p) for p in self.prompts]
        self.unit = choose_unit(ev.unit, self.prompt_texts)
        self.embed = metrics.get_embedder(
            start_model, tokenizer, ev.embedder, "the starting model (stage 0), for every stage"
        )

    def load(self, model_dir: str) -> None:
        from gpt2_tf.model.gpt2 import GPT2LanguageModel

        self.probe.set_weights(GPT2LanguageModel.from_pretrained(model_dir).get_weights())

    def __call__(self, stage: int) -> tuple[dict, list[str]]:
        row = {"stage": stage}
        for split, dataset in self.datasets.items():
            row[f"{split}_perplexity"] = perplexity_on(self.probe, dataset)["perplexity"]
        texts = generate_texts(self.probe, self.tokenizer, self.prompts, self.cfg.evaluation)
        row.update(generation_metrics(texts, self.embed, self.unit))
        return row, texts


def run_staged(cfg: StagedConfig) -> dict:
    """Trains every stage in turn, evaluating the start and each stage; writes the results."""
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

    meta, n = read_metadata(cfg.train.data_dir), num_stages(cfg.train.data_dir)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    tokenizer = GPT2Tokenizer.from_pretrained(cfg.train.tokenizer or meta["tokenizer"]["source"])
    start, probe = (base_model(dataclasses.asdict(cfg.train), meta) for _ in range(2))
    evaluate = StageEvaluator(cfg, tokenizer, start, probe)
    row, texts = evaluate(0)
    rows, generations, curves = [row], {0: texts}, []
    for k in range(1, n + 1):
        evaluate.load(train_stage(cfg, k))
        row, generations[k] = evaluate(k)
        steps, loss = read_training_loss(cfg.stage_dir(k))
        row.update(train_steps=max(steps, default=0), train_loss=loss[-1] if loss else None)
        rows.append(row)
        curves.append((f"stage {k}", steps, loss))
    results = {
        "data_dir": cfg.train.data_dir,
        "init_from": cfg.train.init_from,
        "num_stages": n,
        "unit": evaluate.unit,
        "embedder": evaluate.embed.name,
        "stages": rows,
        "samples": [
            {"prompt": p, **{f"stage{k}": g[i] for k, g in generations.items()}}
            for i, p in enumerate(evaluate.prompt_texts)
        ],
        "train_config": dataclasses.asdict(cfg.train),
        "evaluation": dataclasses.asdict(cfg.evaluation),
    }
    write_outputs(results, curves, os.path.join(cfg.train.output_dir, run_folder.EVAL))
    return results


def write_outputs(results: dict, curves: list, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "stages.json"), results)
    columns = ["stage", *(k for k, _ in STAGE_METRICS), "distinct_1", "mean_length"]
    columns += ["train_steps", "train_loss"]
    write_csv(
        os.path.join(out_dir, "stages.csv"),
        [{c: row.get(c) for c in columns} for row in results["stages"]],
    )
    write_jsonl(os.path.join(out_dir, "samples.jsonl"), results["samples"])
    n = results["num_stages"]
    plots.metrics_by_stage(
        results["stages"],
        STAGE_METRICS,
        os.path.join(out_dir, "metrics_by_stage.png"),
        f"Staged fine-tuning: metrics after each of {n} stages",
    )
    plots.loss_curves(
        [c for c in curves if c[1]],
        os.path.join(out_dir, "training_loss.png"),
        f"Staged fine-tuning: training loss of each of {n} stages",
    )
    with open(os.path.join(out_dir, run_folder.REPORT), "w", encoding="utf-8") as f:
        f.write(report(results, columns))


def report(results: dict, columns: list[str]) -> str:
    r, ev = results, results["evaluation"]
    stages = [f"stage{row['stage']}" for row in r["stages"]]
    shown = [[p["prompt"], *(p[s] for s in stages)] for p in r["samples"][: ev["num_shown"]]]
    unit = "whitespace words" if r["unit"] == "words" else "non-space characters"
    return (
        "\n\n".join(
            [
                f"# Staged fine-tuning: {r['num_stages']} stages",
                f"- data: `{r['data_dir']}`\n- start: `{r['init_from']}`; stage k trains on "
                "`train-stage{k}`, starting from stage k-1's weights (new optimizer each stage)",
                "## Metrics after each stage (0 = before training)",
                md_table(columns, [[row.get(c) for c in columns] for row in r["stages"]]),
                "Perplexity: exp of the mean NLL over every token of the split (but each block's "
                f"first). Generations: {len(r['samples'])} test prompts (the first half of each "
                f"block), sampler `{ev['sampler']}` (temperature {ev['temperature']}, top_p "
                f"{ev['top_p']}), at most {ev['max_new_tokens']} new tokens. distinct-n and "
                f"lexical diversity count {unit}. Local coherence: mean cosine similarity of "
                "consecutive sentences (cut at . ! ? 。！？； and line breaks); "
                f"embeddings: {r['embedder']}.",
                "![metrics by stage](metrics_by_stage.png)",
                "![training loss](training_loss.png)",
                "## The same prompts after each stage",
                md_table(["prompt", *stages], shown),
            ]
        )
        + "\n"
    )

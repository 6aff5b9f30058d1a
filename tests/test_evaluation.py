"""Evaluation of trained tiny runs: the numbers agree with training's, the base model is the run's
starting point, and every file (JSON, CSV, PNG, report.md) is written; plots open as images."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gpt2_tf.analyses import evaluate, plots
from gpt2_tf.analyses.evaluate import EvalConfig
from gpt2_tf.core.reports import md_cell, md_table, write_csv, write_json, write_jsonl
from gpt2_tf.data.records import load_tfrecords, read_metadata
from gpt2_tf.train.trainer import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_config(data_dir, out, **kw):
    base = dict(
        data_dir=data_dir,
        output_dir=str(out),
        max_steps=2,
        batch_size=8,
        num_samples=0,
        log_every=1,
        eval_batches=1,
        strategy="one_device",
        precision="float32",
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lm_run(dolly_dir, tmp_path_factory):
    trainer = Trainer(train_config(dolly_dir, tmp_path_factory.mktemp("lm_eval_run")))
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def rte_run(rte_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rte_eval_run")
    Trainer(train_config(rte_dir, out, batch_size=4)).run()
    return str(out / "final")


def image(path):
    with Image.open(path) as img:
        img.load()
        pixels = np.asarray(img.convert("L"))
    assert img.format == "PNG" and img.width > 300 and img.height > 200, path
    assert pixels.std() > 5, f"{path}: blank"
    return img


@pytest.mark.slow
def test_lm_evaluation_files_and_numbers(lm_run, tmp_path):
    cfg = EvalConfig(
        model_dir=os.path.join(lm_run.cfg.output_dir, "final"),
        output_dir=str(tmp_path),
        num_generations=3,
        max_new_tokens=8,
        embedder="gpt2",
    )
    results = evaluate.run(cfg)
    tuned, base = results["models"]["fine-tuned"], results["models"]["base"]
    # The same number as training's own evaluation of the final weights on the test split.
    lm_run.cfg.eval_batches = 0  # the whole split
    expected = lm_run.evaluate("test")["perplexity"]
    assert tuned["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert tuned["target_tokens"] == base["target_tokens"] > 0
    assert base["perplexity"] != tuned["perplexity"]
    assert results["unit"] == "words" and "GPT-2 mean-pooled" in results["embedder"]
    assert [set(s) for s in results["samples"]] == [{"prompt", "base", "fine-tuned"}] * 3
    for name in ("metrics.json", "metrics.csv", "samples.jsonl", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    for name in ("comparison.png", "training_loss.png"):
        image(tmp_path / name)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["models"]["fine-tuned"]["distinct_2"] == pytest.approx(tuned["distinct_2"])
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "model,metric,value" and len(rows) == 1 + 2 * 8
    report = (tmp_path / "report.md").read_text()
    for text in ("## Perplexity on `test`", "whitespace words", "## Before / after", "`tiny`"):
        assert text in report, text


def test_base_model_is_the_runs_starting_point(dolly_dir, tmp_path):
    cfg = train_config(dolly_dir, tmp_path, seed=3, lora_rank=2, dropout=0.1)
    fresh = Trainer(cfg).model  # before any step
    base = evaluate.base_model(dataclasses.asdict(cfg), read_metadata(dolly_dir))
    frozen = [v for v in fresh.variables if "lora" not in v.path and "seed" not in v.path]
    weights = [v for v in base.variables if "seed" not in v.path]
    assert len(frozen) == len(weights)
    for a, b in zip(frozen, weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_head_only_on_targets_equals_full_logits(lm_run, dolly_dir):
    model = lm_run.model
    dataset = load_tfrecords(dolly_dir, "test", 8).take(1)
    fast = evaluate.perplexity_on(model, dataset)
    full = evaluate.perplexity_on(lambda x: model(x), dataset)  # logits at every position
    assert fast["target_tokens"] == full["target_tokens"]
    assert fast["perplexity"] == pytest.approx(full["perplexity"], rel=1e-5)


@pytest.mark.slow
def test_classifier_eval_pipeline_in_a_subprocess(rte_run, rte_dir, tmp_path):
    cmd = [sys.executable, "-m", "pipelines.entailment_tuning.evaluate", f"--model_dir={rte_run}"]
    cmd += [f"--output_dir={tmp_path}", "--num_shown=3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in done.stdout
    results = json.loads((tmp_path / "metrics.json").read_text())
    tuned = results["models"]["fine-tuned"]
    confusion = np.array(tuned["confusion"])
    assert confusion.sum() == read_metadata(rte_dir)["splits"]["test"]["examples"]
    assert tuned["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert set(results["models"]) == {"base", "fine-tuned"} and len(results["samples"]) == 3
    for name in ("confusion_matrix.png", "per_class.png", "comparison.png"):
        image(tmp_path / name)
    per_class = (tmp_path / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "label,precision,recall,f1,support" and len(per_class) == 3
    report = (tmp_path / "report.md").read_text()
    assert "## Per class (fine-tuned)" in report and "| entailment |" in report


def test_training_loss_from_tensorboard(lm_run):
    steps, loss = evaluate.read_training_loss(lm_run.cfg.output_dir)
    assert steps == [1, 2] and all(np.isfinite(loss))


def test_plots_open_as_images(tmp_path):
    names = ["sadness", "joy", "love"]
    per_class = [
        {"label": n, "precision": 0.5, "recall": 0.25 * i, "f1": 0.3} for i, n in enumerate(names)
    ]
    made = [
        plots.confusion_matrix(
            [[5, 1, 0], [2, 7, 1], [0, 0, 3]], names, str(tmp_path / "c.png"), "confusion"
        ),
        plots.per_class_scores(per_class, str(tmp_path / "p.png"), "per class"),
        plots.comparison_bars(
            {"base": {"x": 1.0, "y": float("nan")}, "fine-tuned": {"x": 2.0, "y": 0.5}},
            str(tmp_path / "b.png"),
            "bars",
        ),
        plots.metrics_by_stage(
            [{"stage": 0, "a": 3.0, "b": float("nan")}, {"stage": 1, "a": 2.0, "b": None}],
            [("a", "A"), ("b", "B")],
            str(tmp_path / "s.png"),
            "stages",
        ),
        plots.loss_curves(
            [("one", [1, 2], [3.0, 2.5]), ("two", [1, 2], [2.4, 2.0])],
            str(tmp_path / "l.png"),
            "loss",
        ),
    ]
    for path in made:
        image(path)


def test_markdown_cells():
    assert md_cell("a|b\nc") == "a\\|b<br>c"
    assert md_cell(float("nan")) == "n/a" and md_cell(0.123456) == "0.1235"
    assert md_cell(np.float32(0.5)) == "0.5" and md_cell(None) == "–"
    assert md_cell("") == "(empty)"
    assert md_cell("abcdef", 4) == "abc…" and md_cell("abcdef", 4, keep="tail") == "…def"
    assert md_cell(md_cell("a|b")) == "a\\|b"  # a made cell is not escaped twice
    table = md_table(["x", "n"], [["a|b", 1.0], [md_cell("long text", 5), float("inf")]], "lr")
    assert table == "| x | n |\n|---|---:|\n| a\\|b | 1 |\n| long… | n/a |"


def test_report_files_hold_no_nan(tmp_path):
    """No NaN in the files: null in JSON (and JSON lines), an empty CSV cell; NumPy scalars too."""
    rows = [{"a": float("nan"), "b": np.float32(0.5), "c": (1, float("-inf"))}]
    write_json(str(tmp_path / "x.json"), {"rows": rows})
    write_jsonl(str(tmp_path / "x.jsonl"), rows)
    write_csv(str(tmp_path / "x.csv"), [{"a": float("nan"), "b": 2}, {"a": 1.5}], ["a", "b", "c"])
    want = [{"a": None, "b": 0.5, "c": [1, None]}]
    assert json.loads((tmp_path / "x.json").read_text()) == {"rows": want}
    assert [json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()] == want
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b,c", ",2,", "1.5,,"]

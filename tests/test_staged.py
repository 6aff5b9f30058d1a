"""Staged fine-tuning on real text prepared in stages: each stage trains on its own stage files,
starting from the previous stage's weights, and is evaluated; the results are written."""

import csv
import json
import os

import pytest
from PIL import Image

from gpt2_tf.analyses import staged
from gpt2_tf.analyses.evaluate import EvalConfig
from gpt2_tf.data.prep import PrepOptions, prepare
from gpt2_tf.data.tasks import get_task
from gpt2_tf.train.trainer import TrainConfig
from tests.conftest import shared


@pytest.fixture(scope="module")
def poetry_stages(tokenizer, tmp_path_factory):
    """A few chinese-poetry documents prepared at seq_len 32 in two train stages."""
    folder = str(tmp_path_factory.mktemp("poetry_stages"))
    options = {"text_files": [shared("chinese_poetry")]}
    opts = PrepOptions(folder, seq_len=32, subsample=0.05, num_stages=2, task=options)
    prepare(get_task("text_tuning"), tokenizer, opts)
    return folder


def staged_config(data_dir, out) -> staged.StagedConfig:
    train = TrainConfig(
        data_dir=data_dir,
        output_dir=str(out),
        max_steps=2,
        batch_size=4,
        log_every=1,
        num_samples=0,
        eval_batches=1,
        strategy="one_device",
    )
    generation = EvalConfig(
        model_dir="", num_generations=2, max_new_tokens=4, embedder="gpt2", batch_size=16
    )
    return staged.StagedConfig(train, generation)


@pytest.mark.slow
def test_stages_train_in_turn_and_are_evaluated(poetry_stages, tmp_path):
    cfg = staged_config(poetry_stages, tmp_path)
    results = staged.run_staged(cfg)
    assert [row["stage"] for row in results["stages"]] == [0, 1, 2]
    for k, start in ((1, "tiny"), (2, str(tmp_path / "stage1" / "final"))):
        run = json.loads((tmp_path / f"stage{k}" / "train_config.json").read_text())
        assert (run["stage"], run["init_from"]) == (k, start)
        assert results["stages"][k]["train_steps"] == 2
    ppl = [row["validation_perplexity"] for row in results["stages"]]
    assert all(p > 1 for p in ppl) and len(set(ppl)) == 3  # each stage's own weights
    assert results["unit"] == "chars"  # Chinese text: distinct-n counts characters
    assert "starting model" in results["embedder"]
    out = tmp_path / "eval"
    with open(out / "stages.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["stage"] for r in rows] == ["0", "1", "2"]
    assert {
        "validation_perplexity",
        "test_perplexity",
        "distinct_2",
        "lexical_diversity",
        "local_coherence",
        "train_loss",
    } <= set(rows[0])
    assert json.loads((out / "stages.json").read_text())["num_stages"] == 2
    for name in ("metrics_by_stage.png", "training_loss.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 300
    report = (out / "report.md").read_text()
    assert "| stage0 | stage1 | stage2 |" in report and "non-space characters" in report
    # A finished stage is not trained again when the command is rerun.
    model_file = tmp_path / "stage1" / "final" / "model.safetensors"
    before = os.path.getmtime(model_file)
    assert staged.train_stage(cfg, 1) == str(tmp_path / "stage1" / "final")
    assert os.path.getmtime(model_file) == before


def test_unstaged_data_is_refused(dolly_dir):
    with pytest.raises(ValueError, match="--num_stages"):
        staged.num_stages(dolly_dir)

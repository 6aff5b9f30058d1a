"""Weight difference: hand-computed metrics of known tensors, models and a LoRA merge, clear errors
on mismatched checkpoints, saved folders, and the report's files."""

import csv
import os

import keras
import numpy as np
import pytest

from gpt2_tf import GPT2Config, GPT2LanguageModel, enable_lora, merge_lora
from gpt2_tf.analyses.weight_diff import (
    block_grid,
    compare_models,
    compare_states,
    diff_tensor,
    markdown_table,
    read_state,
    write_report,
)
from gpt2_tf.model.weights import state_of

CONFIG = GPT2Config.from_preset("tiny")


def test_known_2d_tensors():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 1.0], [0.0, 2.0]])  # D = [[0, 1], [0, 1]]
    d = diff_tensor("w", a, b)
    assert d.shape == (2, 2)
    assert d.mean_abs == pytest.approx(0.5) and d.max_abs == pytest.approx(1.0)
    assert d.std == pytest.approx(0.5)  # of 0, 1, 0, 1
    # rows: cos([1, 0], [1, 1]) = 1/sqrt(2); cos([0, 1], [0, 2]) = 1
    assert d.cosine == pytest.approx((1 / np.sqrt(2) + 1) / 2)
    assert d.euclidean == pytest.approx(1.0)  # both rows of D have norm 1
    assert d.relative == pytest.approx(np.sqrt(2) / np.sqrt(2))


def test_known_1d_tensor_is_one_row():
    d = diff_tensor("b", np.array([3.0, 4.0]), np.array([4.0, 3.0]))  # D = [1, -1]
    assert (d.mean_abs, d.max_abs, d.std) == pytest.approx((1.0, 1.0, 1.0))
    assert d.cosine == pytest.approx(24 / 25)
    assert d.euclidean == pytest.approx(np.sqrt(2))
    assert d.relative == pytest.approx(np.sqrt(2) / 5)


def test_zero_rows_have_no_cosine():
    d = diff_tensor("w", np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert d.cosine == pytest.approx(0.0)  # only row 2 counts: cos([1, 0], [0, 1])
    zero = diff_tensor("ln.bias", np.zeros(4), np.zeros(4))
    assert np.isnan(zero.cosine) and np.isnan(zero.relative) and zero.max_abs == 0
    assert "n/a" in markdown_table([zero])


def test_two_models_with_one_known_change():
    keras.utils.set_random_seed(0)
    a = GPT2LanguageModel(CONFIG)
    b = GPT2LanguageModel(CONFIG)
    b.set_weights(a.get_weights())
    bias = b.backbone.blocks[1].mlp.c_fc.bias
    delta = np.arange(bias.shape[0], dtype=np.float32) / 100.0
    bias.assign(np.asarray(bias) + delta)
    diffs = {d.name: d for d in compare_models(a, b)}
    assert list(diffs) == list(state_of(a))
    changed = diffs.pop("h.1.mlp.c_fc.bias")
    assert changed.mean_abs == pytest.approx(delta.mean(), rel=1e-5)
    assert changed.max_abs == pytest.approx(delta.max(), rel=1e-5)
    assert changed.std == pytest.approx(delta.std(), rel=1e-4)
    assert changed.euclidean == pytest.approx(np.linalg.norm(delta), rel=1e-5)
    assert all(d.max_abs == 0 and d.euclidean == 0 for d in diffs.values())
    assert all(d.cosine == pytest.approx(1.0) for d in diffs.values() if not np.isnan(d.cosine))


def test_lora_merge_changes_only_the_adapted_kernels_by_scale_a_b():
    keras.utils.set_random_seed(1)
    model = GPT2LanguageModel(CONFIG)
    before = state_of(model)
    enable_lora(model, 2, alpha=4.0, targets=("c_attn",))
    dense = model.backbone.blocks[0].attn.c_attn
    dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.01, np.float32))
    a, b = np.asarray(dense.lora_kernel_a), np.asarray(dense.lora_kernel_b)
    merge_lora(model)
    diffs = {d.name: d for d in compare_states(before, state_of(model))}
    update = (4.0 / 2) * (a @ b)
    d = diffs.pop("h.0.attn.c_attn.weight")
    assert d.max_abs == pytest.approx(np.abs(update).max(), rel=1e-4)
    assert d.euclidean == pytest.approx(np.linalg.norm(update, axis=1).mean(), rel=1e-4)
    assert all(x.max_abs == 0 for x in diffs.values())


def test_mismatched_checkpoints_name_the_key():
    a = {"wte.weight": np.zeros((4, 2)), "h.0.ln_1.bias": np.ones(2)}
    with pytest.raises(KeyError, match=r"only in base: \['h.0.ln_1.bias'\]"):
        compare_states(a, {"wte.weight": np.zeros((4, 2))}, "base", "tuned")
    with pytest.raises(ValueError, match=r"key 'wte.weight': shape \(4, 2\) in A, \(5, 2\) in B"):
        compare_states(a, {**a, "wte.weight": np.zeros((5, 2))})
    # The tied head and the causal-mask buffers are not parameters: ignored on either side.
    extra = {**a, "lm_head.weight": np.zeros((4, 2)), "h.0.attn.bias": np.ones((1, 1, 2, 2))}
    assert [d.name for d in compare_states(a, extra)] == list(a)


@pytest.fixture(scope="module")
def two_random_models():
    keras.utils.set_random_seed(2)
    return compare_models(GPT2LanguageModel(CONFIG), GPT2LanguageModel(CONFIG))


def test_block_grid_is_blocks_by_kinds(two_random_models):
    diffs = two_random_models
    blocks, kinds, grid = block_grid(diffs, "mean_abs")
    assert blocks == ["h.0", "h.1"] and len(kinds) == 12 and grid.shape == (2, 12)
    assert kinds[:2] == ["ln_1.weight", "ln_1.bias"]
    by_name = {d.name: d.mean_abs for d in diffs}
    assert grid[1, kinds.index("mlp.c_proj.weight")] == by_name["h.1.mlp.c_proj.weight"]


def test_report_files(two_random_models, tmp_path):
    diffs = two_random_models
    paths = write_report(diffs, str(tmp_path), "A", "B", "cosine")
    assert all(os.path.getsize(p) > 0 for p in paths.values())
    with open(paths["csv"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [d.name for d in diffs]
    assert float(rows[0]["max_abs"]) == pytest.approx(diffs[0].max_abs)


def test_saved_folders_compare_like_the_models(tmp_path):
    """What `make weight-diff` does (`pipelines/weight_diff.py` adds only flags and printing)."""
    keras.utils.set_random_seed(4)
    base = GPT2LanguageModel(CONFIG)
    tuned = GPT2LanguageModel(CONFIG)
    tuned.set_weights(base.get_weights())
    ln = tuned.backbone.ln_f.gamma
    ln.assign(np.asarray(ln) * 2.0)  # gamma starts at ones: D = ones, relative change 1
    base.save_pretrained(str(tmp_path / "base"))
    tuned.save_pretrained(str(tmp_path / "tuned"))
    state = read_state(str(tmp_path / "base"))
    assert all(np.array_equal(state[k], v) for k, v in state_of(base).items())
    diffs = compare_states(state, read_state(str(tmp_path / "tuned")))
    assert [d.name for d in diffs] == list(state_of(base))  # the model's order, not the file's
    assert "| ln_f.weight | 64 | 1 | 1 | 0 | 1 | 8 | 1 |" in markdown_table(diffs)
    assert sum(d.max_abs > 0 for d in diffs) == 1

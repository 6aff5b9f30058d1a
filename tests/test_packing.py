"""Packing for LM tasks (`gpt2_tf.data.packing`) on the real Dolly sample, prepared at seq_len 256
(the training runs use conftest's `dolly_dir`, at 64): a packed batch gives each example the NLL
and the gradient it gets padded, no example sees another, the packer is deterministic, seeded per
epoch and complete, and training with packing resumes to the same weights. (a)-(c) run on both
the plain and the speed path."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import GPT2Config, GPT2LanguageModel
from gpt2_tf.core import run_folder
from gpt2_tf.data.packing import PackedSplit, pack_plan
from gpt2_tf.data.records import _parse_fn, read_metadata, split_files
from gpt2_tf.model import losses
from gpt2_tf.train.trainer import TrainConfig, Trainer
from tests.conftest import _prepared, shared

SEQ_LEN = 256
CONFIG = GPT2Config.from_preset("tiny", n_head=4, dropout=0.0, n_positions=SEQ_LEN)
N = 24  # examples compared packed and padded


@pytest.fixture(params=["speed", "plain"])
def path(request, monkeypatch):
    monkeypatch.setenv("GPT2_TF_PLAIN", "1" if request.param == "plain" else "0")
    return request.param


@pytest.fixture(scope="module")
def dolly256(tokenizer, tmp_path_factory):
    """The real Dolly sample at seq_len 256: 134 tokens an example on average."""
    return _prepared(
        tokenizer,
        tmp_path_factory.mktemp("dolly256"),
        "instruction_tuning",
        SEQ_LEN,
        input_jsonl=shared("dolly", "dolly_first743.jsonl"),
    )


@pytest.fixture(scope="module")
def packed(dolly256):
    return PackedSplit(dolly256, "train")


def _model():
    keras.utils.set_random_seed(3)
    return GPT2LanguageModel(CONFIG)


def _padded(data_dir, indices):
    """The examples `indices` as the padded path reads them (records.py's parser), in the split's
    file order, which is PackedSplit's."""
    meta = read_metadata(data_dir)
    records = tf.data.Dataset.from_tensor_slices(split_files(data_dir, "train"))
    records = records.flat_map(tf.data.TFRecordDataset).take(max(indices) + 1)
    rows = list(records.map(_parse_fn(meta)))
    x = {k: tf.stack([rows[i][0][k] for i in indices]) for k in ("token_ids", "padding_mask")}
    return x, tf.stack([rows[i][1] for i in indices]), tf.stack([rows[i][2] for i in indices])


def _packed_batch(packed, indices):
    plan = pack_plan(packed.lengths[indices], packed.seq_len)
    plan = [[indices[j] for j in row] for row in plan]
    x, y, w = packed.rows(plan)
    return plan, {k: tf.constant(v) for k, v in x.items()}, tf.constant(y), tf.constant(w)


def _where(plan):
    """{example index: (row, segment id)}."""
    return {i: (r, k) for r, row in enumerate(plan) for k, i in enumerate(row, start=1)}


def test_packed_batch_holds_several_examples_per_row(packed):
    indices = list(range(N))
    plan, x, _, _ = _packed_batch(packed, indices)
    assert len(plan) < N and max(len(row) for row in plan) >= 3
    assert sorted(i for row in plan for i in row) == indices
    # The point of it: the split in far fewer rows than examples.
    assert len(packed.plan(seed=0, epoch=0)) < 0.6 * len(packed)


def test_per_example_nll_equals_padded(packed, dolly256, path):
    """(a) Each example's NLL sum (the training loss function, training=True, dropout 0) and its
    target count are those of the same example padded, within 1e-5."""
    model = _model()
    indices = list(range(N))
    plan, x, y, w = _packed_batch(packed, indices)
    px, py, pw = _padded(dolly256, indices)
    seg = x["segment_ids"]
    where = _where(plan)
    for n, i in enumerate(indices):
        r, k = where[i]
        in_example = tf.cast(
            (seg == k) & (tf.range(len(plan))[:, None] == r), tf.float32
        )  # [rows, T]
        one = tf.one_hot(n, N)[:, None]  # [N, 1]
        nll, count, _ = losses.lm_target_sums(model, x, y, w * in_example, training=True)
        ref_nll, ref_count, _ = losses.lm_target_sums(model, px, py, pw * one, training=True)
        assert float(count) == float(ref_count)
        np.testing.assert_allclose(float(nll), float(ref_nll), rtol=1e-6, atol=1e-5)
    # The whole batch: the same sums.
    total = losses.lm_target_sums(model, x, y, w)
    ref = losses.lm_target_sums(model, px, py, pw)
    np.testing.assert_allclose([float(v) for v in total], [float(v) for v in ref], atol=1e-4)


def test_per_example_logits_equal_padded(packed, dolly256, path):
    """(a) Every real token's logits, packed and padded."""
    model = _model()
    indices = list(range(N))
    plan, x, _, _ = _packed_batch(packed, indices)
    px, _, _ = _padded(dolly256, indices)
    logits, ref = model(x).numpy(), model(px).numpy()
    for r, row in enumerate(plan):
        start = 0
        for i in row:
            n = int(packed.lengths[i])
            np.testing.assert_allclose(
                logits[r, start : start + n], ref[indices.index(i), :n], atol=1e-5
            )
            start += n


def test_packed_gradient_equals_padded(packed, dolly256, path):
    """(b) The gradient of the summed NLL of a packed batch is that of the same examples padded."""
    model = _model()
    indices = list(range(N))
    _, x, y, w = _packed_batch(packed, indices)
    px, py, pw = _padded(dolly256, indices)

    def grads(x, y, w):
        with tf.GradientTape() as tape:
            nll = losses.lm_target_sums(model, x, y, w, training=True)[0]
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(nll, model.variables)]

    for a, b in zip(grads(x, y, w), grads(px, py, pw)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_an_example_never_changes_another_in_its_row(packed, path):
    """(c) New tokens for one example leave every other example's logits in the row as they were,
    in inference and in training mode (the speed path's attention)."""
    model = _model()
    _, x, _, _ = _packed_batch(packed, list(range(N)))
    seg = x["segment_ids"].numpy()
    r = int(np.argmax(seg.max(axis=1)))  # the row with the most examples
    assert seg[r].max() >= 3
    for k in range(1, seg[r].max() + 1):
        ids = x["token_ids"].numpy()
        rng = np.random.default_rng(k)
        ids[r, seg[r] == k] = rng.integers(0, CONFIG.vocab_size, (seg[r] == k).sum())
        changed = {**x, "token_ids": tf.constant(ids)}
        for training in (False, True):
            before = model.backbone(x, training=training).numpy()[r]
            after = model.backbone(changed, training=training).numpy()[r]
            others = (seg[r] != k) & (seg[r] > 0)
            np.testing.assert_allclose(after[others], before[others], atol=1e-6)
            assert np.abs(after[seg[r] == k] - before[seg[r] == k]).max() > 1e-3


def test_positions_restart_per_example():
    from gpt2_tf.model.gpt2 import positions_from_segments

    seg = tf.constant([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        positions_from_segments(seg).numpy(),
        [[0, 1, 2, 0, 1, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]],
    )


def test_rows_carry_each_example_whole_with_its_own_targets(packed, dolly256):
    """(d) Never split: each example's tokens lie whole in one row, in order; its weights and
    labels are those of its padded record, and a boundary has no target."""
    plan = packed.plan(seed=0, epoch=0)
    x, y, w = packed.rows(plan)
    sample = sorted(i for row in plan[:6] for i in row)
    px, py, pw = (t.numpy() if not isinstance(t, dict) else t for t in _padded(dolly256, sample))
    for r, row in enumerate(plan[:6]):
        start = 0
        for k, i in enumerate(row, start=1):
            n, p = int(packed.lengths[i]), sample.index(i)
            span = slice(start, start + n)
            assert (x["segment_ids"][r, span] == k).all()
            np.testing.assert_array_equal(x["token_ids"][r, span], px["token_ids"][p, :n])
            np.testing.assert_array_equal(w[r, span], pw[p, :n])
            targets = pw[p, :n] > 0
            np.testing.assert_array_equal(y[r, span][targets], py[p, :n][targets])
            assert w[r, start + n - 1] == 0  # the last token of an example predicts nothing
            start += n
        assert (x["segment_ids"][r, start:] == 0).all() and (w[r, start:] == 0).all()
        assert (x["padding_mask"][r] == (x["segment_ids"][r] > 0)).all()


def test_packer_is_deterministic_seeded_per_epoch_and_complete(packed):
    """(d) Same seed and epoch: same rows; another epoch or seed: other rows; every example once
    per epoch; no row over seq_len."""
    a, again = packed.plan(seed=0, epoch=0), packed.plan(seed=0, epoch=0)
    assert a == again
    assert packed.plan(seed=0, epoch=1) != a
    assert packed.plan(seed=1, epoch=0) != a
    for plan in (a, packed.plan(seed=0, epoch=1), packed.plan(seed=5, epoch=3)):
        assert sorted(i for row in plan for i in row) == list(range(len(packed)))
        assert max(sum(packed.lengths[i] for i in row) for row in plan) <= packed.seq_len
    ds_a = packed.dataset(4, seed=0, epoch=0)
    ds_b = packed.dataset(4, seed=0, epoch=0)
    for (xa, ya, wa), (xb, yb, wb) in zip(ds_a, ds_b):
        np.testing.assert_array_equal(xa["token_ids"], xb["token_ids"])
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(wa, wb)


def test_first_fit():
    # 5 goes to the first row with room (row 0), 9 opens row 2, 1 fills row 0's last slot.
    assert pack_plan([6, 8, 3, 9, 1], 10) == [[0, 2, 4], [1], [3]]
    assert pack_plan([4, 4], 10, order=[1, 0]) == [[1, 0]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_plan([11], 10)


def _config(data_dir, out, **kw):
    base = dict(
        data_dir=data_dir,
        output_dir=str(out),
        batch_size=8,
        max_steps=0,
        epochs=2,
        log_every=2,
        save_every=2,
        num_samples=0,
        dropout=0.0,
        learning_rate=2e-3,
        strategy="one_device",
        precision="float32",
        packing=True,
    )
    return TrainConfig(**{**base, **kw})


def test_epochs_are_the_packed_rows_full_batches(dolly_dir, tmp_path):
    packed = PackedSplit(dolly_dir, "train")
    trainer = Trainer(_config(dolly_dir, tmp_path, batch_size=32))
    steps = [len(packed.plan(seed=0, epoch=e)) // 32 for e in range(2)]
    assert [trainer.epoch_steps(e) for e in range(2)] == steps
    assert trainer.total_steps == sum(steps)
    assert trainer.steps_per_epoch < len(packed) // 32  # fewer steps than padded rows
    assert trainer.locate(steps[0]) == (1, 0) and trainer.locate(steps[0] - 1) == (0, steps[0] - 1)
    trainer.close()


def test_training_packs_rows_and_resumes_to_the_same_weights(dolly_dir, tmp_path, monkeypatch):
    """(e) A packed run stopped in its second epoch and resumed ends with the weights of a run
    that was never stopped."""
    first_epoch = len(PackedSplit(dolly_dir, "train").plan(seed=0, epoch=0)) // 32
    cfg = dict(batch_size=32, max_steps=first_epoch + 4)
    whole = Trainer(_config(dolly_dir, tmp_path / "whole", **cfg))
    whole.run()

    stop_at = first_epoch + 3  # in the second epoch, after a checkpoint (save_every=2)
    if stop_at % 2 == 0:
        stop_at -= 1
    killed = Trainer(_config(dolly_dir, tmp_path / "killed", **cfg))
    real_after_step = killed._after_step

    def crash(step, out):
        if step == stop_at:
            raise KeyboardInterrupt("stopped")
        return real_after_step(step, out)

    monkeypatch.setattr(killed, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    saved = run_folder.checkpoint_step(str(tmp_path / "killed" / run_folder.CHECKPOINTS))
    assert saved == stop_at - 1 - (stop_at - 1) % 2  # it resumes mid-epoch from there
    resumed = Trainer(_config(dolly_dir, tmp_path / "killed", **cfg))
    assert resumed.locate(stop_at - 1)[0] == 1
    result = resumed.run()
    assert result["steps"] == whole.total_steps
    for a, b in zip(whole.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_grad_accumulation_with_packing(dolly_dir, tmp_path):
    one = Trainer(_config(dolly_dir, tmp_path / "a", max_steps=3))
    one.run()
    accumulated = Trainer(_config(dolly_dir, tmp_path / "b", max_steps=3, grad_accum_steps=2))
    accumulated.run()
    for a, b in zip(one.model.trainable_variables, accumulated.model.trainable_variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_classifier_uses_length_buckets_not_packing(emotion_dir, tmp_path):
    trainer = Trainer(_config(emotion_dir, tmp_path, max_steps=1))
    assert not trainer.packing and trainer.bucketing  # tests/test_buckets.py
    assert dataclasses.asdict(trainer.cfg)["packing"]

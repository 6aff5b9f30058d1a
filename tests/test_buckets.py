"""Length buckets for classifier tasks (`gpt2_tf.data.buckets`) on the real emotion set (conftest's
`emotion_dir`, seq_len 64): a bucketed (cropped) batch gives each example the logits, loss and
gradient of its padded row, the plan is deterministic, seeded per epoch, complete but for one
dropped partial batch and never crops a real token, and training in buckets traces its step once
and resumes to the same weights; `--nopacking` keeps padded rows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import GPT2Config
from gpt2_tf.core import run_folder
from gpt2_tf.data.buckets import BucketSplit, bucket_lengths, bucket_plan
from gpt2_tf.data.records import _parse_fn, read_metadata, split_files
from gpt2_tf.model import losses
from gpt2_tf.model.gpt2 import GPT2Classifier
from gpt2_tf.train.trainer import TrainConfig, Trainer

N = 24  # examples compared bucketed and padded


@pytest.fixture(scope="module")
def buckets(emotion_dir):
    return BucketSplit(emotion_dir, "train")


def _model(num_classes, pooling="last"):
    keras.utils.set_random_seed(3)
    config = GPT2Config.from_preset("tiny", n_head=4, dropout=0.0, n_positions=64)
    return GPT2Classifier(config, num_classes=num_classes, pooling=pooling)


def _padded(data_dir, indices):
    """The examples `indices` as the padded path reads them (records.py's parser), in the split's
    file order, which BucketSplit's is."""
    meta = read_metadata(data_dir)
    records = tf.data.Dataset.from_tensor_slices(split_files(data_dir, "train"))
    records = records.flat_map(tf.data.TFRecordDataset).take(max(indices) + 1)
    rows = list(records.map(_parse_fn(meta)))
    x = {k: tf.stack([rows[i][0][k] for i in indices]) for k in ("token_ids", "padding_mask")}
    return x, tf.stack([rows[i][1] for i in indices]), tf.stack([rows[i][2] for i in indices])


def _short(buckets, n=N):
    """`n` examples that all fit the shortest bucket but one, so cropping removes padding."""
    fits = np.flatnonzero(buckets.lengths <= buckets.buckets[1])
    return [int(i) for i in fits[:n]]


def test_bucket_lengths():
    assert bucket_lengths(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert bucket_lengths(100) == [*range(8, 100, 8), 100]
    assert bucket_lengths(12) == [8, 12]
    assert bucket_lengths(64, shortest=10) == [16, 24, 32, 40, 48, 56, 64]  # 8 would hold none


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_bucketed_logits_equal_padded(buckets, emotion_dir, pooling):
    indices = _short(buckets)
    length = buckets.buckets[1]
    x, y, w = buckets.batch(length, indices)
    assert x["token_ids"].shape == (N, length) < (N, buckets.seq_len)
    px, py, pw = _padded(emotion_dir, indices)
    np.testing.assert_array_equal(y, py)
    np.testing.assert_array_equal(x["token_ids"], px["token_ids"][:, :length])
    model = _model(len(read_metadata(emotion_dir)["label_names"]), pooling)
    cropped = model({k: tf.constant(v) for k, v in x.items()})
    padded = model(px)
    np.testing.assert_allclose(cropped, padded, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(cropped, -1), np.argmax(padded, -1))


def test_bucketed_loss_and_gradient_equal_padded(buckets, emotion_dir):
    indices = _short(buckets)
    x, y, w = buckets.batch(buckets.buckets[1], indices)
    px, py, pw = _padded(emotion_dir, indices)
    model = _model(len(read_metadata(emotion_dir)["label_names"]))

    def sums_and_grads(x, y, w):
        with tf.GradientTape() as tape:
            nll, count, correct = losses.batch_sums(y, model(x, training=True), w)
        return (nll, count, correct), tape.gradient(nll, model.trainable_variables)

    (nll, count, correct), grads = sums_and_grads(
        {k: tf.constant(v) for k, v in x.items()}, tf.constant(y), tf.constant(w)
    )
    (pnll, pcount, pcorrect), pgrads = sums_and_grads(px, py, pw)
    np.testing.assert_allclose(float(nll), float(pnll), rtol=1e-5)
    assert float(count) == float(pcount) == N and float(correct) == float(pcorrect)
    for g, pg in zip(grads, pgrads):
        np.testing.assert_allclose(
            np.asarray(tf.convert_to_tensor(g)), np.asarray(tf.convert_to_tensor(pg)), atol=1e-5
        )


def test_plan_is_deterministic_seeded_per_epoch_complete_and_never_crops(buckets):
    a = buckets.plan(32, seed=0, epoch=0)
    assert a == buckets.plan(32, seed=0, epoch=0)
    assert buckets.plan(32, seed=0, epoch=1) != a
    assert buckets.plan(32, seed=1, epoch=0) != a
    for plan in (a, buckets.plan(32, seed=0, epoch=1), buckets.plan(7, seed=5, epoch=3)):
        size = len(plan[0][1])
        seen = [i for _, batch in plan for i in batch]
        assert len(seen) == len(set(seen))  # at most once
        assert len(buckets) - len(seen) < size  # one partial batch dropped at most
        assert all(len(batch) == size for _, batch in plan)
        assert {length for length, _ in plan} <= set(buckets.buckets)
        assert len({length for length, _ in plan}) > 1  # several shapes, not all seq_len
        for length, batch in plan:
            assert buckets.lengths[batch].max() <= length  # no real token cropped
    # Evaluation keeps everything: a last partial batch, every example once.
    kept = buckets.plan(7, shuffle=False, drop_remainder=False)
    assert sorted(i for _, batch in kept for i in batch) == list(range(len(buckets)))


def test_leftovers_move_up_a_bucket():
    # Bucket 8: [0, 1, 2] -> a batch [0, 1], 2 moves up; bucket 16: [2, 3, 4] -> [2, 3], 4
    # remains (dropped, or last when kept).
    lengths = [3, 5, 7, 12, 16]
    assert bucket_plan(lengths, [8, 16], 2) == [(8, [0, 1]), (16, [2, 3])]
    assert bucket_plan(lengths, [8, 16], 2, drop_remainder=False)[-1] == (16, [4])
    with pytest.raises(ValueError, match="exceeds"):
        bucket_plan([17], [8, 16], 2)


def test_dataset_follows_the_plan_in_micro_batches(buckets):
    plan = buckets.plan(8, seed=2, epoch=0)[:5]
    parts = list(buckets.dataset(plan, split_into=2))
    assert len(parts) == 10
    for k, (x, y, _) in enumerate(parts):
        length, batch = plan[k // 2]
        half = batch[(k % 2) * 4 : (k % 2) * 4 + 4]
        want, want_y, _ = buckets.batch(length, half)
        np.testing.assert_array_equal(x["token_ids"], want["token_ids"])
        np.testing.assert_array_equal(x["padding_mask"], want["padding_mask"])
        np.testing.assert_array_equal(y, want_y)


def _config(data_dir, out, **kw):
    base = dict(
        data_dir=data_dir,
        output_dir=str(out),
        batch_size=32,
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
        eval_batches=2,
    )
    return TrainConfig(**{**base, **kw})


def test_epochs_are_the_planned_batches(emotion_dir, tmp_path):
    buckets = BucketSplit(emotion_dir, "train")
    trainer = Trainer(_config(emotion_dir, tmp_path, batch_size=48))
    assert trainer.bucketing and not trainer.packing
    steps = [len(buckets.plan(48, seed=0, epoch=e)) for e in range(2)]
    assert [trainer.epoch_steps(e) for e in range(2)] == steps
    assert trainer.total_steps == sum(steps)
    assert trainer.locate(steps[0]) == (1, 0) and trainer.locate(steps[0] - 1) == (0, steps[0] - 1)
    trainer.close()


def test_training_in_buckets_traces_once_and_resumes_to_the_same_weights(
    emotion_dir, tmp_path, monkeypatch
):
    """A bucketed run over several bucket lengths traces its step once; one stopped and resumed
    ends with the weights of a run that was never stopped."""
    cfg = dict(max_steps=9, grad_accum_steps=2)
    whole = Trainer(_config(emotion_dir, tmp_path / "whole", **cfg))
    assert len({length for length, _ in whole._plan(0)[:9]}) > 1
    whole.run()
    assert whole.step.experimental_get_tracing_count() == 1

    stop_at = 7  # after the checkpoint at step 6 (save_every=2)
    killed = Trainer(_config(emotion_dir, tmp_path / "killed", **cfg))
    real_after_step = killed._after_step

    def crash(step, out):
        if step == stop_at:
            raise KeyboardInterrupt("stopped")
        return real_after_step(step, out)

    monkeypatch.setattr(killed, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert run_folder.checkpoint_step(str(tmp_path / "killed" / run_folder.CHECKPOINTS)) == 6
    resumed = Trainer(_config(emotion_dir, tmp_path / "killed", **cfg))
    result = resumed.run()
    assert result["steps"] == 9
    for a, b in zip(whole.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bucketed_validation_equals_padded(emotion_dir, tmp_path):
    """Validation over buckets gives the padded loss, accuracy and macro F1 (all examples)."""
    trainer = Trainer(_config(emotion_dir, tmp_path / "b", max_steps=1, eval_batches=0))
    bucketed = trainer.evaluate()
    trainer.bucketing = False
    padded = trainer.evaluate()
    trainer.close()
    assert bucketed["accuracy"] == pytest.approx(padded["accuracy"], abs=1e-9)
    assert bucketed["macro_f1"] == pytest.approx(padded["macro_f1"], abs=1e-9)
    assert bucketed["loss"] == pytest.approx(padded["loss"], rel=1e-5)


def test_nopacking_keeps_padded_rows(emotion_dir, tmp_path):
    trainer = Trainer(_config(emotion_dir, tmp_path, max_steps=1, packing=False))
    assert not trainer.bucketing and not trainer._buckets
    x, _, _ = next(iter(trainer._epoch_dataset(0, 0)))
    assert x["token_ids"].shape == (32, 64)
    assert trainer.epoch_steps(0) == len(BucketSplit(emotion_dir, "train")) // 32
    trainer.close()

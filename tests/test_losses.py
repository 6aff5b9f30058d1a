"""The fused, chunked LM head loss equals autodiff through the plain logits and TF's own
cross-entropy: the sums, and the gradients for the hidden states and the embedding table."""

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.model import losses
from gpt2_tf.model.speed import fused_head


def _inputs(dtype, n=37, e=16, v=301, seed=0):
    rng = np.random.default_rng(seed)
    hidden = tf.cast(rng.normal(size=(n, e)) * 2, dtype)
    table = tf.constant(rng.normal(size=(v, e)), tf.float32)
    labels = tf.constant(rng.integers(0, v, n), tf.int32)
    weights = tf.constant(rng.choice([0.0, 1.0, 0.5], n), tf.float32)
    return hidden, table, labels, weights


def _reference(hidden, table, labels, weights):
    with tf.GradientTape() as tape:
        tape.watch([hidden, table])
        logits = tf.matmul(hidden, tf.cast(table, hidden.dtype), transpose_b=True)
        sums = losses.batch_sums(labels, logits, weights)
        loss = sums[0] * 3.0
    return sums, tape.gradient(loss, [hidden, table])


def _fused(hidden, table, labels, weights, chunk_rows, table_grad=True, **kwargs):
    with tf.GradientTape() as tape:
        tape.watch([hidden, table])
        sums = fused_head.tied_head_sums(
            hidden, table, labels, weights, table_grad=table_grad, chunk_rows=chunk_rows, **kwargs
        )
        loss = sums[0] * 3.0
    return sums, tape.gradient(loss, [hidden, table])


@pytest.mark.parametrize("chunk_rows", [5, 37, 512])
def test_fused_head_equals_autodiff_float32(chunk_rows):
    args = _inputs(tf.float32)
    (nll, count, correct), (dh, dt) = _fused(*args, chunk_rows)
    (rnll, rcount, rcorrect), (rdh, rdt) = _reference(*args)
    np.testing.assert_allclose(nll, rnll, rtol=1e-5)
    assert float(count) == float(rcount) and float(correct) == float(rcorrect)
    np.testing.assert_allclose(dh, rdh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dt, rdt, rtol=1e-4, atol=1e-5)
    # Weight-0 rows get no gradient at all.
    zero_rows = np.asarray(args[3]) == 0
    assert zero_rows.any() and not np.asarray(dh)[zero_rows].any()


@pytest.mark.parametrize("vocab_split", [64, 8192])  # 301 = 4 x 64 + 45, and one product
def test_fused_head_bfloat16_and_frozen_table(vocab_split):
    args = _inputs(tf.bfloat16)
    (nll, count, _), (dh, dt) = _fused(*args, 8, table_grad=False, vocab_split=vocab_split)
    (rnll, rcount, _), (rdh, _) = _reference(*args)
    np.testing.assert_allclose(nll, rnll, rtol=1e-4)
    assert dh.dtype == tf.bfloat16 and dt is None  # no gradient flows to a frozen table
    np.testing.assert_allclose(
        tf.cast(dh, tf.float32), tf.cast(rdh, tf.float32), rtol=2e-2, atol=2e-2
    )


def test_eval_path_matches_and_large_losses_stay_finite():
    hidden, table, labels, weights = _inputs(tf.float32)
    hidden = hidden * 200.0  # NLLs in the thousands: exp would underflow a plain softmax
    got = fused_head.tied_head_sums(hidden, table, labels, weights, training=False, chunk_rows=7)
    want = _reference(hidden, table, labels, weights)[0]
    assert np.isfinite(float(got[0])) and float(got[0]) > 1000
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[2], want[2])

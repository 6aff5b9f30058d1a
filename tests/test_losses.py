"""The fused, chunked LM head loss equals autodiff through the plain logits and TF's own
cross-entropy: the sums, and the gradients for the hidden states and the embedding table."""

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.core import hardware
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


@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize("vocab_split", [64, 8192])  # 301 = 4 x 64 + 45, and one product
def test_fused_head_bfloat16_and_frozen_table(vocab_split, amx, monkeypatch):
    # The vocabulary slices run where oneDNN has AMX: here on every machine, as there.
    monkeypatch.setattr(hardware, "onednn_uses_amx", lambda: amx)
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


def _table_grad_graph(tied: bool, dtype):
    """(A graph function's (lookup, NLL sum, the table's gradient), its graph) for a lookup of
    repeated ids and the fused head over the looked-up rows, with the table read twice
    (autodiff's aggregation) or through `tied_lookup`."""
    hidden, table, labels, weights = _inputs(tf.float32, n=12)
    ids = tf.constant([[3, 7, 3, 0], [7, 7, 299, 3], [1, 2, 3, 4]], tf.int32)

    @tf.function
    def run(table):
        with tf.GradientTape() as tape:
            tape.watch(table)
            if tied:
                tokens, head_table = fused_head.tied_lookup(table, ids, dtype)
            else:
                tokens, head_table = tf.cast(tf.gather(table, ids), dtype), table
            h = tf.reshape(tokens, [12, -1]) * tf.cast(hidden, dtype)
            nll = fused_head.tied_head_sums(h, head_table, labels, weights, chunk_rows=5)[0]
            loss = nll * 3.0
        return tokens, nll, tf.convert_to_tensor(tape.gradient(loss, table))

    return lambda: run(table), run.get_concrete_function(table).graph


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_tied_lookup_adds_the_lookup_rows_into_the_head_gradient(dtype):
    (tied, tied_graph), (plain, plain_graph) = (_table_grad_graph(t, dtype) for t in (True, False))
    for got, want in zip(tied(), plain()):
        np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32), rtol=1e-5)
    # Autodiff makes the lookup's rows a dense [V, E] gradient and adds the head's to it; the
    # tied lookup scatters them into the head's, with the scatter that can take over its input's
    # buffer (TensorScatterAdd copies it).
    ops = {
        name: {op.type for op in graph.get_operations()}
        for name, graph in (("tied", tied_graph), ("plain", plain_graph))
    }
    assert "UnsortedSegmentSum" in ops["plain"] and "UnsortedSegmentSum" not in ops["tied"]
    assert "ScatterNdNonAliasingAdd" in ops["tied"] and "TensorScatterAdd" not in ops["tied"]


def test_tied_lookup_scatter_in_an_xla_program():
    """XLA has no ScatterNdNonAliasingAdd kernel: inside an XLA program the tied lookup scatters
    with TensorScatterAdd, to the same gradient."""
    table = tf.random.stateless_normal([300, 16], seed=[3, 4])
    ids = tf.constant([[3, 7, 3, 0], [7, 7, 299, 3]], tf.int32)

    def grad(table):
        with tf.GradientTape() as tape:
            tape.watch(table)
            tokens, head_table = fused_head.tied_lookup(table, ids, tf.float32)
            loss = tf.reduce_sum(tokens**2) + tf.reduce_sum(head_table[:5] * 3.0)
        return tape.gradient(loss, table)

    got = tf.function(grad, jit_compile=True)(table)
    np.testing.assert_allclose(got, tf.function(grad)(table), rtol=1e-6)
    want = tf.tensor_scatter_nd_add(
        tf.pad(tf.fill([5, 16], 3.0), [[0, 295], [0, 0]]),
        tf.reshape(ids, [-1, 1]),
        2.0 * tf.gather(table, tf.reshape(ids, [-1])),
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)

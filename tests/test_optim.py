"""The fused AdamW (one XLA update per variable) gives Keras's AdamW results: weights, moments
and step count, with decay on and off and with the decay exclusions (bias, embeddings)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.train.optim import NO_DECAY, PreReducedAdamW, WarmupSchedule


def _variables(seed):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=(7, 5)).astype("float32"), name="kernel"),
        keras.Variable(rng.normal(size=(5,)).astype("float32"), name="bias"),
        keras.Variable(rng.normal(size=(11, 3)).astype("float32"), name="embeddings"),
    ]


def _run(opt, variables, steps):
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables] for _ in range(steps)]

    @tf.function
    def step(g):
        opt.apply(g, variables)

    for g in grads:
        step([tf.constant(x) for x in g])
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("amsgrad", [False, True])  # the XLA update, and Keras's own ops
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_adamw_matches_keras_adamw(weight_decay, amsgrad):
    schedule = WarmupSchedule(1e-2, 2, 6, "linear")
    kw = dict(learning_rate=schedule, weight_decay=weight_decay, epsilon=1e-8, amsgrad=amsgrad)
    ours = PreReducedAdamW(**kw)
    ref = keras.optimizers.AdamW(**kw)
    for opt in (ours, ref):
        opt.exclude_from_weight_decay(var_names=NO_DECAY)
    a, b = _variables(0), _variables(0)
    ours.build(a)
    ref.build(b)
    got, want = _run(ours, a, 6), _run(ref, b, 6)
    start = [v.numpy() for v in _variables(0)]
    for g, w, s in zip(got, want, start):
        assert not np.allclose(g, s)  # the weights did move
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    for x, y in zip(ours.variables, ref.variables):  # moments and the step count too
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_apply_scaled_equals_apply_of_scaled_gradients():
    schedule = WarmupSchedule(1e-2, 0, 4, "constant")
    ours = PreReducedAdamW(learning_rate=schedule, weight_decay=0.1, epsilon=1e-8)
    ref = PreReducedAdamW(learning_rate=schedule, weight_decay=0.1, epsilon=1e-8)
    a, b = _variables(0), _variables(0)
    ours.build(a)
    ref.build(b)
    grads = [np.random.default_rng(2).normal(size=v.shape).astype("float32") for v in a]
    factor = tf.constant(0.37)
    tf.function(lambda: ours.apply_scaled([tf.constant(g) for g in grads], a, factor))()
    tf.function(lambda: ref.apply([tf.constant(g) * factor for g in grads], b))()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6, atol=1e-7)
    assert ours._factor is None  # cleared after the call

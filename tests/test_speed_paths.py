"""The speed paths (`gpt2_tf/model/speed/`) against the plain GPT-2 they replace: with
GPT2_TF_PLAIN=1 and without, a tiny float32 model gives the same logits, LM losses, gradients and
greedy tokens. The last tests check the switch really changes the path taken."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import GPT2Config, GPT2LanguageModel
from gpt2_tf.model import losses, speed
from gpt2_tf.model.generation import Generator
from gpt2_tf.model.lora import enable_lora
from gpt2_tf.model.speed import decoding, fused_head, gradients

CONFIG = GPT2Config.from_preset("tiny", n_head=4, dropout=0.0)
TOL = dict(rtol=1e-5, atol=1e-5)


def _model(mode="full"):
    keras.utils.set_random_seed(3)
    model = GPT2LanguageModel(CONFIG)
    if mode == "lora":
        enable_lora(model, 4, alpha=8, targets=("c_attn", "mlp.c_proj"))
        rng = np.random.default_rng(4)
        for v in model.trainable_variables:  # B starts at zero: make the adapters matter
            v.assign(rng.normal(0, 0.2, v.shape).astype("float32"))
    elif mode == "frozen_embedding":
        model.backbone.wte.embeddings.trainable = False
    return model


def _batch():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, CONFIG.vocab_size, (3, 12)).astype("int32")
    mask = np.ones((3, 12), "int32")
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    weights = (mask * rng.choice([0.0, 1.0, 0.5], (3, 12))).astype("float32")
    return {"token_ids": ids, "padding_mask": mask}, rng.integers(0, 50257, (3, 12)), weights


def _with_path(monkeypatch, plain: bool, fn):
    if plain:
        monkeypatch.setenv(speed.PLAIN_ENV, "1")
    else:
        monkeypatch.delenv(speed.PLAIN_ENV, raising=False)
    assert speed.enabled() is not plain
    return fn()


def test_the_switch_reads_the_environment_at_call_time(monkeypatch):
    monkeypatch.delenv(speed.PLAIN_ENV, raising=False)
    assert speed.enabled()
    for value, on in (("1", False), ("true", False), ("0", True), ("", True)):
        monkeypatch.setenv(speed.PLAIN_ENV, value)
        assert speed.enabled() is on, value


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("training", [False, True])
def test_logits_match(monkeypatch, mode, training):
    model, (x, _, _) = _model(mode), _batch()
    fast, plain = (
        _with_path(monkeypatch, p, lambda: np.asarray(model(x, training=training)))
        for p in (False, True)
    )
    np.testing.assert_allclose(fast, plain, **TOL)


def _sums_and_grads(model, x, y, w):
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        sums = losses.lm_target_sums(model, x, tf.constant(y, tf.int32), tf.constant(w), True)
    grads = tape.gradient(sums[0], variables)
    return [float(s) for s in sums], [
        None if g is None else tf.convert_to_tensor(g).numpy() for g in grads
    ]


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("mode", ["full", "lora", "frozen_embedding"])
def test_lm_losses_and_gradients_match(monkeypatch, mode, keep):
    """Both ways of training attention: keeping its probabilities (what this tiny config at 12
    tokens does by default) and recomputing them."""
    assert gradients.keeps_attention_probabilities(CONFIG.n_head, 12, CONFIG.n_embd)
    monkeypatch.setattr(gradients, "keeps_attention_probabilities", lambda *args: keep)
    model, (x, y, w) = _model(mode), _batch()
    (fast_sums, fast_grads), (plain_sums, plain_grads) = (
        _with_path(monkeypatch, p, lambda: _sums_and_grads(model, x, y, w)) for p in (False, True)
    )
    np.testing.assert_allclose(fast_sums, plain_sums, **TOL)
    assert plain_sums[0] > 0 and len(fast_grads) == len(model.trainable_variables) > 0
    names = [v.path for v in model.trainable_variables]
    if mode == "frozen_embedding":
        assert not any("wte" in n for n in names)
    if mode == "lora":
        assert all("lora" in n for n in names)
    for name, a, b in zip(names, fast_grads, plain_grads):
        assert a is not None and b is not None, name
        assert np.abs(b).max() > 0, name
        np.testing.assert_allclose(a, b, err_msg=name, **TOL)
    # Evaluation (no gradients) too.
    fast_eval, plain_eval = (
        _with_path(
            monkeypatch, p, lambda: [float(s) for s in losses.lm_target_sums(model, x, y, w)]
        )
        for p in (False, True)
    )
    np.testing.assert_allclose(fast_eval, plain_eval, **TOL)


def test_attention_keeps_probabilities_when_they_are_no_bigger_than_the_mlp_activation():
    """GPT-2 124M (12 heads, 768 wide) keeps its float32 probabilities up to 256 tokens in
    float32 and up to 128 under mixed bfloat16 (an MLP activation of half the bytes); a length
    unknown when traced (a None dimension) recomputes them."""
    rule = gradients.keeps_attention_probabilities
    assert rule(12, 256, 768) and rule(12, 64, 768) and rule(25, 256, 1600)
    assert not rule(12, 257, 768) and not rule(12, 1024, 768) and not rule(12, None, 768)
    assert rule(12, 128, 768, "bfloat16") and not rule(12, 129, 768, "bfloat16")
    assert not rule(12, 256, 768, tf.bfloat16)


def _softmax_ops(model, length):
    """Softmax ops in the traced graph of an LM training step at `length` tokens."""
    ids = tf.zeros((2, length), tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            x = {"token_ids": ids, "padding_mask": tf.ones_like(ids)}
            loss = losses.lm_target_sums(model, x, ids, tf.ones((2, length)), True)[0]
        return tape.gradient(loss, model.trainable_variables)

    graph = step.get_concrete_function().graph
    return sum(op.type == "Softmax" for op in graph.get_operations())


def test_the_training_step_recomputes_attention_probabilities_only_past_the_rule():
    """The tiny model (4 heads, 64 wide) keeps them up to 64 tokens: one softmax a layer in
    its training step at 64 tokens, one more a layer (the backward pass's) at 65."""
    model = _model()
    kept, recomputed = _softmax_ops(model, 64), _softmax_ops(model, 65)
    assert kept >= CONFIG.n_layer and recomputed - kept == CONFIG.n_layer, (kept, recomputed)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_greedy_tokens_match(monkeypatch, mode):
    model = _model(mode)
    prompts = [[464, 2068, 7586, 21831, 18045], [15496], [40, 588, 257]]

    def greedy():
        return Generator(model, jit_compile=False)(prompts, 20, sampler="greedy")

    fast, plain = (_with_path(monkeypatch, p, greedy) for p in (False, True))
    assert fast == plain and all(len(row) == 20 for row in fast)


@pytest.mark.parametrize("xla", [False, True])
def test_cached_hidden_states_match(monkeypatch, xla):
    """The plain cache and the fast one give the same hidden states, prefill and one step, with
    the fast kernels as graph ops and as small XLA programs."""
    model = _model()
    ids = np.array([[0, 464, 2068], [15496, 995, 11]], "int32")
    mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], "int32")

    def run():
        bb = model.backbone
        cache, kernels = bb.init_cache(2, 5), bb.decoding_kernels(xla)
        assert kernels is None or kernels.xla is xla
        h1, cache = bb.call_with_cache(ids, mask, cache, 0, kernels)
        h2, _ = bb.call_with_cache(np.array([[7], [8]], "int32"), mask, cache, 3, kernels)
        return np.asarray(h1), np.asarray(h2), np.asarray(model.step_logits(h2[:, 0], kernels))

    for a, b in zip(*(_with_path(monkeypatch, p, run) for p in (False, True))):
        np.testing.assert_allclose(a, b, **TOL)


def test_decoding_transposes_no_more_with_depth(monkeypatch):
    """The residual stream stays [E, B * t] through the blocks: a decoding step's graph (each
    block's work as XLA programs) transposes on the way in and out, not in every block."""
    monkeypatch.delenv(speed.PLAIN_ENV, raising=False)

    def transposes(n_layer):
        keras.utils.set_random_seed(3)
        bb = GPT2LanguageModel(GPT2Config.from_preset("tiny", n_layer=n_layer)).backbone
        ids, mask = tf.constant([[7], [8]]), tf.ones([2, 5], tf.int32)

        @tf.function
        def step(kernels):  # made outside: its kernel transposes are not the step's
            return bb.call_with_cache(ids, mask, bb.init_cache(2, 5), 3, kernels)[0]

        ops = step.get_concrete_function(bb.decoding_kernels(xla=True)).graph.get_operations()
        return sum(op.type == "Transpose" for op in ops)

    shallow, deep = transposes(1), transposes(3)
    assert deep == shallow, (shallow, deep)


def test_the_library_decodes_with_xla_kernels_and_the_export_without(monkeypatch):
    """`Generator`'s graph loop runs each block's work (and the head) as XLA programs; the
    decoding loop as the SavedModel export calls it runs them as graph ops."""
    from gpt2_tf.model.generation import decode

    monkeypatch.delenv(speed.PLAIN_ENV, raising=False)
    seen = []
    real = decoding._run

    def recorded(fn, xla, *args, **kwargs):
        seen.append((fn.__name__, xla))
        return real(fn, xla, *args, **kwargs)

    monkeypatch.setattr(decoding, "_run", recorded)
    model = _model()
    Generator(model, jit_compile=False)([[464, 2068]], 2, sampler="greedy")
    names = {"qkv_t", "rest_of_block_t", "head_t"}
    assert {n for n, _ in seen} == names and all(xla for _, xla in seen)
    seen.clear()
    ids, mask = tf.constant([[464, 2068]]), tf.constant([[1, 1]])
    settings = (tf.constant(0.0), tf.constant(0), tf.constant(1.0), tf.constant(0))
    tf.function(lambda: decode(model, ids, mask, 2, 2, *settings, tf.constant([50256])))()
    assert {n for n, _ in seen} == names and not any(xla for _, xla in seen)


def _count_calls(monkeypatch, module, name, counts):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("plain", [False, True])
def test_the_switch_selects_the_path(monkeypatch, plain):
    """Each speed function runs when the switch is off and never when it is on, so the
    comparisons above compare two different paths."""
    counts = {}
    for module, name in (
        (gradients, "dense_call"),
        (gradients, "layer_norm"),
        (gradients, "training_attention"),
        (gradients, "training_gelu"),
        (fused_head, "tied_head_sums"),
        (decoding, "call_with_cache"),
        (decoding, "step_logits"),
    ):
        _count_calls(monkeypatch, module, name, counts)
    model, (x, y, w) = _model("lora"), _batch()

    def run():
        _sums_and_grads(model, x, y, w)
        Generator(model, jit_compile=False)([[464, 2068]], 2, sampler="greedy")

    _with_path(monkeypatch, plain, run)
    expected = {} if plain else {n: counts.get(n, 0) for n in counts}
    assert counts == expected
    if not plain:
        assert set(counts) == {
            "dense_call",
            "layer_norm",
            "training_attention",
            "training_gelu",
            "tied_head_sums",
            "call_with_cache",
            "step_logits",
        }, counts


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_equals_keras_and_its_autodiff(dtype):
    """The training LayerNorm's output is Keras's, bit for bit; its gradients (for x, gamma and
    beta) equal autodiff's through Keras's ops."""
    from gpt2_tf.model.layers import LayerNorm

    rng = np.random.default_rng(6)
    layer = LayerNorm(epsilon=1e-5, dtype="mixed_bfloat16" if dtype == "bfloat16" else "float32")
    layer.build((2, 5, 8))
    layer.gamma.assign(rng.normal(1, 0.3, 8).astype("float32"))
    layer.beta.assign(rng.normal(0, 0.3, 8).astype("float32"))
    x = tf.cast(rng.normal(0.5, 2, (2, 5, 8)), dtype)
    dy = tf.cast(rng.normal(size=(2, 5, 8)), dtype)

    def run(norm):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = norm(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cast(dy, tf.float32))
        return [y] + tape.gradient(loss, [x, layer.gamma, layer.beta])

    fast = run(lambda x: gradients.layer_norm(layer, x))
    plain = run(lambda x: keras.layers.LayerNormalization.call(layer, x))
    assert fast[0].dtype == plain[0].dtype == tf.as_dtype(dtype)
    np.testing.assert_array_equal(fast[0].numpy(), plain[0].numpy())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=2e-2)
    for name, a, b in zip(("x", "gamma", "beta"), fast[1:], plain[1:]):
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(
            tf.cast(a, tf.float32), tf.cast(b, tf.float32), err_msg=name, **tol
        )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoding_layer_norm_of_columns_equals_keras(dtype):
    """Decoding's LayerNorm of x_t [E, N]'s columns is Keras's LayerNorm of x [N, E]'s rows,
    transposed, in float32 and under mixed bfloat16 (its output dtype included)."""
    from gpt2_tf.model.layers import LayerNorm

    rng = np.random.default_rng(7)
    layer = LayerNorm(epsilon=1e-5, dtype="mixed_bfloat16" if dtype == "bfloat16" else "float32")
    layer.build((6, 16))
    layer.gamma.assign(rng.normal(1, 0.3, 16).astype("float32"))
    layer.beta.assign(rng.normal(0, 0.3, 16).astype("float32"))
    x = tf.cast(rng.normal(0.5, 2, (6, 16)), dtype)
    columns = decoding.layer_norm_t(tf.transpose(x), layer.gamma, layer.beta, layer.epsilon)
    plain = layer(x)
    assert columns.dtype == plain.dtype == tf.as_dtype(dtype)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(
        tf.cast(tf.transpose(columns), tf.float32), tf.cast(plain, tf.float32), **tol
    )

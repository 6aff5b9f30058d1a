"""The Keras model: masking, positions, the cache, pooling, precision, serialization."""

import keras
import numpy as np
import pytest

from gpt2_tf import GPT2Backbone, GPT2Classifier, GPT2Config, GPT2LanguageModel

EOT = 50256
CONFIG = GPT2Config.from_preset("tiny", n_head=4)


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(1)
    return GPT2LanguageModel(CONFIG)


def batch(rows, length=None, pad_id=EOT, left=False):
    """Right- (or left-) padded token ids and mask from lists of ids."""
    length = length or max(map(len, rows))
    ids = np.full((len(rows), length), pad_id, "int32")
    mask = np.zeros((len(rows), length), "int32")
    for i, row in enumerate(rows):
        sl = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, sl], mask[i, sl] = row, 1
    return {"token_ids": ids, "padding_mask": mask}


ROWS = [[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290], [15496, 995, EOT, 318, 257], [40]]


def test_shapes_and_dtypes(lm):
    out = lm(batch(ROWS))
    assert out.shape == (3, 9, CONFIG.vocab_size) and out.dtype == "float32"
    hidden = lm.backbone(batch(ROWS))
    assert hidden.shape == (3, 9, CONFIG.n_embd)


def test_padding_changes_nothing_at_real_positions(lm):
    together = np.asarray(lm(batch(ROWS, length=12)))
    other_pad = np.asarray(lm(batch(ROWS, length=12, pad_id=0)))
    for i, row in enumerate(ROWS):
        alone = np.asarray(lm(batch([row])))[0]
        np.testing.assert_allclose(together[i, : len(row)], alone, atol=1e-5)
        np.testing.assert_allclose(other_pad[i, : len(row)], alone, atol=1e-5)


def test_left_padding_equals_right_padding(lm):
    right = np.asarray(lm(batch(ROWS)))
    left = np.asarray(lm(batch(ROWS, left=True)))
    for i, row in enumerate(ROWS):
        np.testing.assert_allclose(left[i, -len(row) :], right[i, : len(row)], atol=1e-5)
    assert not np.isnan(left).any()


def test_causal(lm):
    a = np.asarray(lm(batch([ROWS[0]])))
    changed = list(ROWS[0])
    changed[5] = 11
    b = np.asarray(lm(batch([changed])))
    np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
    assert np.abs(a[0, 5:] - b[0, 5:]).max() > 1e-3


def test_cached_decoding_equals_full_forward(lm):
    """Prefill a left-padded prompt batch, then feed one token at a time through the cache."""
    prompts, total = [[464, 2068, 7586], [15496]], 7
    continuation = [[21831, 18045, 625, 262], [995, 11, 50256, 257]]
    full_rows = [p + c for p, c in zip(prompts, continuation)]
    inputs = batch(prompts, left=True)  # [B, 3]
    mask = np.concatenate([inputs["padding_mask"], np.ones((2, total - 3), "int32")], 1)
    cache = lm.backbone.init_cache(2, total)
    hidden, cache = lm.backbone.call_with_cache(inputs["token_ids"], mask, cache, 0)
    steps = [np.asarray(lm.logits(hidden))[:, -1]]
    for t in range(3):
        tok = np.array([[c[t]] for c in continuation], "int32")
        hidden, cache = lm.backbone.call_with_cache(tok, mask, cache, 3 + t)
        steps.append(np.asarray(lm.logits(hidden))[:, 0])
    for i, row in enumerate(full_rows):
        full = np.asarray(lm(batch([row])))[0]
        n = len(prompts[i])
        for t, step in enumerate(steps):
            np.testing.assert_allclose(step[i], full[n - 1 + t], atol=1e-4)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_pools_real_tokens_only(pooling):
    keras.utils.set_random_seed(2)
    clf = GPT2Classifier(CONFIG, num_classes=3, pooling=pooling)
    rows = [[40, 588, EOT, 340], [15496, 995], [EOT]]  # an <|endoftext|> inside the text, too
    padded = np.asarray(clf(batch(rows, length=8, pad_id=EOT)))
    for i, row in enumerate(rows):
        np.testing.assert_allclose(padded[i], np.asarray(clf(batch([row])))[0], atol=1e-5)
    # Pooling must not look for the first pad id: with EOT inside row 0 that gives another answer.
    hidden = np.asarray(clf.backbone(batch(rows, length=8)))
    if pooling == "last":
        wrong = hidden[0, 1] @ np.asarray(clf.score.kernel)  # token before the first EOT
        assert np.abs(wrong - padded[0]).max() > 1e-4


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pooling must be 'last' or 'mean'"):
        GPT2Classifier(CONFIG, pooling="first")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(lm, policy):
    low = GPT2LanguageModel(CONFIG, dtype=policy)
    low.set_weights(lm.get_weights())
    assert all(v.dtype == "float32" for v in low.weights)
    inputs = batch(ROWS, left=True)
    out, ref = np.asarray(low(inputs)), np.asarray(lm(inputs))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - ref).max() / np.abs(ref).max() < 5e-2
    clf = GPT2Classifier(CONFIG, num_classes=2, dtype=policy)
    assert np.isfinite(np.asarray(clf(inputs))).all()


def test_dropout_only_in_training():
    model = GPT2LanguageModel(CONFIG.replace(dropout=0.5))
    inputs = batch(ROWS)
    a, b = model(inputs, training=True), model(inputs, training=True)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(model(inputs)))


def test_keras_serialization_round_trip(lm, tmp_path):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(lm))
    assert isinstance(restored, GPT2LanguageModel) and restored.config == CONFIG
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    inputs = batch(ROWS)
    np.testing.assert_allclose(np.asarray(loaded(inputs)), np.asarray(lm(inputs)), atol=1e-6)
    clf = GPT2Classifier(CONFIG, num_classes=4, pooling="mean")
    again = GPT2Classifier.from_config(clf.get_config())
    assert (again.num_classes, again.pooling) == (4, "mean")
    assert GPT2Backbone.from_config(lm.backbone.get_config()).config == CONFIG


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gelu_is_tf_gelu_with_its_gradient(dtype):
    """speed.gradients.gelu: the values of tf.nn.gelu(approximate=True), autodiff's gradient."""
    import tensorflow as tf

    from gpt2_tf.model.speed.gradients import gelu

    x = tf.cast(tf.constant(np.linspace(-8, 8, 4001), tf.float32), dtype)
    dy = tf.cast(tf.constant(np.random.default_rng(0).normal(size=4001), tf.float32), dtype)
    grads = []
    for fn in (gelu, lambda v: tf.nn.gelu(v, approximate=True)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        grads.append(tf.cast(tape.gradient(y, x, output_gradients=dy), tf.float32).numpy())
        if len(grads) == 1:
            ours = y
    np.testing.assert_array_equal(ours.numpy(), y.numpy())
    if dtype == "float32":
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    else:  # both round to bfloat16 along the way: ours is no further from the exact gradient
        exact = _exact_gelu(x, dy)[1]
        errors = [np.abs(g - exact).max() for g in grads]
        assert errors[0] <= 1.5 * errors[1], errors


def _exact_gelu(x, dy):
    """(GELU(x), dy * GELU'(x)) in float64, tanh approximation."""
    import tensorflow as tf

    v, g = tf.cast(x, tf.float64).numpy(), tf.cast(dy, tf.float64).numpy()
    t = np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))
    slope = 0.5 * v * (1 - t**2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * v**2)
    return 0.5 * v * (1 + t), g * (0.5 * (1 + t) + slope)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_gelu_matches_the_exact_gelu_and_gradient(dtype):
    """speed.gradients.training_gelu (XLA, float32 inside): values and gradient within the dtype's
    rounding of the exact float64 ones, and no further from them than `gelu`'s."""
    import tensorflow as tf

    from gpt2_tf.model.speed.gradients import gelu, training_gelu

    x = tf.cast(tf.constant(np.linspace(-8, 8, 4001), tf.float32), dtype)
    dy = tf.cast(tf.constant(np.random.default_rng(0).normal(size=4001), tf.float32), dtype)
    exact_y, exact_dx = _exact_gelu(x, dy)
    errors = {}
    for name, fn in (("training", training_gelu), ("plain", gelu)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        dx = tape.gradient(y, x, output_gradients=dy)
        assert y.dtype == dx.dtype == x.dtype
        errors[name] = [
            np.abs(tf.cast(a, tf.float64).numpy() - b).max()
            for a, b in ((y, exact_y), (dx, exact_dx))
        ]
    tol = 1e-5 if dtype == "float32" else 4e-2  # bfloat16 keeps 8 bits: 2^-8 of |y| <= 8
    assert max(errors["training"]) < tol, errors
    assert all(a <= 1.01 * b + 1e-6 for a, b in zip(errors["training"], errors["plain"])), errors


def test_causal_query_blocks():
    """Blocks of 128 query rows, at most 4; one block for a short or untraced length, or with
    dropout."""
    from gpt2_tf.model.speed.gradients import causal_query_blocks

    assert causal_query_blocks(256) == [(0, 128), (128, 256)]
    assert causal_query_blocks(1024) == [(0, 256), (256, 512), (512, 768), (768, 1024)]
    assert causal_query_blocks(300) == [(0, 150), (150, 300)]
    assert causal_query_blocks(255) == [(0, 255)]
    assert causal_query_blocks(None) == [(0, None)]
    assert causal_query_blocks(256, rate=0.1) == [(0, 256)]


@pytest.mark.parametrize("block_rows", [128, 2, 3])
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("dtype,rate", [("float32", 0.0), ("float32", 0.3), ("bfloat16", 0.0)])
def test_training_attention_equals_autodiff(dtype, rate, keep, block_rows):
    """gradients.training_attention, recomputing its probabilities or keeping them, in one
    block of queries or in causal blocks (7 rows: 3 blocks of 3, 3, 1 rows; 2 of 4, 3): the
    forward pass of softmax_attention, and the gradients autodiff gives it, with a left-padded
    row (queries with every key masked, in the first two blocks) and dropout."""
    import tensorflow as tf

    from gpt2_tf.model.layers import MASK_VALUE, attention_mask, softmax_attention
    from gpt2_tf.model.speed.gradients import causal_query_blocks, training_attention

    def attention(q, k, v, mask, rate, seed):
        return training_attention(q, k, v, mask, MASK_VALUE, rate, seed, keep, block_rows)

    blocks = causal_query_blocks(7, rate, block_rows)
    assert len(blocks) == (1 if rate or block_rows > 7 else 7 // block_rows)
    rng = np.random.default_rng(0)
    q, k, v, d_out = (
        tf.cast(tf.constant(rng.normal(size=(2, 3, 7, 8)), tf.float32), dtype) for _ in range(4)
    )
    padding = tf.constant([[1] * 7, [0, 0, 0, 0, 1, 1, 1]])
    mask = attention_mask(padding, 7, 7)
    seed = tf.constant([3, 4], tf.int32)
    results = []
    for fn in (attention, softmax_attention):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = fn(q, k, v, mask, rate, seed)
        grads = tape.gradient(out, [q, k, v], output_gradients=d_out)
        results.append([tf.cast(t, tf.float32).numpy() for t in (out, *grads)])
    ours, ref = results
    if len(blocks) == 1:
        np.testing.assert_array_equal(ours[0], ref[0])
    else:  # sums over fewer keys (and the unseen rows' mean): the same to the last bits
        ulp = 1e-6 if dtype == "float32" else 8e-3
        np.testing.assert_allclose(ours[0], ref[0], rtol=ulp, atol=ulp * np.abs(ref[0]).max())
    if rate:  # dropout zeroed some probabilities: the same ones in both
        assert (ours[0] != tf.cast(softmax_attention(q, k, v, mask), tf.float32).numpy()).any()
    tol = 1e-5 if dtype == "float32" else 2e-2
    for name, a, b in zip(("dq", "dk", "dv"), ours[1:], ref[1:]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(), err_msg=name)


def _product_step(kernels, x, product, activation=None, sums=True):
    """A tf.function: one training step of x through `kernels` with a given product (and an
    activation after each), returning (loss, sum dx, sum dkernels), or with `sums` off
    [loss, dx, *dkernels]."""
    import tensorflow as tf

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = x
            for k in kernels:
                h = product(h, k)
                h = h if activation is None else activation(h)
            loss = tf.reduce_sum(tf.cast(h, tf.float32) ** 2)
        dx, *dk = tape.gradient(loss, [x, *kernels])
        if not sums:
            return [loss, dx, *dk]
        # One number out, so no gradient is held past its last use.
        return (
            loss,
            tf.reduce_sum(tf.cast(dx, tf.float32)),
            tf.add_n([tf.reduce_sum(g) for g in dk]),
        )

    return run


def _recast_case():
    """Sixteen 1,024 x 1,024 float32 kernels, a bfloat16 input, and one training step through
    all of them with a given product, as a tf.function returning (loss, sum dx, sum dkernels)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernels = [
        keras.Variable(rng.normal(size=(1024, 1024)) * 0.03, dtype="float32") for _ in range(16)
    ]
    x = tf.cast(tf.constant(rng.normal(size=(2, 4, 1024)), tf.float32), tf.bfloat16)

    def step(product):
        return _product_step(kernels, x, product)

    # What Keras's Dense does with a 3-D input: a tensordot, one 2-D MatMul.
    plain = step(lambda h, k: tf.tensordot(h, tf.cast(k, h.dtype), 1))
    return plain, step, x, kernels


def test_kernel_matmul_same_outputs_and_gradients_as_autodiff():
    """gradients.kernel_matmul (mixed precision, training) gives the output and both gradients of
    autodiff through x @ cast(kernel), bit for bit; a frozen kernel (LoRA) gets no gradient."""
    import tensorflow as tf

    from gpt2_tf.model.speed.gradients import kernel_matmul

    plain, step, x, kernels = _recast_case()
    recast = step(kernel_matmul)
    np.testing.assert_array_equal([t.numpy() for t in recast()], [t.numpy() for t in plain()])

    fixed = keras.Variable(kernels[0].numpy(), trainable=False)  # a LoRA layer's kernel

    @tf.function
    def frozen():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = kernel_matmul(x, fixed)
        return tape.gradient(y, [x, fixed])

    dx, d_fixed = frozen()
    assert dx.dtype == tf.bfloat16 and d_fixed is None
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.tensordot(x, tf.cast(fixed, x.dtype), 1)
    np.testing.assert_array_equal(dx.numpy(), tape.gradient(y, x).numpy())


def test_dense_bias_gradient_is_summed_in_float32_under_mixed_bfloat16():
    """The training Dense's bias gradient over 1,024 rows is their sum, rounded once to
    bfloat16 (as PyTorch's under autocast). TensorFlow's BiasAddGrad (Keras's Dense adds its
    bias with `bias_add`) sums a bfloat16 gradient in bfloat16: 1,024 rows of 1.0 gave 256, the
    sum of random rows was off by 25%. The output is Keras's, with the bias added inside the
    product (rounded once, not twice)."""
    import tensorflow as tf

    from gpt2_tf.model.layers import Dense

    rng = np.random.default_rng(3)
    layer = Dense(16, dtype="mixed_bfloat16")
    layer.build((None, 8))
    layer.bias.assign(rng.normal(size=16))
    x = tf.constant(rng.normal(size=(4, 256, 8)), tf.float32)
    upstream = tf.constant(rng.normal(size=(4, 256, 16)), tf.float32)
    for inputs, weights in ((tf.ones_like(x), tf.ones_like(upstream)), (x, upstream)):
        with tf.GradientTape() as tape:
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        d_bias = tape.gradient(loss, layer.bias)
        rows = tf.cast(tf.cast(weights, tf.bfloat16), tf.float64)  # the gradient reaching y
        expected = tf.reduce_sum(tf.reshape(rows, (-1, 16)), 0).numpy()
        np.testing.assert_allclose(d_bias.numpy(), expected, rtol=2**-8, atol=1e-3)
        plain = layer(inputs)  # inference: Keras's own call
        np.testing.assert_allclose(
            tf.cast(y, tf.float32).numpy(), tf.cast(plain, tf.float32).numpy(), rtol=2e-2, atol=2e-2
        )
    assert d_bias.dtype == tf.float32


def test_kernel_matmul_keeps_a_frozen_kernels_copy_for_the_backward_pass():
    """A frozen kernel (LoRA) has one bfloat16 copy a step, used by the forward product and by
    the input gradient's, as under autodiff (and PyTorch's autocast): no second cast."""
    import tensorflow as tf

    from gpt2_tf.model.speed.gradients import kernel_matmul

    rng = np.random.default_rng(2)
    frozen = [
        keras.Variable(rng.normal(size=(64, 64)) * 0.1, dtype="float32", trainable=False)
        for _ in range(3)
    ]
    x = tf.cast(tf.constant(rng.normal(size=(2, 4, 64)), tf.float32), tf.bfloat16)
    step = _product_step(frozen, x, kernel_matmul, sums=False)  # dx, no kernel gradient
    assert _kernel_cast_consumers(_grappler_optimized(step)) == [2] * 3


def _grappler_optimized(fn):
    """The graph of tf.function `fn` as TensorFlow's runtime optimizer (Grappler) leaves it,
    through its offline entry point (a private module; tests only)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    concrete = fn.get_concrete_function()
    meta = tf.compat.v1.train.export_meta_graph(
        graph_def=concrete.graph.as_graph_def(), graph=concrete.graph
    )
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend([t.op.name for t in concrete.outputs])
    meta.collection_def["train_op"].CopyFrom(fetch)
    return tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)


def _kernel_cast_consumers(graph_def) -> list[int]:
    """For each bfloat16 cast of a variable read, how many ops use its output."""
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    uses = {}
    for n in graph_def.node:
        for i in n.input:
            uses[i.lstrip("^").split(":")[0]] = uses.get(i.lstrip("^").split(":")[0], 0) + 1
    return [
        uses.get(n.name, 0)
        for n in graph_def.node
        if n.op == "Cast"
        and n.attr["DstT"].type == tf.bfloat16.as_datatype_enum
        and nodes[n.input[0].split(":")[0]].op == "ReadVariableOp"
    ]


def test_kernel_matmul_keeps_no_kernel_copies_for_the_backward_pass():
    """Plain autodiff of x @ cast(kernel) uses each layer's bfloat16 kernel copy in the forward
    product and again in the backward one, so the copy lives from one pass to the other (32 MB
    for these sixteen 1,024 x 1,024 kernels; 162 MB at GPT-2 124M). kernel_matmul casts again
    in the backward pass: after Grappler (which merges identical ops: without the control
    dependency the two casts became one again), every cast has one user, freed once used.

    Checked in the optimized graph, the same on every machine; TensorFlow's CPU allocator
    statistics (oneDNN's BFC allocator only) gave 6-20 MB of margin run to run, too noisy to
    assert on: the executor may run all the forward casts before the first product."""
    from gpt2_tf.model.speed.gradients import kernel_matmul

    plain, step, _, _ = _recast_case()
    assert _kernel_cast_consumers(_grappler_optimized(plain)) == [2] * 16
    assert _kernel_cast_consumers(_grappler_optimized(step(kernel_matmul))) == [1] * 32


def test_kernel_matmul_float32_takes_wide_kernels_transposed_for_the_input_gradient():
    """In float32, kernel_matmul's input gradient for a kernel wider than deep (c_attn, c_fc) is
    a plain product with a [out, in] copy of the kernel (oneDNN's transposed product was slower
    there), made only in the backward pass; a square or deep kernel keeps the transposed
    product. Values and gradients equal autodiff's."""
    import tensorflow as tf

    from gpt2_tf.model.speed.gradients import kernel_matmul

    rng = np.random.default_rng(1)
    kernels = [
        keras.Variable(rng.normal(size=shape) * 0.05, dtype="float32")
        for shape in ((32, 96), (96, 32), (32, 32))
    ]
    x = tf.constant(rng.normal(size=(2, 5, 32)), tf.float32)

    def step(product):
        return _product_step(kernels, x, product, activation=tf.tanh, sums=False)

    ours = step(kernel_matmul)
    plain = step(lambda h, k: tf.tensordot(h, k, 1))
    for a, b in zip(ours(), plain()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

    graph = _grappler_optimized(ours)
    nodes = {n.name: n for n in graph.node}
    snapshots = [n for n in graph.node if n.op == "Snapshot"]
    assert len(snapshots) == 1  # the one wide kernel, transposed once
    transpose = nodes[snapshots[0].input[0].split(":")[0]]
    assert transpose.op == "Transpose"
    # Made in the backward pass: ordered after the gradient flowing in (a control edge on its
    # permutation), so the executor cannot make every layer's copy during the forward pass.
    perm = nodes[transpose.input[1].split(":")[0]]
    assert [i for i in perm.input if i.startswith("^gradient_tape/")], perm.input
    matmuls = [n for n in graph.node if n.op in ("MatMul", "_MklMatMul")]
    assert sum(n.attr["transpose_b"].b for n in matmuls) == 2  # the square and deep kernels

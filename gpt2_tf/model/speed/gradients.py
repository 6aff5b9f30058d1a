"""Training kernels with their own gradients: same values and gradients as autodiff through the
plain layers, fewer tensors kept between the passes (figures in `speed/__init__.py`)."""

from __future__ import annotations

import math

import tensorflow as tf
from keras import ops

from gpt2_tf.core.compat import in_xla_context, kernel_variable, no_autocast

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@tf.custom_gradient
def gelu(x):
    """`tf.nn.gelu(approximate=True)`, op for op; the gradient recomputes the tanh from `x`."""

    def grad(dy):
        return _gelu_grad_math(x, dy)

    return tf.nn.gelu(x, approximate=True), grad


def _gelu_grad_math(x, dy):
    x2 = x * x
    t = tf.tanh(x * (_GELU_C + _GELU_C * _GELU_A * x2))
    slope = (0.5 * x) * (1.0 - t * t) * (_GELU_C + 3.0 * _GELU_C * _GELU_A * x2)
    return dy * (0.5 * (1.0 + t) + slope)


@tf.function(jit_compile=True)
def _fused_gelu(x):
    return tf.cast(tf.nn.gelu(tf.cast(x, tf.float32), approximate=True), x.dtype)


@tf.function(jit_compile=True)
def _fused_gelu_grad(x, dy):
    return tf.cast(_gelu_grad_math(tf.cast(x, tf.float32), tf.cast(dy, tf.float32)), dy.dtype)


@tf.custom_gradient
def training_gelu(x):
    """`gelu` for training: forward and gradient each one XLA-compiled loop, in float32 whatever
    the input dtype. Inference and decoding keep `gelu`, so an exported SavedModel needs no XLA."""

    def grad(dy):
        return _fused_gelu_grad(x, dy)

    return _fused_gelu(x), grad


def layer_norm_applies(layer, training) -> bool:
    """Whether `layer_norm` replaces Keras's LayerNormalization call: in training, for the
    LayerNorm GPT-2 has (last axis, scale and centre)."""
    last = list(layer.axis) == [-1]  # as built from Keras's default axis=-1
    return bool(training) and last and layer.center and layer.scale and not layer.rms_scaling


def layer_norm(layer, x):
    """Keras's LayerNormalization over the last axis, op for op, in float32 whatever x's dtype,
    with its own gradient: the backward pass recomputes the normalized input from x and the
    row's mean and 1/std, where autodiff keeps a float32 copy of x and x·inv, two [tokens, E]
    float32 tensors per LayerNorm."""
    with no_autocast():
        gamma, beta = (tf.convert_to_tensor(v.value) for v in (layer.gamma, layer.beta))
    epsilon = layer.epsilon

    @tf.custom_gradient
    def norm(x, gamma, beta):
        xf = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(xf, [-1], keepdims=True)  # Keras's ops.moments
        rstd = tf.math.rsqrt(variance + epsilon)
        inv = rstd * gamma
        y = tf.cast(xf * inv + (-mean * inv + beta), x.dtype)

        def grad(dy):
            # After dy: Grappler cannot merge this cast with the forward one (which would keep
            # the float32 copy alive between the passes).
            with tf.control_dependencies([dy]):
                xhat = (tf.cast(tf.identity(x), tf.float32) - mean) * rstd
            dyf = tf.cast(dy, tf.float32)
            rows = list(range(len(x.shape) - 1))
            g = dyf * gamma
            dx = rstd * (
                g
                - tf.reduce_mean(g, -1, keepdims=True)
                - xhat * tf.reduce_mean(g * xhat, -1, keepdims=True)
            )
            d_gamma, d_beta = tf.reduce_sum(dyf * xhat, rows), tf.reduce_sum(dyf, rows)
            return tf.cast(dx, x.dtype), d_gamma, d_beta

        return y, grad

    return norm(x, gamma, beta)


def dense_applies(dense, training) -> bool:
    """Whether `dense_call` replaces Keras's Dense call: in training, or with LoRA on."""
    return dense.quantization_mode is None and bool(dense.lora_enabled or training)


def dense_call(dense, inputs, training=None):
    """Keras's Dense with x·W + (alpha/r)·(x·A)·B for LoRA (the frozen kernel gets no gradient;
    A and B get theirs from [N, r]-sized products), and `kernel_matmul` for the kernel product
    and the bias in training."""
    kernel = kernel_variable(dense)
    if training:
        x = kernel_matmul(inputs, kernel, dense.bias)
    else:
        x = ops.matmul(inputs, kernel)
    if dense.lora_enabled:
        scale = ops.cast(dense.lora_alpha / dense.lora_rank, dense.compute_dtype)
        x = x + ops.matmul(ops.matmul(inputs, dense.lora_kernel_a) * scale, dense.lora_kernel_b)
    if dense.bias is not None and not training:
        x = ops.add(x, dense.bias)
    if dense.activation is not None:
        x = dense.activation(x)
    return x


def kernel_matmul(x, kernel, bias=None):
    """x [..., in] (compute dtype) @ kernel [in, out] (a float32 variable) + bias [out] (a
    float32 variable or None) for training, with its own gradient: under mixed precision the
    backward pass casts a trainable kernel again instead of keeping the forward pass's copy (a
    frozen one's copy is kept); the input's gradient takes the kernel transposed first where
    that product is faster (`_transpose_for_input_grad`); a frozen kernel (LoRA) gets no
    gradient product.

    The bias is added to the [rows, out] product, where Grappler fuses the two into one oneDNN
    kernel (Keras adds it after the reshape, a pass of its own). Its gradient is the rows' sum
    (`Sum`: float32 accumulation, one rounding to the compute dtype, as PyTorch's bias gradient
    under autocast); Keras's Dense differentiates `bias_add`, and TensorFlow's BiasAddGrad sums a
    bfloat16 gradient in bfloat16: 1,024 rows of 1.0 give 256, not 1,024."""
    # Under an autocast scope `kernel.value` would be the cast, which autodiff keeps.
    with no_autocast():
        table = tf.convert_to_tensor(kernel.value)
        biases = [] if bias is None else [tf.convert_to_tensor(bias.value)]
    trainable = kernel.trainable
    bias_trainable = bias is not None and bias.trainable

    @tf.custom_gradient
    def product(x, table, *biases):
        shape = tf.shape(x)
        x2 = tf.reshape(x, (-1, shape[-1]))
        w_forward = tf.cast(table, x.dtype)

        def grad(dy):
            dy2 = tf.reshape(dy, (-1, tf.shape(dy)[-1]))
            # TensorFlow's Sum accumulates a bfloat16 input in float32 and rounds once.
            d_bias = [
                tf.cast(tf.reduce_sum(dy2, 0), b.dtype) if bias_trainable else None for b in biases
            ]
            # Made after dy: Grappler cannot merge the cast with the forward one (the same op on
            # the same input), which would keep that copy alive between the passes, and the
            # executor cannot make every layer's transposed copy early (in float32 the cast is
            # no op, and the copies depend on the kernel alone). A frozen kernel (LoRA) keeps
            # the forward pass's copy, as PyTorch's autograd does under autocast: the step holds
            # no gradient or optimizer state for it, and casting it again cost a second pass.
            with tf.control_dependencies([dy]):
                w = w_forward if not trainable else tf.cast(table, dy.dtype)
                if _transpose_for_input_grad(w):
                    # Snapshot: otherwise Grappler folds the transpose back into the product.
                    dx = tf.matmul(dy2, tf.raw_ops.Snapshot(input=tf.transpose(w)))
                else:
                    dx = tf.matmul(dy2, w, transpose_b=True)
            dx = tf.reshape(dx, shape)
            if not trainable:
                return [dx, None, *d_bias]
            return [dx, tf.cast(tf.matmul(x2, dy2, transpose_a=True), table.dtype), *d_bias]

        y = tf.matmul(x2, w_forward)
        if biases:
            y = tf.nn.bias_add(y, tf.cast(biases[0], x.dtype))
        y = tf.reshape(y, tf.concat([shape[:-1], tf.shape(table)[1:]], 0))
        y.set_shape(x.shape[:-1].concatenate(table.shape[1:]))
        return y, grad

    return product(x, table, *biases)


def _transpose_for_input_grad(w) -> bool:
    """Whether dy @ w^T runs as dy @ (a [out, in] copy of w): for a float32 kernel wider than it
    is deep (c_attn, c_fc) in TensorFlow's graph. oneDNN's transposed product with a long inner
    dimension ran slower than the copy and a plain product (AMD EPYC, 2 cores, 12 layers' dX at
    1,024 tokens: c_fc 335 -> 267 ms, c_attn 212 -> 199 ms, the copies included); in bfloat16 it
    ran as fast as the plain one (427 against 418 GFLOP/s), and XLA lays out its products
    itself."""
    return w.dtype == tf.float32 and w.shape[1] > w.shape[0] and not in_xla_context()


def _query_scale(q):
    """1/√D in q's dtype, as `layers.softmax_attention` scales q."""
    return tf.cast(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def _softmax_attention(q, k, v, mask, mask_value, rate, seed):
    """The plain `layers.softmax_attention`, op for op, also returning what the backward pass
    needs: (out, q scaled, float32 probabilities, the probabilities v is multiplied by)."""
    q = q * _query_scale(q)
    scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)  # [B, H, Tq, Tk]
    probs32 = tf.nn.softmax(tf.where(mask, scores, mask_value))
    probs = tf.cast(probs32, q.dtype)
    if rate > 0:
        probs = tf.nn.experimental.stateless_dropout(probs, rate=rate, seed=seed)
    return tf.matmul(probs, v), q, probs32, probs


def keeps_attention_probabilities(heads: int, length, n_embd: int, dtype="float32") -> bool:
    """Whether training attention keeps its float32 probabilities (what the softmax's gradient
    reads, as under autodiff) for the backward pass rather than recomputing them: when a
    token's share of them (heads x length float32 values) takes no more bytes than its MLP
    hidden activation (4 x n_embd in the compute `dtype`, which the step keeps anyway), so that
    keeping them costs at most that much again. GPT-2 124M keeps them up to 256 tokens in
    float32 (12.6 MB a layer at batch 4) and up to 128 under mixed bfloat16; past that, or with
    a length unknown when traced, it recomputes them."""
    if not isinstance(length, int):
        return False
    return heads * length * 4 <= 4 * n_embd * tf.as_dtype(dtype).size


# Query rows per block of `training_attention`, and at most this many blocks.
ATTENTION_BLOCK_ROWS = 128
MAX_ATTENTION_BLOCKS = 4


def causal_query_blocks(length, rate=0.0, block_rows=ATTENTION_BLOCK_ROWS):
    """[(start, end)] row blocks of causal self-attention over `length` queries: block i's
    queries see keys up to `end` only, since every later key is masked, so the products and the
    softmax skip the [T, T] scores above the blocks' diagonal. `length // block_rows` blocks
    (at most MAX_ATTENTION_BLOCKS) of equal rows: GPT-2 at 256 tokens runs two, over 3/4 of the
    scores. One block where the length is unknown when traced, or with dropout (its mask is
    drawn over the whole [T, T], as the plain layer draws it)."""
    blocks = 1 if not isinstance(length, int) or rate > 0 else length // block_rows
    blocks = min(blocks, MAX_ATTENTION_BLOCKS)
    if blocks <= 1:
        return [(0, length)]
    size = -(-length // blocks)
    return [(i * size, min((i + 1) * size, length)) for i in range(blocks)]


def training_attention(
    q, k, v, mask, mask_value, rate=0.0, seed=None, keep=False, block_rows=ATTENTION_BLOCK_ROWS
):
    """`layers.softmax_attention` for causal self-attention in training, with its own gradient.
    With `keep` off, the backward pass recomputes the [B, H, T, T] probabilities from q and k
    instead of keeping them; dropout's mask is recomputed from the same stateless seed. With
    `keep` on (and no dropout) it keeps the float32 probabilities, not their copy; under mixed
    precision the compute-dtype copy is cast again. Either way it keeps its [B, H, T, D] output,
    whose dot product with d_out gives the softmax gradient's row sums. `mask_value` is the
    plain layer's `MASK_VALUE`.

    The queries run in `causal_query_blocks`, each over the keys up to its last row: `mask` must
    hide every key after its query, as `layers.attention_mask` does. A query that sees no key
    (leading or packed padding) gets what the plain layer gives it, a uniform softmax over all
    T keys: the mean of v, and the gradient of that mean."""

    scale = _query_scale(q)
    length = q.shape[2]
    blocks = causal_query_blocks(length, rate, block_rows)

    def rows(x, s, e):  # x[:, :, s:e], without a slice for the whole length
        return x if (s, e) == (0, length) else x[:, :, s:e]

    def keys(x, e):  # x's first e keys
        return x if e == length else x[:, :, :e]

    def forward(q):
        return [
            _softmax_attention(
                rows(q, s, e),
                keys(k, e),
                keys(v, e),
                mask if (s, e) == (0, length) else mask[:, :, s:e, :e],
                mask_value,
                rate,
                seed,
            )
            for s, e in blocks
        ]

    sees_a_key = tf.reduce_any(mask, -1, keepdims=True)  # [B, 1, T, 1]
    # A query before the last block that sees no key got the mean of its block's keys' values;
    # the plain layer gives it the mean over all keys. Such queries are rare (leading or packed
    # padding), so the step fixes them up only where there are some.
    early = blocks[-1][0]
    if len(blocks) > 1:
        early_sees = sees_a_key[:, :, :early]
        some_early_unseen = tf.logical_not(tf.reduce_all(early_sees))

    @tf.custom_gradient
    def attend(q, k, v):
        kept = forward(q)
        out = kept[0][0] if len(blocks) == 1 else tf.concat([part[0] for part in kept], 2)
        if len(blocks) > 1:

            def fix_up():
                mean_v = tf.reduce_mean(v, 2, keepdims=True)
                fixed = tf.where(early_sees, out[:, :, :early], mean_v)
                return tf.concat([fixed, out[:, :, early:]], 2)

            out = tf.cond(some_early_unseen, fix_up, lambda: out)

        def grad(d_out):
            # Made after d_out: Grappler cannot merge these with the forward pass's identical
            # ops (the recomputation, the cast), which would keep their outputs alive after all.
            with tf.control_dependencies([d_out]):
                q_again = tf.identity(q)
            again = kept if keep else forward(q_again)
            d_q, d_k, d_v = [], [], []
            for (s, e), (o, *_), (_, q_scaled, probs32, probs) in zip(blocks, kept, again):
                if keep:
                    # q scaled again too: one [B, H, T, D] multiply, where keeping it costs q's size
                    q_scaled = rows(q_again, s, e) * scale
                    if rate == 0 and q.dtype != tf.float32:
                        # After d_out, and from a copy Grappler cannot trace back: it would
                        # merge this cast with the forward pass's and keep both copies alive.
                        with tf.control_dependencies([d_out]):
                            probs = tf.cast(tf.identity(probs32), q.dtype)
                d_o = rows(d_out, s, e)
                # Masked scores get no gradient. Where a query sees some key, its masked
                # probabilities are exactly 0 (exp(MASK_VALUE - its top score) underflows),
                # and so are their gradients below; a query that sees none (a uniform softmax
                # over masked scores) gets a zero d_out row for them. Cheaper than a select over
                # the [B, H, T, T] gradient: d_out is T / D times smaller.
                d_o_seen = d_o * tf.cast(rows(sees_a_key, s, e), d_out.dtype)
                # An unseen row's uniform softmax: in the last block the plain layer's, over
                # all T keys; before it, its mean of v gets its d_out / T below instead.
                d_v.append(tf.matmul(probs, d_o if e == length else d_o_seen, transpose_a=True))
                d_o = d_o_seen
                d_probs = tf.matmul(d_o, keys(v, e), transpose_b=True)
                if rate > 0:  # dropout's gradient is dropout with the same mask
                    d_probs = tf.nn.experimental.stateless_dropout(d_probs, rate=rate, seed=seed)
                d_probs = tf.cast(d_probs, tf.float32)
                # The softmax's gradient, probs * (d_probs - sum_k d_probs * probs), with the sum
                # taken over [.., T, D] rather than [.., T, T] (as FlashAttention's backward pass
                # does): sum_k probs_k * (d_out . v_k) = d_out . sum_k probs_k v_k = d_out . out,
                # dropout's mask included, since out was made from the dropped probabilities.
                row = tf.reduce_sum(
                    tf.cast(d_o, tf.float32) * tf.cast(o, tf.float32), -1, keepdims=True
                )
                d_scores = tf.cast(probs32 * (d_probs - row), q.dtype)
                d_q.append(tf.matmul(d_scores, keys(k, e)) * scale)
                d_k.append(tf.matmul(d_scores, q_scaled, transpose_a=True))
            if len(blocks) == 1:
                return d_q[0], d_k[0], d_v[0]
            d_v = _sum_over_keys(d_v, length)

            def unseen_rows_mean_grad():
                not_seen = tf.cast(tf.logical_not(early_sees), d_out.dtype)
                unseen = tf.reduce_sum(d_out[:, :, :early] * not_seen, 2, keepdims=True)
                return d_v + unseen / length

            d_v = tf.cond(some_early_unseen, unseen_rows_mean_grad, lambda: d_v)
            return tf.concat(d_q, 2), _sum_over_keys(d_k, length), d_v

        return out, grad

    return attend(q, k, v)


def _sum_over_keys(parts, length):
    """The sum of the blocks' key gradients [B, H, e_i, D], each zero past its e_i, as one
    [B, H, length, D] tensor, added in float32 under mixed precision (one rounding, as one
    product's)."""
    dtype = parts[0].dtype
    total = None
    for p in parts:
        p = tf.cast(p, tf.float32)
        if p.shape[2] != length:
            p = tf.pad(p, [[0, 0], [0, 0], [0, length - p.shape[2]], [0, 0]])
        total = p if total is None else total + p
    return tf.cast(total, dtype)

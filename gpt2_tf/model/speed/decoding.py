"""KV-cache decoding kernels: the GPT-2 backbone's `call_with_cache` for a decoding step's few
rows, with the same results as the plain layers' (figures in `speed/__init__.py`).

Each Dense kernel is transposed once per decoding call (`kernels`), and the residual stream runs
transposed, x_t [E, B * t]: each product is kernel_t @ x_t, the fast layout for few rows, with
no transpose between two blocks (LayerNorm normalizes x_t's columns, `layer_norm_t`). The cache
is written in place (`_write_rows`).

A block is two functions on either side of its cache write: `qkv_t` (ln_1, c_attn, and the
split into heads) and `rest_of_block_t` (attention over the cache, c_proj, ln_2 and the MLP,
with both residuals); the head is `head_t`. With `Kernels.xla` (the library's graph decoding
loop) each runs as a small XLA program called from the loop: XLA's products for few rows read
the weights faster than oneDNN's, and it fuses the small ops between them. Without it (the
SavedModel export, which must run where XLA's CPU compiler is off, as in TensorFlow Serving's
default) they are graph ops. Each XLA program is given the kernels already transposed: given
the transposes to fold, XLA picks a slower product layout.

These kernels are for TensorFlow's graph executor. Inside an XLA program (`Generator` with
`jit_compile`) the plain layers run instead: XLA writes the cache in place and lays out the
products itself, and the speed kernels' `InplaceUpdate` has no XLA form.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import tensorflow as tf
from keras import ops

from gpt2_tf.core.compat import in_xla_context
from gpt2_tf.model import speed
from gpt2_tf.model.layers import softmax_attention
from gpt2_tf.model.speed.gradients import gelu


def applies() -> bool:
    """Whether decoding runs these kernels: the speed path on, outside XLA."""
    return speed.enabled() and not in_xla_context()


def init_cache(backbone, batch_size: int, max_length: int):
    """Per layer a (keys, values) pair of [B, H, S, D] buffers, zeroed. `call_with_cache` writes
    into them in place, so each call makes fresh ones: `Empty` is never constant folded or merged
    with a like op, where `zeros` could become one shared constant."""
    c = backbone.config
    shape = tf.stack([batch_size, c.n_head, max_length, c.head_dim])
    dtype = tf.as_dtype(backbone.compute_dtype)
    return tuple(
        tuple(tf.raw_ops.Empty(shape=shape, dtype=dtype, init=True) for _ in "kv")
        for _ in range(c.n_layer)
    )


def transposed_kernel(dense):
    """A Dense layer's kernel (LoRA merged in) as [out, in] in its compute dtype."""
    return tf.transpose(ops.cast(dense.kernel, dense.compute_dtype))


class Kernels(NamedTuple):
    """What a decoding call makes once, outside its loop (`kernels`)."""

    blocks: tuple  # per block, (c_attn, attn.c_proj, c_fc, mlp.c_proj) kernels as [out, in]
    xla: bool = False  # each block's work as small XLA programs (see the module docstring)


def kernels(backbone, xla: bool = False) -> Kernels:
    """Per block, its four Dense kernels transposed to [out, in]: made once per decoding call,
    outside the loop. They hold a copy of the block weights (340 MB at 124M, float32)."""
    blocks = tuple(
        tuple(
            transposed_kernel(dense)
            for dense in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
        )
        for b in backbone.blocks
    )
    return Kernels(blocks, xla)


def _add_bias_t(y_t, bias):
    """y_t [out, N] + bias [out]."""
    return y_t + ops.cast(bias, y_t.dtype)[:, None]


def rows(y_t):
    """[out, N] -> [N, out]; with one row a reshape, free where a transpose copies."""
    return tf.reshape(y_t, (1, -1)) if y_t.shape[1] == 1 else tf.transpose(y_t)


def layer_norm_t(x_t, gamma, beta, epsilon):
    """The LayerNorm of each column of x_t [E, N]: Keras's own op (the one its LayerNormalization
    layer calls, in float32 whatever x_t's dtype) over axis 0."""
    return ops.layer_normalization(x_t, gamma, beta, axis=0, epsilon=epsilon)


# ---- a block's work on either side of its cache write, and the head: each [out, rows] ---------
def qkv_t(heads, dim, x_t, gamma, beta, epsilon, kernel_t, bias, mask):
    """ln_1, then c_attn: x_t [E, B * t] -> q, k, v, each [B, H, t, D] (H, D = `heads`, `dim`;
    B and t are the attention mask's [B, 1, t, S])."""
    qkv = _add_bias_t(tf.matmul(kernel_t, layer_norm_t(x_t, gamma, beta, epsilon)), bias)
    batch, steps = tf.shape(mask)[0], tf.shape(mask)[2]
    qkv = tf.reshape(qkv, (3, heads, dim, batch, steps))
    return tf.unstack(tf.transpose(qkv, (0, 3, 1, 4, 2)), 3)


def rest_of_block_t(x_t, q, k, v, mask, *weights):
    """A block's work after its cache write, x_t [E, N] -> [E, N]: attention of q [B, H, t, D]
    over the cache's k, v [B, H, S, D] (`layers.softmax_attention`), heads merged, c_proj and
    the residual; then ln_2, c_fc, GELU, c_proj and the residual. `weights`: c_proj's kernel
    (transposed) and bias, ln_2's gamma, beta and epsilon, c_fc's and the MLP c_proj's kernels
    (transposed) and biases."""
    attn_proj_t, attn_proj_bias, gamma, beta, epsilon, fc_t, fc_bias, proj_t, proj_bias = weights
    out = softmax_attention(q, k, v, mask)  # [B, H, t, D]
    heads, dim = out.shape[1], out.shape[3]
    merged_t = tf.reshape(tf.transpose(out, (1, 3, 0, 2)), (heads * dim, -1))  # [E, B * t]
    x_t = x_t + _add_bias_t(tf.matmul(attn_proj_t, merged_t), attn_proj_bias)
    h_t = gelu(_add_bias_t(tf.matmul(fc_t, layer_norm_t(x_t, gamma, beta, epsilon)), fc_bias))
    return x_t + _add_bias_t(tf.matmul(proj_t, h_t), proj_bias)  # the [4E, N] stays inside


def head_t(table, hidden):
    """The tied head: hidden [B, E] -> logits [V, B] through the table [V, E] (already
    [out, in])."""
    return tf.matmul(ops.cast(table, hidden.dtype), hidden, transpose_b=True)


@functools.cache
def _as_xla(fn, *static):
    """`fn` with its leading arguments `static` (Python values) bound, as an XLA program."""
    return tf.function(functools.partial(fn, *static), jit_compile=True)


def _run(fn, xla: bool, *args, static=()):
    """`fn(*static, *args)` as graph ops, or with `xla` as its XLA program (compiled once per
    shape)."""
    if not xla:
        return fn(*static, *args)
    return _as_xla(fn, *static)(*(tf.convert_to_tensor(a) for a in args))


def _write_rows(cache, slots, new):
    """Writes `new` [B, H, t, D] into the rows `slots` of `cache` [B, H, S, D] seen as
    [B * H * S, D], in the cache's own buffer. A `tensor_scatter_nd_update` copies the whole
    layer cache at every step inside the decoding `while_loop` (TensorFlow does not forward a
    loop variable's buffer). The old contents are never read again, and the next write to a
    layer waits on this step's attention through the sampled token."""
    d = cache.shape[-1]
    flat = tf.raw_ops.InplaceUpdate(
        x=tf.reshape(cache, (-1, d)), i=slots, v=tf.reshape(tf.cast(new, cache.dtype), (-1, d))
    )
    return tf.reshape(flat, tf.shape(cache))


def _block(block, x_t, mask, cache, slots, kernels, xla):
    """`Block.call_with_cache` for x_t [E, B * t], given the block's kernels transposed."""
    attn, mlp, ln_1, ln_2 = block.attn, block.mlp, block.ln_1, block.ln_2
    ln_1_weights = (ln_1.gamma, ln_1.beta, ln_1.epsilon)
    static = (attn.n_head, attn.head_dim)
    q, k, v = _run(
        qkv_t, xla, x_t, *ln_1_weights, kernels[0], attn.c_attn.bias, mask, static=static
    )
    k_all, v_all = (_write_rows(c, slots, new) for c, new in zip(cache, (k, v)))
    weights = (kernels[1], attn.c_proj.bias, ln_2.gamma, ln_2.beta, ln_2.epsilon)
    weights += (kernels[2], mlp.c_fc.bias, kernels[3], mlp.c_proj.bias)
    return _run(rest_of_block_t, xla, x_t, q, k_all, v_all, mask, *weights), (k_all, v_all)


def call_with_cache(backbone, x, mask, cache, index, block_kernels=None):
    """The backbone's blocks and final LayerNorm for x [B, t, E] (embedded) at cache slots
    index..index+t-1 -> (hidden [B, t, E], cache sharing the given buffers). `mask` is the
    [B, 1, t, S] attention mask; `block_kernels` is `kernels(backbone)`, made here if None.
    The residual stream runs transposed, [E, B * t], from the embedding to the final LayerNorm,
    so each product is kernel_t @ x_t with no transpose between the blocks."""
    block_kernels = kernels(backbone) if block_kernels is None else block_kernels
    b, t, e = ops.shape(x)[0], ops.shape(x)[1], backbone.config.n_embd
    s = ops.shape(mask)[-1]
    x_t = tf.transpose(tf.reshape(x, (-1, e)))  # [E, B * t]
    # The cache rows written now, with each [B, H, S, D] buffer seen as [B * H * S, D]
    heads = tf.range(b * backbone.config.n_head)[:, None] * s  # [B * H, 1]
    slots = tf.reshape(heads + tf.range(t)[None, :] + index, (-1,))  # [B * H * t]
    new_cache = []
    for block, layer_cache, k in zip(backbone.blocks, cache, block_kernels.blocks):
        x_t, layer_cache = _block(block, x_t, mask, layer_cache, slots, k, block_kernels.xla)
        new_cache.append(layer_cache)
    return tf.reshape(backbone.ln_f(rows(x_t)), (b, t, e)), tuple(new_cache)


def step_logits(hidden, table, xla: bool = False):
    """[B, E] -> [B, V] through the tied table [V, E] (already [out, in]), as table @ hidden^T."""
    return rows(_run(head_t, xla, table, hidden))

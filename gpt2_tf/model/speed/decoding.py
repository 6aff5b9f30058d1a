"""KV-cache decoding kernels: the GPT-2 backbone's `call_with_cache` for a decoding step's few
rows, with the same results as the plain layers' (figures in `speed/__init__.py`).

Each Dense kernel is transposed once per decoding call (`kernels`), and a product is
(kernel_t @ x^T)^T, oneDNN's fast case for few rows. Activations stay 2-D ([B * t, E]: one MatMul
each, not a tensordot's dozen ops), and the cache is written in place (`_write_rows`).

These kernels are for TensorFlow's graph executor. Inside an XLA program (`Generator` with
`jit_compile`) the plain layers run instead: XLA writes the cache in place and lays out the
products itself, and the speed kernels' `InplaceUpdate` has no XLA form.
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops

from gpt2_tf.core.compat import in_xla_context
from gpt2_tf.model import speed
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


def kernels(backbone):
    """Per block, its four Dense kernels transposed to [out, in]: made once per decoding call,
    outside the loop. They hold a copy of the block weights (340 MB at 124M, float32)."""
    return tuple(
        tuple(
            transposed_kernel(dense)
            for dense in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
        )
        for b in backbone.blocks
    )


def project(x, kernel_t, bias=None):
    """x [N, in] @ kernel + bias, given kernel_t [out, in], as (kernel_t @ x^T)^T."""
    return _add_bias(rows(project_t(x, kernel_t)), bias)


def project_t(x, kernel_t, bias=None):
    """`project` left transposed, [out, N], for a consumer that takes that layout."""
    y_t = tf.matmul(kernel_t, x, transpose_b=True)
    return y_t if bias is None else y_t + ops.cast(bias, y_t.dtype)[:, None]


def rows(y_t):
    """[out, N] -> [N, out]; with one row a reshape, free where a transpose copies."""
    return tf.reshape(y_t, (1, -1)) if y_t.shape[1] == 1 else tf.transpose(y_t)


def _add_bias(y, bias):
    return y if bias is None else y + ops.cast(bias, y.dtype)


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


def _attention(attn, x, mask, cache, slots, batch, steps, kernels):
    """`CausalSelfAttention` for x [B * t, E] and kernels (c_attn, c_proj) transposed."""
    qkv_t = project_t(x, kernels[0], attn.c_attn.bias)  # [3E, B * t]
    qkv_t = tf.reshape(qkv_t, (3, attn.n_head, attn.head_dim, batch, steps))
    q, k, v = tf.unstack(tf.transpose(qkv_t, (0, 3, 1, 4, 2)), 3)  # each [B, H, t, D]
    k_all, v_all = (_write_rows(c, slots, new) for c, new in zip(cache, (k, v)))
    out = attn.attend(q, k_all, v_all, mask, training=False)  # [B, t, E]
    out = project(tf.reshape(out, (-1, attn.n_embd)), kernels[1], attn.c_proj.bias)
    return out, (k_all, v_all)


def _mlp(mlp, x, kernels):
    """`MLP` for x [N, E] and kernels (c_fc, c_proj) transposed."""
    h_t = gelu(project_t(x, kernels[0], mlp.c_fc.bias))  # [inner, N]
    return _add_bias(rows(tf.matmul(kernels[1], h_t)), mlp.c_proj.bias)


def call_with_cache(backbone, x, mask, cache, index, block_kernels=None):
    """The backbone's blocks and final LayerNorm for x [B, t, E] (embedded) at cache slots
    index..index+t-1 -> (hidden [B, t, E], cache sharing the given buffers). `mask` is the
    [B, 1, t, S] attention mask; `block_kernels` is `kernels(backbone)`, made here if None."""
    block_kernels = kernels(backbone) if block_kernels is None else block_kernels
    b, t, e = ops.shape(x)[0], ops.shape(x)[1], backbone.config.n_embd
    s = ops.shape(mask)[-1]
    x = tf.reshape(x, (-1, e))  # [B * t, E]
    # The cache rows written now, with each [B, H, S, D] buffer seen as [B * H * S, D]
    heads = tf.range(b * backbone.config.n_head)[:, None] * s  # [B * H, 1]
    slots = tf.reshape(heads + tf.range(t)[None, :] + index, (-1,))  # [B * H * t]
    new_cache = []
    for block, layer_cache, k in zip(backbone.blocks, cache, block_kernels):
        a, layer_cache = _attention(block.attn, block.ln_1(x), mask, layer_cache, slots, b, t, k)
        x = x + a
        x = x + _mlp(block.mlp, block.ln_2(x), k[2:])
        new_cache.append(layer_cache)
    return tf.reshape(backbone.ln_f(x), (b, t, e)), tuple(new_cache)


def step_logits(hidden, table):
    """[B, E] -> [B, V] through the tied table [V, E] (already [out, in]), as table @ hidden^T."""
    return project(hidden, ops.cast(table, hidden.dtype))

"""KV-cache decoding kernels: the GPT-2 backbone's `call_with_cache` for a decoding step's few
rows, with the same results as the plain layers' (figures in `speed/__init__.py`).

Each Dense kernel is transposed once per decoding call (`kernels`), and a product is
(kernel_t @ x^T)^T, the fast layout for few rows. Activations stay 2-D ([B * t, E]: one MatMul
each, not a tensordot's dozen ops), and the cache is written in place (`_write_rows`).

A block's work between the cache writes is three functions: `qkv_t` (the c_attn product),
`attention_t` (attention over the cache, then c_proj) and `mlp_t`, and the head is `head_t`; each
returns its result transposed, [out, rows]. With `Kernels.xla` (the library's graph decoding
loop) each runs as a small XLA program called from the loop: XLA's products for few rows read
the weights faster than oneDNN's, and it fuses the attention's small ops. Without it (the
SavedModel export, which must run where XLA's CPU compiler is off, as in TensorFlow Serving's
default) they are graph ops. Each XLA program is given the kernel already transposed and returns
[out, rows]: given the transposes to fold, XLA picks a slower product layout.

These kernels are for TensorFlow's graph executor. Inside an XLA program (`Generator` with
`jit_compile`) the plain layers run instead: XLA writes the cache in place and lays out the
products itself, and the speed kernels' `InplaceUpdate` has no XLA form.
"""

from __future__ import annotations

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


def project_t(x, kernel_t, bias=None):
    """x [N, in] @ kernel + bias, given kernel_t [out, in], left transposed: [out, N]."""
    return _add_bias_t(tf.matmul(kernel_t, x, transpose_b=True), bias)


def _add_bias_t(y_t, bias):
    """y_t [out, N] + bias [out]."""
    return y_t if bias is None else y_t + ops.cast(bias, y_t.dtype)[:, None]


def rows(y_t):
    """[out, N] -> [N, out]; with one row a reshape, free where a transpose copies."""
    return tf.reshape(y_t, (1, -1)) if y_t.shape[1] == 1 else tf.transpose(y_t)


# ---- a block's work between the cache writes, and the head: each [out, rows] ------------------
def qkv_t(x, kernel_t, bias):
    """c_attn: x [N, E] -> [3E, N]."""
    return project_t(x, kernel_t, bias)


def attention_t(q, k, v, mask, kernel_t, bias):
    """Attention of q [B, H, t, D] over the cache's k, v [B, H, S, D] (`layers.softmax_attention`),
    heads merged, then c_proj: -> [E, B * t]."""
    out = softmax_attention(q, k, v, mask)  # [B, H, t, D]
    heads, dim = out.shape[1], out.shape[3]
    merged = tf.reshape(tf.transpose(out, (0, 2, 1, 3)), (-1, heads * dim))  # [B * t, E]
    return project_t(merged, kernel_t, bias)


def mlp_t(x, fc_t, fc_bias, proj_t, proj_bias):
    """c_fc -> GELU -> c_proj: x [N, E] -> [E, N]; the inner activations stay [4E, N]."""
    h_t = gelu(project_t(x, fc_t, fc_bias))
    return _add_bias_t(tf.matmul(proj_t, h_t), proj_bias)


def head_t(table, hidden):
    """The tied head: hidden [B, E] -> logits [V, B] through the table [V, E] (already
    [out, in])."""
    return tf.matmul(ops.cast(table, hidden.dtype), hidden, transpose_b=True)


_AS_XLA = {f: tf.function(f, jit_compile=True) for f in (qkv_t, attention_t, mlp_t, head_t)}


def _run(fn, xla: bool, *args):
    """`fn(*args)` as graph ops, or with `xla` as its XLA program (compiled once per shape)."""
    if not xla:
        return fn(*args)
    return _AS_XLA[fn](*(tf.convert_to_tensor(a) for a in args))


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


def _attention(attn, x, mask, cache, slots, batch, steps, kernels, xla):
    """`CausalSelfAttention` for x [B * t, E] and kernels (c_attn, c_proj) transposed."""
    qkv = _run(qkv_t, xla, x, kernels[0], attn.c_attn.bias)  # [3E, B * t]
    qkv = tf.reshape(qkv, (3, attn.n_head, attn.head_dim, batch, steps))
    q, k, v = tf.unstack(tf.transpose(qkv, (0, 3, 1, 4, 2)), 3)  # each [B, H, t, D]
    k_all, v_all = (_write_rows(c, slots, new) for c, new in zip(cache, (k, v)))
    out = _run(attention_t, xla, q, k_all, v_all, mask, kernels[1], attn.c_proj.bias)
    return rows(out), (k_all, v_all)


def _mlp(mlp, x, kernels, xla):
    """`MLP` for x [N, E] and kernels (c_fc, c_proj) transposed."""
    fc, proj = mlp.c_fc, mlp.c_proj
    return rows(_run(mlp_t, xla, x, kernels[0], fc.bias, kernels[1], proj.bias))


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
    new_cache, xla = [], block_kernels.xla
    for block, layer_cache, k in zip(backbone.blocks, cache, block_kernels.blocks):
        a, layer_cache = _attention(
            block.attn, block.ln_1(x), mask, layer_cache, slots, b, t, k, xla
        )
        x = x + a
        x = x + _mlp(block.mlp, block.ln_2(x), k[2:], xla)
        new_cache.append(layer_cache)
    return tf.reshape(backbone.ln_f(x), (b, t, e)), tuple(new_cache)


def step_logits(hidden, table, xla: bool = False):
    """[B, E] -> [B, V] through the tied table [V, E] (already [out, in]), as table @ hidden^T."""
    return rows(_run(head_t, xla, table, hidden))

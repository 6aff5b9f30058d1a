"""The fused, chunked tied LM head loss: `tied_head_sums` gives the sums and gradients of
`losses.batch_sums(labels, hidden @ table.T, weights)` without the [N, vocab] float32 logits,
their softmax and their gradient all live at once; `tied_lookup` gives the embedding table's
two uses in training one gradient buffer (figures in `speed/__init__.py`)."""

from __future__ import annotations

import tensorflow as tf

from gpt2_tf.core import hardware
from gpt2_tf.core.compat import in_xla_context, no_autocast

# Rows of the [rows, vocab] logits the fused head holds at once: 512 x 50257 float32 is 103 MB.
HEAD_CHUNK_ROWS = 512
# In float32 the chunks' logit gradients are float32 too, and joining them is a copy as large
# as all of them (206 MB at 1,024 rows): up to this many rows go in one chunk (see
# `head_chunk_rows`).
FLOAT32_HEAD_CHUNK_ROWS = 1024
# Vocabulary slices of the bfloat16 hidden-state gradient's [N, V] @ [V, E] product (see
# `_logit_grad_times_table`).
HEAD_GRAD_VOCAB_SPLIT = 8192
# Training pads the head's rows to a multiple of this (see `_head_chunks`).
HEAD_ROW_MULTIPLE = 64


def tied_lookup(table, token_ids, dtype):
    """(token embeddings [B, T, E] in `dtype`, the table [V, E]) from the embedding table (a
    float32 variable), for the training step of a tied LM head that takes the second output as
    its table: the same values and gradient as two reads of the table, with the gradient made
    in place. Autodiff adds the lookup's row gradient to the head's dense [V, E] one by making
    the rows dense too and adding the two, three [V, E] float32 buffers at once (147 MB each for
    GPT-2 124M, at the step's memory peak); here the rows are added into the head's buffer."""
    with no_autocast():
        table = tf.convert_to_tensor(table)

    @tf.custom_gradient
    def tied(t):
        def grad(d_tokens, d_table):
            rows = tf.reshape(tf.cast(d_tokens, t.dtype), [-1, t.shape[-1]])
            ids = tf.reshape(token_ids, [-1, 1])
            if d_table is None:  # no head took the table
                d_table = tf.zeros_like(t)
            return _scatter_add(d_table, ids, rows)

        return (tf.cast(tf.gather(t, token_ids), dtype), tf.identity(t)), grad

    return tied(table)


def _scatter_add(tensor, ids, rows):
    """tensor with rows [n, E] added at ids [n, 1], in tensor's buffer where nothing else reads
    it. TensorFlow's CPU and GPU `TensorScatterAdd` kernel asks to take over its updates' buffer
    instead of its input's, so it never can and copies the input first: for GPT-2's [V, E]
    float32 table gradient, 13-15 ms of a training step against under 1 ms (AMD EPYC Zen 4).
    `ScatterNdNonAliasingAdd` takes the same values and takes over its input's buffer; XLA has
    no kernel for it, and does its scatters in place anyway."""
    if in_xla_context():
        return tf.tensor_scatter_nd_add(tensor, ids, rows)
    return tf.raw_ops.ScatterNdNonAliasingAdd(input=tensor, indices=ids, updates=rows)


def tied_head_sums(
    hidden,
    table,
    labels,
    weights,
    training=True,
    table_grad=True,
    chunk_rows=None,
    vocab_split=HEAD_GRAD_VOCAB_SPLIT,
):
    """`batch_sums` of the tied LM head, fused and chunked: the same sums and gradients as
    `batch_sums(labels, hidden @ table.T, weights)` under autodiff.

    hidden [N, E] (compute dtype), table [V, E] (the embedding, float32), labels [N], weights [N].
    Each chunk of rows makes its logits, loss and logit gradient at once (the gradient of a sum of
    NLLs is `(softmax - onehot) * weight`), so only one chunk's float32 logits ever exist; the
    logit gradients are kept in the compute dtype. With `training`, the backward pass multiplies
    them out, scaled by the incoming gradient: the head is the forward pass's last work, so they
    live no longer than the products' results would, and the float32 [V, E] table gradient is
    made once, at its scale, in a buffer `tied_lookup` can add the embedding's rows to.
    `table_grad=False` (a frozen embedding, as under LoRA) skips the table's gradient and its
    [V, E] product.
    """
    hidden = tf.convert_to_tensor(hidden)
    table = tf.convert_to_tensor(table)
    labels = tf.cast(labels, tf.int32)
    weights = tf.cast(weights, tf.float32)
    chunk_rows = chunk_rows or head_chunk_rows(hidden.dtype)
    if not training:
        return _head_chunks(hidden, table, labels, weights, chunk_rows, False)

    @tf.custom_gradient
    def fused(h, t):
        n = tf.shape(h)[0]
        nll, count, correct, g, h_padded, w = _head_chunks(h, t, labels, weights, chunk_rows, True)

        def grad(d_nll, d_count, d_correct):
            return _logit_grad_products(g, h_padded, n, w, d_nll, table_grad, vocab_split)

        return (nll, count, correct), grad

    return fused(hidden, table)


def head_chunk_rows(dtype) -> int:
    """The fused head's chunk rows for hidden states of `dtype`: HEAD_CHUNK_ROWS, or in float32
    FLOAT32_HEAD_CHUNK_ROWS. A float32 step of GPT-2 124M at 1,024 target tokens (AMD EPYC Zen
    4): one chunk instead of two left the allocator's peak (elsewhere in the backward pass) as
    it was and took peak RSS from 3,743-3,789 to 3,669-3,714 MB (LoRA 2,535 -> 2,469), steps
    level or 1.3-1.4% faster (two trainers alternating). In bfloat16 the step was level and its
    peak RSS 90 MB higher: there the head's chunk loop is the step's peak."""
    return FLOAT32_HEAD_CHUNK_ROWS if tf.as_dtype(dtype) == tf.float32 else HEAD_CHUNK_ROWS


def _head_chunks(hidden, table, labels, weights, chunk_rows, logit_grad):
    """(NLL sum, weight sum, correct sum), and with `logit_grad` the [N', V] logit gradients in
    the compute dtype, the hidden states [N', E] (N' = N padded to HEAD_ROW_MULTIPLE with zero
    rows, whose logit gradients are zero) and the compute-dtype table [V, E] the logits were
    made with (the backward pass's products reuse it)."""
    w = tf.cast(table, hidden.dtype)  # [V, E]
    n = tf.shape(hidden)[0]
    if logit_grad:
        # Zero-weight rows up to a multiple of HEAD_ROW_MULTIPLE: the XLA chunk kernel is
        # compiled once per shape, so a varying number of target tokens makes at most
        # chunk_rows / HEAD_ROW_MULTIPLE shapes. Padding rows get a zero logit gradient.
        pad = -n % HEAD_ROW_MULTIPLE
        hidden = tf.pad(hidden, [[0, pad], [0, 0]])
        labels, weights = tf.pad(labels, [[0, pad]]), tf.pad(weights, [[0, pad]])
    rows_total = tf.shape(hidden)[0]
    chunks = (rows_total + chunk_rows - 1) // chunk_rows
    zero = tf.constant(0.0)
    # The chunks' logit gradients, [rows, V] in the compute dtype: both products with them run
    # once, over all rows, in the backward pass. The table's gradient is then one [V, E] product
    # with no float32 running sum (three [V, E] float32 buffers live at once) to add each chunk
    # to.
    g_rows = tf.TensorArray(hidden.dtype, size=chunks, infer_shape=False)

    def body(i, nll_sum, correct_sum, g_rows):
        start = i * chunk_rows
        size = tf.minimum(chunk_rows, rows_total - start)
        h = tf.slice(hidden, [start, 0], [size, -1])
        y = tf.slice(labels, [start], [size])
        wt = tf.slice(weights, [start], [size])
        logits = tf.matmul(h, w, transpose_b=True)  # [c, V], compute dtype
        if logit_grad:
            nll, correct, g = _chunk_nll_and_grad(logits, y, wt)
            return i + 1, nll_sum + nll, correct_sum + correct, g_rows.write(i, g)
        logits = tf.cast(logits, tf.float32)
        top = tf.reduce_max(logits, -1)
        probs = tf.nn.softmax(logits)  # oneDNN's fused kernel
        # log-sum-exp from the top probability, which is >= 1/V and so never underflows.
        lse = top - tf.math.log(tf.reduce_max(probs, -1))
        nll, correct = _nll_and_correct(logits, top, lse, y, wt)
        return i + 1, nll_sum + nll, correct_sum + correct, g_rows

    # One chunk at a time: with the default 10 parallel iterations, every chunk's [c, V]
    # temporaries could be live at once, which made the chunking pointless.
    _, nll, correct, g_rows = tf.while_loop(
        lambda i, *_: i < chunks, body, (0, zero, zero, g_rows), parallel_iterations=1
    )
    count = tf.reduce_sum(weights)
    if not logit_grad:
        return nll, count, correct
    # One chunk (float32 up to FLOAT32_HEAD_CHUNK_ROWS rows) is read as it is: concat() copies
    # even one element (1,024 x 50,257 float32: 206 MB, 13.6 ms). Either is of unknown rank
    # (no inferred shapes), and tf.matmul then makes a BatchMatMulV2, which oneDNN runs far
    # slower than MatMul in bfloat16.
    g = tf.cond(chunks == 1, lambda: g_rows.read(0), g_rows.concat)
    return nll, count, correct, tf.ensure_shape(g, [None, None]), hidden, w


def _logit_grad_products(g, hidden, n, w, d_nll, table_grad, vocab_split):
    """The head's gradients (d_hidden [n, E], d_table [V, E] float32 or None) from its logit
    gradients g [N', V], the padded hidden states [N', E], the forward pass's compute-dtype
    table w [V, E] and the incoming gradient of the NLL sum."""
    d_hidden = _logit_grad_times_table(g, w, vocab_split)[:n] * tf.cast(d_nll, hidden.dtype)
    if not table_grad:
        return d_hidden, None
    # After d_hidden, so the compute-dtype table copy `w` is freed before the [V, E] product.
    # The scale writes into the product's (float32) or the cast's buffer: no second copy.
    with tf.control_dependencies([d_hidden]):
        d_table = tf.cast(tf.matmul(g, hidden, transpose_a=True), tf.float32) * d_nll
    return d_hidden, d_table


@tf.function(jit_compile=True)
def _chunk_nll_and_grad(logits, labels, weights):
    """One chunk's (NLL sum, correct sum, logit gradient (softmax - onehot) * weight) from its
    [c, V] logits, in float32 inside, the gradient returned in the logits' dtype. XLA fuses what
    would be four live [c, V] float32 results in TensorFlow into loops sharing one temporary."""
    logits_f = tf.cast(logits, tf.float32)
    top = tf.reduce_max(logits_f, -1)
    e = tf.exp(logits_f - top[:, None])
    total = tf.reduce_sum(e, -1)
    nll, correct = _nll_and_correct(logits_f, top, top + tf.math.log(total), labels, weights)
    onehot = tf.one_hot(labels, tf.shape(logits)[1], dtype=tf.float32)
    g = e * (weights / total)[:, None] - onehot * weights[:, None]
    return nll, correct, tf.cast(g, logits.dtype)


def _nll_and_correct(logits, top, lse, labels, weights):
    """A chunk's weighted (NLL sum, correct sum) from its float32 logits [c, V], their row
    maxima and log-sum-exps. A tie for the top counts as correct, as in `batch_sums`."""
    picked = tf.gather(logits, labels, batch_dims=1)
    nll = tf.reduce_sum((lse - picked) * weights)
    return nll, tf.reduce_sum(tf.cast(picked >= top, tf.float32) * weights)


def _logit_grad_times_table(g, w, vocab_split):
    """g [N, V] @ w [V, E]. In bfloat16 on a CPU with AMX, summed over vocabulary slices in
    float32: oneDNN's AMX kernel runs a product whose inner dimension is the whole vocabulary
    at half speed, slices of it at full speed (figures in `speed/__init__.py`). Float32 gains
    nothing from it, nor AVX512-BF16 (AMD EPYC Zen 4, 1,024 x 50,257 x 768: 205 ms as one
    product, 213 ms in slices with their copies)."""
    v = w.shape[0]
    if g.dtype != tf.bfloat16 or v is None or v <= vocab_split or not hardware.onednn_uses_amx():
        return tf.matmul(g, w)
    parts = [
        tf.cast(
            tf.matmul(g[:, start : start + vocab_split], w[start : start + vocab_split]), tf.float32
        )
        for start in range(0, v, vocab_split)
    ]
    return tf.cast(tf.add_n(parts), g.dtype)

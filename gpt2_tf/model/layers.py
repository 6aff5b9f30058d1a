"""The pieces of a GPT-2 block: fused causal self-attention, the tanh-GELU MLP, the pre-LN block.

Layer and weight names follow OpenAI's (`c_attn`, `c_proj`, `c_fc`, `ln_1`, `ln_2`) so the weight
map in `weights.py` reads one to one. Keras `Dense` kernels are `[in, out]`, the layout of OpenAI's
and Hugging Face's Conv1D, so no weight is transposed on import.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

# A large finite negative, not -inf: a row with every key masked (a left-padding query) then
# gets a uniform softmax instead of NaN. Scores are float32 when it is applied.
MASK_VALUE = -1e9
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@tf.custom_gradient
def gelu(x):
    """OpenAI's tanh-approximate GELU. The forward pass is `tf.nn.gelu(approximate=True)`, op for
    op; the gradient is written out from `x` alone, recomputing the tanh.

    Autodiff through `tf.nn.gelu` keeps three more [tokens, 4E] tensors per block for its backward
    pass (x/2, tanh, 1 + tanh; 12.6 MB each at GPT-2 124M, batch 4 x 256, float32). Peak RSS of
    that training step fell by about 200 MB, and its CPU time by about 4%.
    """

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
    """`gelu` for training: the forward pass and the gradient each one XLA-compiled loop over
    the [tokens, 4E] tensor, computed in float32 whatever the input dtype.

    TensorFlow runs the GELU as a chain of element-wise ops, each a pass over memory, and in
    bfloat16 each also converts to float32 and back; XLA fuses each chain into one pass. At
    [1,024, 3,072] bfloat16, op time under the profiler: forward 11.5-14 -> 8 ms, gradient
    20-22 -> 9 ms. XLA's own bfloat16 arithmetic was slower than TensorFlow's (19 and 33 ms),
    so the inputs are cast. A GPT-2 124M training step (batch 4 x 256, two trainers alternating
    in one process, median of 8 steps): bfloat16 3.44 -> 3.04 s, LoRA bfloat16 2.57 -> 2.20 s,
    float32 6.53 -> 6.12 s. Inference and decoding keep `gelu`, so an exported SavedModel needs
    no XLA.
    """

    def grad(dy):
        return _fused_gelu_grad(x, dy)

    return _fused_gelu(x), grad


@keras.saving.register_keras_serializable(package="gpt2_tf")
class Dense(keras.layers.Dense):
    """Keras `Dense`, with a LoRA forward pass of x·W + (alpha/r)·(x·A)·B.

    Keras's own LoRA path forms the merged kernel W + (alpha/r)·A·B at every call, so its backward
    pass is a full [in, out] weight-gradient product per layer (about 43 GFLOP a step for
    `c_attn` of GPT-2 124M at 1,024 tokens) only to be projected onto A and B. Here the frozen
    kernel gets no gradient and A, B get theirs from [N, r]-sized products. The variables, their
    names and `enable_lora` are Keras's, so saving, loading and `merge_lora` are unchanged.

    In training under mixed precision, the kernel product is `recast_matmul`, which keeps no
    compute-dtype copy of the kernel for the backward pass.
    """

    def call(self, inputs, training=None):
        recast = training and self.variable_dtype != self.compute_dtype
        if self.quantization_mode is not None or not (self.lora_enabled or recast):
            return super().call(inputs, training=training)
        x = recast_matmul(inputs, self._kernel) if recast else ops.matmul(inputs, self._kernel)
        if self.lora_enabled:
            scale = ops.cast(self.lora_alpha / self.lora_rank, self.compute_dtype)
            x = x + ops.matmul(ops.matmul(inputs, self.lora_kernel_a) * scale, self.lora_kernel_b)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def recast_matmul(x, kernel):
    """x [..., in] (compute dtype) @ kernel [in, out] (a float32 variable) under mixed precision,
    with the kernel cast again in the backward pass instead of kept.

    Autodiff of `x @ cast(kernel)` keeps every layer's compute-dtype copy of its kernel from the
    forward pass to the backward one: for GPT-2 124M in bfloat16, 162 MB (85M block weights)
    more at the step's allocation peak, and peak RSS of the `make bench` case 3,727-3,733 ->
    3,605-3,653 MB. Casting again costs a pass over each kernel: a bfloat16 step took 3.22 ->
    3.27 s (two trainers alternating steps in one process, median of 8). A frozen kernel (LoRA)
    gets no gradient product.
    """
    # Read under no autocast scope: `kernel.value` would hand back the cast, which autodiff keeps.
    with keras.src.backend.AutocastScope(None):
        table = tf.convert_to_tensor(kernel.value)
    trainable = kernel.trainable

    @tf.custom_gradient
    def product(x, table):
        shape = tf.shape(x)
        x2 = tf.reshape(x, (-1, shape[-1]))

        def grad(dy):
            dy2 = tf.reshape(dy, (-1, tf.shape(dy)[-1]))
            # Ordered after dy, so Grappler cannot merge it with the forward cast (the same op
            # on the same input), which would keep that one alive again.
            with tf.control_dependencies([dy]):
                w = tf.cast(table, dy.dtype)
            dx = tf.reshape(tf.matmul(dy2, w, transpose_b=True), shape)
            if not trainable:
                return dx, None
            return dx, tf.cast(tf.matmul(x2, dy2, transpose_a=True), table.dtype)

        y = tf.reshape(
            tf.matmul(x2, tf.cast(table, x.dtype)), tf.concat([shape[:-1], tf.shape(table)[1:]], 0)
        )
        y.set_shape(x.shape[:-1].concatenate(table.shape[1:]))
        return y, grad

    return product(x, table)


def _dense(units: int, name: str, std: float, policy) -> Dense:
    init = keras.initializers.RandomNormal(stddev=std)
    return Dense(units, kernel_initializer=init, name=name, dtype=policy)


def transposed_kernel(dense):
    """A Dense layer's kernel (LoRA merged in) as [out, in] in its compute dtype, made once per
    decoding call (`GPT2Backbone.decoding_kernels`)."""
    return tf.transpose(ops.cast(dense.kernel, dense.compute_dtype))


def project(x, kernel_t, bias=None):
    """x [N, in] @ kernel + bias for a decoding step's few rows, given kernel_t [out, in], as
    (kernel_t @ x^T)^T. This is oneDNN's fast case: at 124M the block MatMuls took 24% less time
    per token at batch 1 than x @ kernel, and batch 8 went from about 80 to about 100 new
    tokens/s (`x @ kernel_t^T` was slower than both). The weights are read once per generated
    token, so this is most of a step."""
    return _add_bias(rows(project_t(x, kernel_t)), bias)


def project_t(x, kernel_t, bias=None):
    """`project` left transposed, [out, N], for a consumer that takes that layout (c_fc's output
    goes through the GELU into c_proj's product, c_attn's into the head split): one transpose
    fewer each. At batch 8 the transposes were about 10% of a decoding step's op time."""
    y_t = tf.matmul(kernel_t, x, transpose_b=True)
    return y_t if bias is None else y_t + ops.cast(bias, y_t.dtype)[:, None]


def rows(y_t):
    """[out, N] -> [N, out]. With one row (batch 1) the memory is the same, and a reshape is free
    where a transpose is a copying op."""
    return tf.reshape(y_t, (1, -1)) if y_t.shape[1] == 1 else tf.transpose(y_t)


def _add_bias(y, bias):
    return y if bias is None else y + ops.cast(bias, y.dtype)


def attention_mask(padding_mask, query_len: int, key_len: int, query_offset=0):
    """Boolean [B, 1, Tq, Tk]: key k visible to query q when k <= q + offset and k is real."""
    q = ops.arange(query_len)[:, None] + query_offset  # [Tq, 1]
    k = ops.arange(key_len)[None, :]  # [1, Tk]
    causal = ops.expand_dims(k <= q, 0)  # [1, Tq, Tk]
    real = ops.cast(padding_mask, "bool")[:, None, :]  # [B, 1, Tk]
    return ops.expand_dims(ops.logical_and(causal, real), 1)  # [B, 1, Tq, Tk]


def softmax_attention(q, k, v, mask, rate=0.0, seed=None):
    """softmax(q·kᵀ/√D, masked) · v for q, k, v [B, H, T, D] in the compute dtype, mask
    [B, 1, T, T] boolean; the scores and their softmax are float32. `seed` is a stateless seed for
    dropout on the probabilities (`rate` > 0)."""
    return _softmax_attention(q, k, v, mask, rate, seed)[0]


def _softmax_attention(q, k, v, mask, rate, seed):
    """(out, q scaled, float32 probabilities, the probabilities v is multiplied by)."""
    q = q * tf.cast(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)  # [B, H, Tq, Tk]
    probs32 = tf.nn.softmax(tf.where(mask, scores, MASK_VALUE))
    probs = tf.cast(probs32, q.dtype)
    if rate > 0:
        probs = tf.nn.experimental.stateless_dropout(probs, rate=rate, seed=seed)
    return tf.matmul(probs, v), q, probs32, probs


def recomputed_attention(q, k, v, mask, rate=0.0, seed=None):
    """`softmax_attention` whose backward pass recomputes the [B, H, T, T] probabilities from
    q and k (which it keeps anyway) instead of keeping them from the forward pass.

    Autodiff keeps each layer's float32 softmax and, under mixed precision, its bfloat16 copy
    too: 12.6 + 6.3 MB a layer at batch 4 x 256 with 12 heads, about 230 MB over GPT-2 124M's
    12 blocks, all live when the backward pass starts. The recomputation is one q·kᵀ product and
    a softmax per layer, well under 1% of a training step's FLOPs. Dropout's mask is recomputed
    from the same stateless seed, so it is the forward pass's.
    """

    @tf.custom_gradient
    def attend(q, k, v):
        out = _softmax_attention(q, k, v, mask, rate, seed)[0]

        def grad(d_out):
            # The dependency on d_out keeps Grappler from merging the recomputation with the
            # forward pass's identical ops (which would keep their outputs alive after all).
            with tf.control_dependencies([d_out]):
                q_again = tf.identity(q)
            _, q_scaled, probs32, probs = _softmax_attention(q_again, k, v, mask, rate, seed)
            d_v = tf.matmul(probs, d_out, transpose_a=True)
            d_probs = tf.matmul(d_out, v, transpose_b=True)
            if rate > 0:  # dropout's gradient is dropout with the same mask
                d_probs = tf.nn.experimental.stateless_dropout(d_probs, rate=rate, seed=seed)
            d_probs = tf.cast(d_probs, tf.float32)
            # The softmax's gradient (TensorFlow's SoftmaxGrad); masked scores get none.
            d_scores = probs32 * (d_probs - tf.reduce_sum(d_probs * probs32, -1, keepdims=True))
            d_scores = tf.cast(tf.where(mask, d_scores, 0.0), q.dtype)
            d_q = tf.matmul(d_scores, k) * tf.cast(1.0 / math.sqrt(q.shape[-1]), q.dtype)
            return d_q, tf.matmul(d_scores, q_scaled, transpose_a=True), d_v

        return out, grad

    return attend(q, k, v)


def _write_rows(cache, rows, new):
    """Writes `new` [B, H, t, D] into the rows `rows` of `cache` [B, H, S, D] seen as
    [B * H * S, D], in the cache's own buffer (see `CausalSelfAttention.call_with_cache`)."""
    d = cache.shape[-1]
    flat = tf.raw_ops.InplaceUpdate(
        x=tf.reshape(cache, (-1, d)), i=rows, v=tf.reshape(tf.cast(new, cache.dtype), (-1, d))
    )
    return tf.reshape(flat, tf.shape(cache))


@keras.saving.register_keras_serializable(package="gpt2_tf")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head attention with one fused query/key/value projection (`c_attn`)."""

    def __init__(
        self, n_embd: int, n_head: int, dropout: float = 0.0, proj_std: float = 0.02, **kwargs
    ):
        super().__init__(**kwargs)
        self.n_embd, self.n_head, self.dropout_rate = n_embd, n_head, dropout
        self.head_dim, self.proj_std = n_embd // n_head, proj_std
        self.c_attn = _dense(3 * n_embd, "c_attn", 0.02, self.dtype_policy)
        self.c_proj = _dense(n_embd, "c_proj", proj_std, self.dtype_policy)
        self.attn_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape)

    def _split_heads(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (b, t, 3, self.n_head, self.head_dim))  # [B, T, 3, H, D]
        q, k, v = ops.unstack(ops.transpose(x, (2, 0, 3, 1, 4)), 3)  # each [B, H, T, D]
        return q, k, v

    def _attend(self, q, k, v, mask, training):
        if training:
            # Keras's Dropout draws its seed the same way, so the mask is the one it would use.
            seed = None
            if self.dropout_rate > 0:
                seed = self.attn_dropout.seed_generator.next()
                seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
            out = recomputed_attention(q, k, v, mask, self.dropout_rate, seed)
        else:
            out = softmax_attention(q, k, v, mask)
        b, t = ops.shape(out)[0], ops.shape(out)[2]
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, t, self.n_embd))

    def call(self, x, mask, training=None):
        q, k, v = self._split_heads(self.c_attn(x))
        return self.c_proj(self._attend(q, k, v, mask, training))

    def call_with_cache(self, x, mask, cache, slots, batch, steps, kernels):
        """x [B * t, E] (2-D: each projection is one MatMul, not a tensordot's dozen ops);
        cache (keys, values), each [B, H, S, D]; `slots` [B * H * t] the rows written, with the
        cache seen as [B * H * S, D]; `kernels` the (c_attn, c_proj) kernels transposed (see
        `project`).

        The write is `InplaceUpdate`, which writes into the cache's own buffer. A
        `tensor_scatter_nd_update` copied the whole layer cache at every step inside the
        decoding `while_loop` (TensorFlow does not forward a loop variable's buffer): 14% of a
        batch-8 step's op time. The old contents are never read again, and the next write to a
        layer waits on this step's attention through the sampled token."""
        qkv_t = project_t(x, kernels[0], self.c_attn.bias)  # [3E, B * t]
        qkv_t = tf.reshape(qkv_t, (3, self.n_head, self.head_dim, batch, steps))
        q, k, v = tf.unstack(tf.transpose(qkv_t, (0, 3, 1, 4, 2)), 3)  # each [B, H, t, D]
        k_all, v_all = (_write_rows(c, slots, new) for c, new in zip(cache, (k, v)))
        out = self._attend(q, k_all, v_all, mask, training=False)  # [B, t, E]
        out = project(tf.reshape(out, (-1, self.n_embd)), kernels[1], self.c_proj.bias)
        return out, (k_all, v_all)

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "dropout": self.dropout_rate,
            "proj_std": self.proj_std,
        }


@keras.saving.register_keras_serializable(package="gpt2_tf")
class MLP(keras.layers.Layer):
    """c_fc -> GELU (tanh approximation, OpenAI's `gelu`) -> c_proj."""

    def __init__(self, n_embd: int, inner_dim: int, proj_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.n_embd, self.inner_dim, self.proj_std = n_embd, inner_dim, proj_std
        self.c_fc = _dense(inner_dim, "c_fc", 0.02, self.dtype_policy)
        self.c_proj = _dense(n_embd, "c_proj", proj_std, self.dtype_policy)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build((*input_shape[:-1], self.inner_dim))

    def call(self, x, training=None):
        return self.c_proj((training_gelu if training else gelu)(self.c_fc(x)))

    def call_with_kernels(self, x, kernels):
        """`call` for a decoding step: x [N, E], kernels the (c_fc, c_proj) kernels transposed."""
        h_t = gelu(project_t(x, kernels[0], self.c_fc.bias))  # [inner, N]
        return _add_bias(rows(tf.matmul(kernels[1], h_t)), self.c_proj.bias)

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "inner_dim": self.inner_dim,
            "proj_std": self.proj_std,
        }


@keras.saving.register_keras_serializable(package="gpt2_tf")
class Block(keras.layers.Layer):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(
        self, n_embd, n_head, inner_dim, dropout=0.0, epsilon=1e-5, proj_std=0.02, **kwargs
    ):
        super().__init__(**kwargs)
        self.n_embd, self.n_head, self.inner_dim = n_embd, n_head, inner_dim
        self.dropout_rate, self.epsilon, self.proj_std = dropout, epsilon, proj_std
        policy = self.dtype_policy
        self.ln_1 = keras.layers.LayerNormalization(epsilon=epsilon, name="ln_1", dtype=policy)
        self.attn = CausalSelfAttention(
            n_embd, n_head, dropout, proj_std, name="attn", dtype=policy
        )
        self.ln_2 = keras.layers.LayerNormalization(epsilon=epsilon, name="ln_2", dtype=policy)
        self.mlp = MLP(n_embd, inner_dim, proj_std, name="mlp", dtype=policy)
        self.resid_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, mask, training=None):
        x = x + self.resid_dropout(
            self.attn(self.ln_1(x), mask, training=training), training=training
        )
        return x + self.resid_dropout(self.mlp(self.ln_2(x)), training=training)

    def decoding_kernels(self):
        """This block's four kernels, transposed, for `call_with_cache`."""
        layers = (self.attn.c_attn, self.attn.c_proj, self.mlp.c_fc, self.mlp.c_proj)
        return tuple(transposed_kernel(dense) for dense in layers)

    def call_with_cache(self, x, mask, cache, slots, batch, steps, kernels):
        a, cache = self.attn.call_with_cache(
            self.ln_1(x), mask, cache, slots, batch, steps, kernels[:2]
        )
        x = x + a
        return x + self.mlp.call_with_kernels(self.ln_2(x), kernels[2:]), cache

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "inner_dim": self.inner_dim,
            "dropout": self.dropout_rate,
            "epsilon": self.epsilon,
            "proj_std": self.proj_std,
        }

"""The pieces of a GPT-2 block: causal self-attention, the tanh-GELU MLP, the pre-LN block.

Layer and weight names follow OpenAI's (`c_attn`, `c_proj`, `c_fc`, `ln_1`, `ln_2`) so the weight
map in `weights.py` reads one to one. Keras `Dense` kernels are `[in, out]`, the layout of OpenAI's
and Hugging Face's Conv1D, so no weight is transposed on import.

This is the plain model. Where `speed.enabled()`, training runs the same computations through
the custom-gradient kernels of `speed.gradients` (same values and gradients, less memory).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from gpt2_tf.model import speed
from gpt2_tf.model.speed import gradients

# A large finite negative, not -inf: a row with every key masked (a left-padding query) then
# gets a uniform softmax instead of NaN. Scores are float32 when it is applied.
MASK_VALUE = -1e9


def gelu(x):
    """OpenAI's tanh-approximate GELU."""
    return tf.nn.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class Dense(keras.layers.Dense):
    """Keras `Dense`. The speed path replaces its training product and its LoRA product
    (`speed.gradients.dense_call`); variables, names and `enable_lora` are Keras's."""

    def call(self, inputs, training=None):
        if speed.enabled() and gradients.dense_applies(self, training):
            return gradients.dense_call(self, inputs, training)
        return super().call(inputs, training=training)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class LayerNorm(keras.layers.LayerNormalization):
    """Keras `LayerNormalization`. The speed path replaces it in training
    (`speed.gradients.layer_norm`); variables and names are Keras's."""

    def call(self, inputs, training=None):
        if speed.enabled() and gradients.layer_norm_applies(self, training):
            return gradients.layer_norm(self, inputs)
        return super().call(inputs)


def _dense(units: int, name: str, std: float, policy) -> Dense:
    init = keras.initializers.RandomNormal(stddev=std)
    return Dense(units, kernel_initializer=init, name=name, dtype=policy)


def attention_mask(padding_mask, query_len: int, key_len: int, query_offset=0, segment_ids=None):
    """Boolean [B, 1, Tq, Tk]: key k visible to query q when k <= q + offset and k is real.

    `segment_ids` [B, T] (packed rows: 0 for padding, 1..k for the row's k examples; then
    Tq = Tk = T and no offset): key k is visible to query q only within q's own example, so
    attention is block-diagonal causal and no example sees another."""
    q = ops.arange(query_len)[:, None] + query_offset  # [Tq, 1]
    k = ops.arange(key_len)[None, :]  # [1, Tk]
    causal = ops.expand_dims(k <= q, 0)  # [1, Tq, Tk]
    real = ops.cast(padding_mask, "bool")[:, None, :]  # [B, 1, Tk]
    visible = ops.logical_and(causal, real)
    if segment_ids is not None:
        visible = ops.logical_and(visible, same_segment(segment_ids))
    return ops.expand_dims(visible, 1)  # [B, 1, Tq, Tk]


def same_segment(segment_ids):
    """Boolean [B, T, T]: tokens q and k belong to the same example of a packed row."""
    seg = ops.convert_to_tensor(segment_ids)
    return ops.equal(seg[:, :, None], seg[:, None, :])


def softmax_attention(q, k, v, mask, rate=0.0, seed=None):
    """softmax(q·kᵀ/√D, masked) · v for q, k, v [B, H, T, D] in the compute dtype, mask
    [B, 1, Tq, Tk] boolean; the scores and their softmax are float32. `seed` is a stateless seed
    for dropout on the probabilities (`rate` > 0)."""
    q = q * tf.cast(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)  # [B, H, Tq, Tk]
    probs = tf.cast(tf.nn.softmax(tf.where(mask, scores, MASK_VALUE)), q.dtype)
    if rate > 0:
        probs = tf.nn.experimental.stateless_dropout(probs, rate=rate, seed=seed)
    return tf.matmul(probs, v)


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

    def attend(self, q, k, v, mask, training=None):
        """Attention of q [B, H, Tq, D] over k, v [B, H, Tk, D] -> [B, Tq, E], heads merged."""
        if not training:
            out = softmax_attention(q, k, v, mask)
        else:
            # Keras's Dropout draws its seed the same way, so the mask is the one it would use.
            seed = None
            if self.dropout_rate > 0:
                seed = self.attn_dropout.seed_generator.next()
                seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
            if speed.enabled():
                keep = gradients.keeps_attention_probabilities(
                    self.n_head, q.shape[2], self.n_embd, q.dtype
                )
                args = (q, k, v, mask, MASK_VALUE, self.dropout_rate, seed, keep)
                out = gradients.training_attention(*args)
            else:
                out = softmax_attention(q, k, v, mask, self.dropout_rate, seed)
        b, t = ops.shape(out)[0], ops.shape(out)[2]
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, t, self.n_embd))

    def call(self, x, mask, training=None):
        q, k, v = self._split_heads(self.c_attn(x))
        return self.c_proj(self.attend(q, k, v, mask, training))

    def call_with_cache(self, x, mask, cache, index):
        """x [B, t, E] written at cache slots index..index+t-1 of cache (keys, values), each
        [B, H, S, D]; mask [B, 1, t, S] -> (out [B, t, E], the updated cache)."""
        q, k, v = self._split_heads(self.c_attn(x))  # each [B, H, t, D]
        k_all, v_all = (_write_slots(c, new, index) for c, new in zip(cache, (k, v)))
        return self.c_proj(self.attend(q, k_all, v_all, mask)), (k_all, v_all)

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "dropout": self.dropout_rate,
            "proj_std": self.proj_std,
        }


def _write_slots(cache, new, index):
    """cache [B, H, S, D] with new [B, H, t, D] written at slots index..index+t-1."""
    slots = (index + tf.range(tf.shape(new)[2]))[:, None]  # [t, 1]
    cache = tf.tensor_scatter_nd_update(
        tf.transpose(cache, (2, 0, 1, 3)), slots, tf.transpose(new, (2, 0, 1, 3))
    )
    return tf.transpose(cache, (1, 2, 0, 3))


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
        if speed.enabled():
            activation = gradients.training_gelu if training else gradients.gelu
        else:
            activation = gelu
        return self.c_proj(activation(self.c_fc(x)))

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
        self.ln_1 = LayerNorm(epsilon=epsilon, name="ln_1", dtype=policy)
        self.attn = CausalSelfAttention(
            n_embd, n_head, dropout, proj_std, name="attn", dtype=policy
        )
        self.ln_2 = LayerNorm(epsilon=epsilon, name="ln_2", dtype=policy)
        self.mlp = MLP(n_embd, inner_dim, proj_std, name="mlp", dtype=policy)
        self.resid_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, mask, training=None):
        x = x + self.resid_dropout(
            self.attn(self.ln_1(x, training=training), mask, training=training), training=training
        )
        return x + self.resid_dropout(self.mlp(self.ln_2(x, training=training)), training=training)

    def call_with_cache(self, x, mask, cache, index):
        """`call` for decoding: x [B, t, E] at cache slots index..index+t-1 -> (x, cache)."""
        a, cache = self.attn.call_with_cache(self.ln_1(x), mask, cache, index)
        x = x + a
        return x + self.mlp(self.ln_2(x)), cache

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

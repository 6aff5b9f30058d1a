"""GPT-2 in Keras 3: the backbone, the language model with its tied head, and the classifier.

Inputs everywhere are `{"token_ids": int [B, T], "padding_mask": [B, T]}`; padding is known from
the mask, never from token values. Positions are counted over real tokens (`cumsum(mask) - 1`), so
right padding gives `0..n-1` and left padding gives what Hugging Face's `generate` gives.

Packed rows (`gpt2_tf.data.packing`) add `"segment_ids"` int [B, T]: 0 for padding, 1..k for the
row's k examples. Each example then attends only to itself (causally) and its positions restart at
0, so it gets exactly the hidden states it would get alone in a padded row.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from gpt2_tf.model import speed
from gpt2_tf.model.config import GPT2Config
from gpt2_tf.model.layers import Block, LayerNorm, attention_mask, same_segment
from gpt2_tf.model.speed import decoding


def as_config(config) -> GPT2Config:
    if isinstance(config, GPT2Config):
        return config
    if isinstance(config, str):
        return GPT2Config.from_preset(config)
    return GPT2Config(**config)


def positions_from_mask(padding_mask):
    """[B, T] int32 position of each token among the real ones (0 for leading padding)."""
    counts = ops.cumsum(ops.cast(padding_mask, "int32"), axis=1)
    return ops.maximum(counts - 1, 0)


def positions_from_segments(segment_ids):
    """[B, T] int32 position of each token within its example of a packed row (0 on padding):
    the number of earlier tokens of the same segment."""
    seg = ops.convert_to_tensor(segment_ids)
    t = ops.shape(seg)[1]
    earlier = ops.arange(t)[None, :] < ops.arange(t)[:, None]  # [Tq, Tk]: k < q
    same = ops.logical_and(same_segment(seg), earlier[None])  # [B, T, T]
    counts = ops.sum(ops.cast(same, "int32"), axis=-1)
    return ops.where(seg > 0, counts, 0)


def input_positions_and_mask(inputs):
    """(positions [B, T], attention mask [B, 1, T, T]) of a batch of model inputs: from the
    padding mask, or from `segment_ids` for packed rows. The plain and the speed paths both
    take these."""
    padding_mask = inputs["padding_mask"]
    t = ops.shape(padding_mask)[1]
    segment_ids = inputs.get("segment_ids") if hasattr(inputs, "get") else None
    if segment_ids is None:
        return positions_from_mask(padding_mask), attention_mask(padding_mask, t, t)
    positions = positions_from_segments(segment_ids)
    return positions, attention_mask(padding_mask, t, t, segment_ids=segment_ids)


def _dummy_inputs():
    # Two positions: a length-1 softmax makes Keras warn.
    return {"token_ids": ops.zeros((1, 2), "int32"), "padding_mask": ops.ones((1, 2), "int32")}


class _Pretrained(keras.Model):
    """What every gpt2_tf model shares: its config in Keras's get_config, and pretrained
    weights in and out (`gpt2_tf.model.weights`)."""

    def _base_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_pretrained(cls, path: str, **kwargs):
        """Weights from a Hugging Face, OpenAI, keras-hub or gpt2_tf folder, or a hub id."""
        from gpt2_tf.model.weights import load_pretrained

        return load_pretrained(cls, path, **kwargs)

    def save_pretrained(self, folder: str) -> None:
        from gpt2_tf.model.weights import save_pretrained

        save_pretrained(self, folder)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2Backbone(_Pretrained):
    """Token and position embeddings, `n_layer` pre-LN blocks, final LayerNorm -> [B, T, n_embd]."""

    def __init__(self, config: GPT2Config | dict | str = "124M", **kwargs):
        kwargs.setdefault("name", "gpt2_backbone")
        super().__init__(**kwargs)
        self.config = c = as_config(config)
        policy = self.dtype_policy
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.wte = keras.layers.Embedding(
            c.vocab_size, c.n_embd, embeddings_initializer=init, name="wte", dtype=policy
        )
        self.wpe = keras.layers.Embedding(
            c.n_positions, c.n_embd, embeddings_initializer=init, name="wpe", dtype=policy
        )
        self.embd_dropout = keras.layers.Dropout(c.dropout, dtype=policy)
        # GPT-2 scales the residual projections' init by 1/sqrt(2 * n_layer).
        proj_std = 0.02 / math.sqrt(2 * c.n_layer)
        self.blocks = [
            Block(
                c.n_embd,
                c.n_head,
                c.inner_dim,
                c.dropout,
                c.layer_norm_epsilon,
                proj_std=proj_std,
                name=f"h{i}",
                dtype=policy,
            )
            for i in range(c.n_layer)
        ]
        self.ln_f = LayerNorm(epsilon=c.layer_norm_epsilon, name="ln_f", dtype=policy)
        self(_dummy_inputs())  # build every weight now, so loaders and LoRA find them

    def embed(self, token_ids, positions, training=None, token_embeddings=None):
        if token_embeddings is None:
            token_embeddings = self.wte(token_ids)
        x = token_embeddings + self.wpe(positions)  # [B, T, E]
        return self.embd_dropout(x, training=training)

    def call(self, inputs, training=None, token_embeddings=None):
        """`token_embeddings`: `wte`'s lookup of the token ids, made by the caller (the speed
        path's `fused_head.tied_lookup`)."""
        positions, mask = input_positions_and_mask(inputs)
        x = self.embed(inputs["token_ids"], positions, training, token_embeddings)
        for block in self.blocks:
            x = block(x, mask, training=training)
        return self.ln_f(x, training=training)

    # ---- incremental decoding -----------------------------------------------------------------
    # The speed path (`speed.decoding`) has the same methods' results through its own kernels.
    def init_cache(self, batch_size: int, max_length: int):
        """Per layer a (keys, values) pair of [B, H, S, D] buffers, zeroed."""
        if decoding.applies():
            return decoding.init_cache(self, batch_size, max_length)
        c = self.config
        shape = tf.stack([batch_size, c.n_head, max_length, c.head_dim])
        return tuple(
            tuple(tf.zeros(shape, self.compute_dtype) for _ in "kv") for _ in range(c.n_layer)
        )

    def decoding_kernels(self, xla: bool = False):
        """What `call_with_cache` needs made once per decoding call, outside the loop: the speed
        path's transposed kernels (`decoding.Kernels`; `xla`: each block's work as small XLA
        programs), nothing for the plain one."""
        return decoding.kernels(self, xla) if decoding.applies() else None

    def call_with_cache(self, token_ids, padding_mask, cache, index, kernels=None):
        """Runs `token_ids` [B, t] as cache slots index..index+t-1 -> (hidden [B, t, E], cache).

        `padding_mask` [B, S] covers every slot of the cache: 1 for a real token already written
        or being written now (prompt or generated), 0 for padding. `kernels` is
        `decoding_kernels()`, made here when not given.
        """
        b, t, s = ops.shape(token_ids)[0], ops.shape(token_ids)[1], ops.shape(padding_mask)[1]
        positions = ops.slice(positions_from_mask(padding_mask), (0, index), (b, t))
        x = self.embed(token_ids, positions)  # [B, t, E]
        mask = attention_mask(padding_mask, t, s, query_offset=index)
        if decoding.applies():
            return decoding.call_with_cache(self, x, mask, cache, index, kernels)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block.call_with_cache(x, mask, layer_cache, index)
            new_cache.append(layer_cache)
        return self.ln_f(x), tuple(new_cache)

    def get_config(self):
        return self._base_config()


class _WithBackbone(_Pretrained):
    """Shared by the heads: owns a backbone built from the config, saves and loads like it."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = as_config(config)
        self.backbone = GPT2Backbone(self.config, name="transformer", dtype=self.dtype_policy)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2LanguageModel(_WithBackbone):
    """Backbone + LM head tied to the token embedding -> float32 logits [B, T, vocab_size]."""

    def __init__(self, config: GPT2Config | dict | str = "124M", **kwargs):
        kwargs.setdefault("name", "gpt2_lm")
        super().__init__(config, **kwargs)
        self(_dummy_inputs())

    def logits(self, hidden):
        """hidden [..., E] -> float32 logits [..., V] through the tied embedding [V, E]."""
        w = ops.cast(self.backbone.wte.embeddings, hidden.dtype)  # [V, E]
        # A plain 2-D MatMul with transpose_b: ops.transpose(w) copies the 50257 x E table at
        # every call (every generated token), and a batched matmul broadcasts a copy per row.
        flat = tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])  # [N, E]
        out = tf.matmul(flat, w, transpose_b=True)  # [N, V]
        out = tf.reshape(out, tf.concat([tf.shape(hidden)[:-1], tf.shape(w)[:1]], 0))
        out.set_shape(hidden.shape[:-1].concatenate(w.shape[:1]))  # keep static shapes
        return ops.cast(out, "float32")  # [..., V]

    def step_logits(self, hidden, kernels=None):
        """[B, E] -> float32 [B, V] for a decoding step's few rows; `kernels` is the decoding
        call's `backbone.decoding_kernels()` (its `xla` choice is the head's too)."""
        if speed.enabled():
            table, xla = self.backbone.wte.embeddings, bool(kernels and kernels.xla)
            return ops.cast(decoding.step_logits(hidden, table, xla), "float32")
        return self.logits(hidden)

    def call(self, inputs, training=None):
        return self.logits(self.backbone(inputs, training=training))

    def get_config(self):
        return self._base_config()

    def generate(self, prompts, max_new_tokens: int = 64, **kwargs):
        """KV-cached generation; see `gpt2_tf.model.generation.generate` for the options."""
        from gpt2_tf.model.generation import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    def export_hf(self, folder: str, tokenizer=None) -> None:
        """Writes a folder that `transformers.GPT2LMHeadModel.from_pretrained` loads."""
        from gpt2_tf.model.weights import export_hf

        export_hf(self, folder, tokenizer)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2Classifier(_WithBackbone):
    """Backbone, pooling over real tokens, and a linear `score` head -> float32 logits [B, C].

    `pooling="last"` takes each row's last real token (found from the padding mask, so a pad id
    equal to `<|endoftext|>`, or an `<|endoftext|>` inside the text, changes nothing); `"mean"`
    averages the real tokens. The head has no bias, as Hugging Face's GPT2ForSequenceClassification.
    """

    def __init__(
        self,
        config: GPT2Config | dict | str = "124M",
        num_classes: int = 2,
        pooling: str = "last",
        **kwargs,
    ):
        kwargs.setdefault("name", "gpt2_classifier")
        super().__init__(config, **kwargs)
        if pooling not in ("last", "mean"):
            raise ValueError(f"GPT2Classifier: pooling must be 'last' or 'mean', got {pooling!r}")
        if num_classes < 1:
            raise ValueError(f"GPT2Classifier: num_classes must be positive, got {num_classes}")
        self.num_classes, self.pooling = num_classes, pooling
        self.head_dropout = keras.layers.Dropout(self.config.dropout, dtype=self.dtype_policy)
        self.score = keras.layers.Dense(
            num_classes,
            use_bias=False,
            name="score",
            dtype=self.dtype_policy,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        self(_dummy_inputs())

    def pool(self, hidden, padding_mask):
        mask = ops.cast(padding_mask, hidden.dtype)  # [B, T]
        if self.pooling == "mean":
            total = ops.sum(hidden * mask[:, :, None], axis=1)
            return total / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1)
        t = ops.shape(hidden)[1]
        last = ops.max(ops.where(mask > 0, ops.arange(t)[None, :], -1), axis=1)  # [B]
        return ops.take_along_axis(hidden, ops.maximum(last, 0)[:, None, None], axis=1)[:, 0]

    def call(self, inputs, training=None):
        hidden = self.backbone(inputs, training=training)
        pooled = self.head_dropout(self.pool(hidden, inputs["padding_mask"]), training=training)
        return ops.cast(self.score(pooled), "float32")

    def get_config(self):
        return {**self._base_config(), "num_classes": self.num_classes, "pooling": self.pooling}

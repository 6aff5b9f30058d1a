"""Losses and metrics, as sums: a batch gives (loss sum, weight sum, correct), so every mean is
taken over the target tokens (or examples) of the whole global batch, whatever the number of
replicas or accumulation steps.
"""

from __future__ import annotations

import tensorflow as tf

from gpt2_tf.model import speed
from gpt2_tf.model.speed import fused_head


def batch_sums(y, logits, sample_weight):
    """(NLL sum, weight sum, correct sum) in float32; LM: y [B, T], classifier: y [B].

    A prediction is correct when the label's logit is the largest (a tie for the top counts),
    the rule `speed.fused_head` uses too."""
    logits = tf.cast(logits, tf.float32)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)  # [B, T] or [B]
    w = tf.cast(sample_weight, tf.float32) * tf.ones_like(nll)
    picked = tf.gather(logits, y, batch_dims=len(y.shape))
    correct = tf.cast(picked >= tf.reduce_max(logits, -1), tf.float32)
    return tf.reduce_sum(nll * w), tf.reduce_sum(w), tf.reduce_sum(correct * w)


def lm_target_sums(model, x, y, w, training=False):
    """`batch_sums` of a GPT-2 language model over its target positions (weight > 0): the
    [*, vocab] head runs only there. `training` is dropout and gradients both; a frozen
    embedding (LoRA) gets no table gradient. The speed path (`speed.fused_head`) gives the same
    sums and gradients without the whole [N, vocab] logits."""
    keep = w > 0
    if not speed.enabled():
        hidden = tf.boolean_mask(model.backbone(x, training=training), keep)  # [N, E]
        return batch_sums(y[keep], model.logits(hidden), w[keep])
    backbone, table = model.backbone, model.backbone.wte.embeddings
    tokens = None  # the backbone looks its token embeddings up itself
    if training and table.trainable:  # one gradient buffer for the table's two uses
        tokens, table = fused_head.tied_lookup(table, x["token_ids"], backbone.compute_dtype)
    hidden = tf.boolean_mask(backbone(x, training=training, token_embeddings=tokens), keep)
    return fused_head.tied_head_sums(
        hidden, table, y[keep], w[keep], training=training, table_grad=tokens is not None
    )


def lm_position_sums(model, x, y, w, training=False):
    """`lm_target_sums` with static shapes, as XLA compiles them: the head at every position,
    those without loss weighted 0. The same sums, with the head's compute on every position."""
    hidden = model.backbone(x, training=training)  # [B, T, E]
    flat = tf.reshape(hidden, [-1, hidden.shape[-1]])  # [B*T, E]
    return batch_sums(tf.reshape(y, [-1]), model.logits(flat), tf.reshape(w, [-1]))

"""The training step: forward and backward over the micro-batches, the cross-replica sum, clipping
and the AdamW update, under any `tf.distribute` strategy.

The same arithmetic runs one of two ways, chosen once per run (`hardware.resolve_jit_compile`,
the `--jit_compile` flag) and checked to agree by `tests/test_train_step.py`:

- **graph** (`jit_compile=False`): a `tf.function`. TensorFlow runs each op with its own kernel:
  on a CPU with oneDNN, oneDNN's matrix products (AMX in bfloat16), and the model's speed paths
  (`model/speed`: custom gradients, the chunked tied head over target positions only).
- **XLA** (`jit_compile=True`): the whole replica step is one XLA program. XLA fuses the
  element-wise work (LayerNorm, GELU, softmax, AdamW) into a few loops, and on a CPU without
  oneDNN its matrix products (XNNPACK) run faster than TensorFlow's own; GPUs and TPUs want it.
  XLA needs static shapes, so the LM head runs over every position (weights zero where no loss
  is taken) instead of gathering the target positions first. Each replica updates its own copy
  of the variables (`PreReducedAdamW.apply_local`): they stay equal, since every replica applies
  the same summed gradients, and no cross-replica merge (which XLA cannot compile) is needed.
  With one replica the whole step is one program; with several, the gradients' all-reduce runs
  between two programs (the micro-batches, then clipping and the update).

Why a custom step rather than `fit`: see `train/trainer.py`.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from gpt2_tf.core.compat import loss_scale
from gpt2_tf.model import losses


class TrainStep:
    """`step(iterator)` takes `grad_accum_steps` micro-batches from a distributed iterator, applies
    one update and returns the step's values (loss, grad_norm, accuracy, tokens, positions,
    learning_rate, skipped), each reduced over the replicas."""

    def __init__(
        self,
        model,
        optimizer,
        strategy,
        *,
        is_lm: bool,
        grad_accum_steps: int = 1,
        clipnorm: float = 1.0,
        jit_compile: bool = False,
    ):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.is_lm, self.accum, self.clipnorm = is_lm, grad_accum_steps, clipnorm
        self.jit_compile = jit_compile
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if jit_compile and self.loss_scaled:
            raise ValueError("jit_compile: mixed_float16's loss scaling needs the graph step")
        self.replicas = strategy.num_replicas_in_sync
        # autograph off, as Keras's own train step (`do_not_convert`): the step's control flow
        # is Python's, so converting its call tree (model, layers, optimizer) only costs time.
        compiled = functools.partial(tf.function, autograph=False)
        self._fn = compiled(self._xla_step if jit_compile else self._graph_step)
        # XLA programs, compiled once per input shape (padded and packed rows: one shape).
        self._whole = compiled(self._whole_local, jit_compile=True)
        self._gradients = compiled(self._gradients_local, jit_compile=True)
        self._update = compiled(self._update_local, jit_compile=True)

    def __call__(self, iterator) -> dict:
        return self._fn(iterator)

    def experimental_get_tracing_count(self) -> int:
        return self._fn.experimental_get_tracing_count()

    # ---- one replica's arithmetic ---------------------------------------------------------------
    def forward_sums(self, x, y, w, training):
        """(NLL sum, weight sum, correct sum). LM tasks in graph run the [*, vocab] head only where
        the loss is taken (`losses.lm_target_sums`); under XLA at every position."""
        if not self.is_lm:
            return losses.batch_sums(y, self.model(x, training=training), w)
        if self.jit_compile:
            return losses.lm_position_sums(self.model, x, y, w, training=training)
        return losses.lm_target_sums(self.model, x, y, w, training=training)

    def micro(self, batch, acc=None):
        """Gradient sums and value sums of one micro-batch, added to `acc` (those so far)."""
        x, y, w = batch
        with tf.GradientTape() as tape:
            nll, count, correct = self.forward_sums(x, y, w, training=True)
            loss, per_micro = nll, None
            if self.loss_scaled:
                # float16: the dynamic scale multiplies the *mean* loss, as Keras and PyTorch size
                # it. On the summed loss the effective scale was tokens x 2^15, and most early
                # steps overflowed and were skipped. Gradients go back to sums below.
                per_micro = tf.stop_gradient(tf.maximum(count, 1.0))
                loss = self.optimizer.scale_loss(nll / per_micro)
        grads = tape.gradient(loss, self.model.trainable_variables)
        # Embedding lookups give IndexedSlices; the tied wte gets a dense head gradient anyway.
        grads = [tf.convert_to_tensor(g) for g in grads]
        if per_micro is not None:
            grads = [g * per_micro for g in grads]
        mask = tf.cast(x["padding_mask"], tf.float32)  # real tokens, of the positions computed
        sums = [nll, count, correct, tf.reduce_sum(mask), tf.cast(tf.size(mask), tf.float32)]
        if acc is None:
            return grads, sums
        return [a + g for a, g in zip(acc[0], grads)], [a + s for a, s in zip(acc[1], sums)]

    def _all_reduce(self, grads, sums):
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return grads, ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)

    def apply(self, grads, sums, local: bool = False):
        """The update from the global batch's gradient sums: the mean over its target tokens
        (examples), then clipping, as one factor applied inside each variable's update.
        `local`: each replica updates its own copies (the XLA step)."""
        nll, count, correct, tokens, positions = sums
        scale = tf.cast(loss_scale(self.optimizer), tf.float32)
        per_token = 1.0 / tf.maximum(count, 1.0)
        norm = tf.linalg.global_norm(grads) * per_token / scale
        factor = per_token
        if self.clipnorm > 0:
            factor *= tf.minimum(1.0, self.clipnorm / tf.maximum(norm, 1e-30))
        # Read before the update, which advances the schedule: the rate this update uses.
        learning_rate = tf.identity(self.optimizer.learning_rate)
        variables = self.model.trainable_variables
        if local:
            self.optimizer.apply_local(grads, variables, factor)
        elif hasattr(self.optimizer, "apply_scaled"):
            self.optimizer.apply_scaled(grads, variables, factor)
        else:  # the loss-scale wrapper (float16) unscales and checks the gradients itself
            self.optimizer.apply([g * factor for g in grads], variables)
        # The wrapper halves its scale exactly when it skips an update (non-finite gradients).
        skipped = tf.zeros([])
        if self.loss_scaled:
            skipped = tf.cast(loss_scale(self.optimizer) < scale, tf.float32)
        return {
            "loss": nll / tf.maximum(count, 1.0),
            "grad_norm": norm,
            "accuracy": correct / tf.maximum(count, 1.0),
            "tokens": tokens,
            "positions": positions,
            "learning_rate": learning_rate,
            "skipped": skipped,
        }

    def _accumulate(self, batches):
        acc = None
        for batch in batches:
            acc = self.micro(batch, acc)
        return acc

    # ---- XLA programs (one replica each) --------------------------------------------------------
    def _whole_local(self, batches):
        return self.apply(*self._accumulate(batches), local=True)

    def _gradients_local(self, batches):
        return self._accumulate(batches)

    def _update_local(self, grads, sums):
        return self.apply(grads, sums, local=True)

    # ---- the step over the replicas -------------------------------------------------------------
    def _graph_step(self, iterator):
        def replica(*batches):
            return self.apply(*self._all_reduce(*self._accumulate(batches)))

        batches = [next(iterator) for _ in range(self.accum)]
        return self._reduce(self.strategy.run(replica, args=tuple(batches)))

    def _xla_step(self, iterator):
        batches = tuple(next(iterator) for _ in range(self.accum))
        run = self.strategy.run
        if self.replicas == 1:  # the whole step in one program: no cross-replica sum
            return self._reduce(run(lambda *b: self._whole(b), args=batches))
        grads, sums = run(lambda *b: self._gradients(b), args=batches)
        grads, sums = run(self._all_reduce, args=(grads, sums))
        return self._reduce(run(self._update, args=(grads, sums)))

    def _reduce(self, out):
        return {k: self.strategy.reduce("mean", v, axis=None) for k, v in out.items()}

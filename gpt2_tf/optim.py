"""AdamW with warm-up and decay, weight decay off biases, LayerNorm and embeddings.

The trainer all-reduces and clips the *global* gradient itself (as PyTorch DDP and HF do), so
the optimizer here skips Keras's own per-replica gradient sum, which would add them twice.
"""

from __future__ import annotations

import math

import keras

SCHEDULES = ("constant", "linear", "cosine")
NO_DECAY = ["bias", "gamma", "beta", "embeddings"]  # substrings of Keras variable names


@keras.saving.register_keras_serializable(package="gpt2_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then constant, linear or cosine to zero."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str = "linear"):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        self.peak, self.warmup_steps, self.total_steps, self.kind = (
            peak,
            warmup_steps,
            total_steps,
            kind,
        )

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = keras.ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.kind == "constant":
            decay = 1.0
        elif self.kind == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        factor = keras.ops.where(step < self.warmup_steps, warm, decay)
        return self.peak * factor

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "kind": self.kind,
        }


class PreReducedAdamW(keras.optimizers.AdamW):
    """AdamW whose gradients arrive already summed across replicas (see module docstring)."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def make_optimizer(
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str,
    weight_decay: float,
    precision: str,
):
    lr = WarmupSchedule(learning_rate, warmup_steps, total_steps, schedule)
    opt = PreReducedAdamW(learning_rate=lr, weight_decay=weight_decay, epsilon=1e-8)
    opt.exclude_from_weight_decay(var_names=NO_DECAY)
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(opt)
    return opt

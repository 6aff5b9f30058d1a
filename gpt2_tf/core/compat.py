"""Every private Keras, keras-hub and TensorFlow internal gpt2_tf reaches, in one place.

Each accessor names the private thing it touches and why. `tests/test_compat.py` checks them all
on the installed Keras, and setup.cfg pins Keras to the minor version they were written against:
a new Keras that moves one of these fails there, not deep inside a training step.

Two more private hooks are method overrides, not reads, in `train/optim.py`'s PreReducedAdamW:
`Optimizer._all_reduce_sum_gradients` and `_apply_weight_decay` (the test checks they still exist).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np


def in_xla_context() -> bool:
    """Whether the op being built goes into an XLA program (a `tf.function(jit_compile=True)`,
    its loops included). TensorFlow's private `control_flow_util.GraphOrParentsInXlaContext`:
    the decoding speed kernels use TensorFlow ops that XLA cannot compile, and XLA does their
    work (in-place cache writes) itself."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def kernel_variable(dense):
    """`Dense._kernel`: the stored kernel variable; with LoRA on, `Dense.kernel` is the merged
    W + A·B view, and merging, saving and the speed path need the variable itself."""
    return dense._kernel


def no_autocast():
    """`keras.src.backend.AutocastScope(None)`: a scope where a float32 variable's `.value` is
    not cast to the compute dtype (the speed path casts it itself; see `kernel_matmul`)."""
    import keras

    return keras.src.backend.AutocastScope(None)


def adam_slots(optimizer, variable):
    """(`_momentums[i]`, `_velocities[i]`) of a Keras Adam/AdamW for `variable`, found by
    `_get_variable_index`: the fused XLA update writes these slots directly."""
    i = optimizer._get_variable_index(variable)
    return optimizer._momentums[i], optimizer._velocities[i]


def uses_weight_decay(optimizer, variable) -> bool:
    """`Optimizer._use_weight_decay(variable)`: whether `exclude_from_weight_decay` spares it,
    asked by the fused update that applies the decay itself."""
    return bool(optimizer._use_weight_decay(variable))


def loss_scale(optimizer, default=1.0):
    """`LossScaleOptimizer.dynamic_scale` (an undocumented attribute), or `default` for any other
    optimizer: a float16 step reads it to tell whether the step was skipped."""
    return getattr(optimizer, "dynamic_scale", default)


def hub_decoder_parts(layer) -> dict:
    """A keras-hub `TransformerDecoder`'s private sublayers (`_self_attention_layer`, its two
    LayerNorms and two feed-forward Denses), to read a keras-hub GPT-2 preset's weights."""
    return {
        "attn": layer._self_attention_layer,
        "ln_1": layer._self_attention_layer_norm,
        "ln_2": layer._feedforward_layer_norm,
        "c_fc": layer._feedforward_intermediate_dense,
        "c_proj": layer._feedforward_output_dense,
    }


# ---- process-wide random state -------------------------------------------------------------
# `keras.utils.set_random_seed` seeds Python's `random`, NumPy, TensorFlow's global seed and
# Keras's own (its global seed and SeedGenerator). `seeded` seeds them all for a block and puts
# every one back as it was afterwards, so that a seeded model build leaves nothing behind.


def global_random_state() -> dict:
    """What `keras.utils.set_random_seed` changes, as it is now (see `set_global_random_state`)."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils
    from tensorflow.python.eager import context

    ctx = context.context()
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "keras_seed": global_state.get_global_attribute(rng_utils.GLOBAL_RANDOM_SEED),
        "keras_generator": global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR),
        "tf_seed": ctx._seed,  # TensorFlow's global seed (eager), and the op seeds drawn from it
        "tf_op_seeds": rng.getstate() if (rng := getattr(ctx, "_rng", None)) else None,
    }


def set_global_random_state(state: dict) -> None:
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils
    from tensorflow.python.eager import context

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, state["keras_seed"])
    global_state.set_global_attribute(
        seed_generator.GLOBAL_SEED_GENERATOR, state["keras_generator"]
    )
    ctx = context.context()
    ctx._set_global_seed(state["tf_seed"])  # also clears the kernels' cached seeds
    if state["tf_op_seeds"] is not None:
        ctx._rng.setstate(state["tf_op_seeds"])


@contextlib.contextmanager
def seeded(seed: int):
    """`keras.utils.set_random_seed(seed)` for the block alone: what it builds or draws is fixed
    by `seed`, and the process's random state afterwards is what it was before."""
    import keras

    saved = global_random_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        set_global_random_state(saved)

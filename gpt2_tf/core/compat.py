"""The one door to private Keras and TensorFlow internals: every use of one is a function here, so
a Keras or TensorFlow upgrade that moves them is fixed in this file."""

from __future__ import annotations

# ---- process-wide random state (issue 18, point 9) -----------------------------------------------
# `keras.utils.set_random_seed` seeds Python's `random`, NumPy, TensorFlow's global seed and
# Keras's own (its global seed and SeedGenerator). `seeded` seeds them all for a block and puts
# every one back as it was afterwards, so that a seeded model build leaves nothing behind.
import contextlib
import random

import numpy as np


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


# ---- end of the random-state block ---------------------------------------------------------------

"""Traced functions of a model that follow the model's later changes.

A `tf.function` captures the model's variables when it traces, and the Python branches taken then
stay fixed in the graph (a `Dense` with LoRA or without, the compute dtype). Values assigned later
are seen; variables added or removed later (`enable_lora`, `load_lora`, `merge_lora`, a
quantization) and a new dtype policy are not. `ModelFunction` keeps one `tf.function` per model
structure and traces afresh when the structure changes, so a generator or an evaluation step
kept on a model always computes what a plain forward pass of the model computes now.

`for_model` keeps such helpers per model (a generator, an evaluation step) for as long as the
model lives, in a table here rather than as attributes set on the model from outside.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import tensorflow as tf


def structure(model) -> tuple:
    """What a trace depends on besides variable values: the dtype policy and every variable's
    identity, dtype and shape (at 124M, ~150 variables: well under a millisecond). Any callable
    works: one with no Keras policy or variables has a fixed structure."""
    policy = getattr(model, "dtype_policy", None)
    return (
        getattr(policy, "name", None),
        tuple((id(v), str(v.dtype), tuple(v.shape)) for v in getattr(model, "variables", ())),
    )


class ModelFunction:
    """`tf.function(fn, **kwargs)` for functions of `model`, traced again when its structure
    changes. `traces` counts Python traces (tests use it to check that calls reuse one)."""

    def __init__(
        self, model, fn, also: tuple[Callable[[], object], ...] = (), **tf_function_kwargs
    ):
        """`also`: more things a trace depends on, read at each call (e.g. `speed.enabled`).
        The model is held weakly (see `for_model`); `fn` should hold it weakly too."""
        self._model, self.traces, self._also = weakref.ref(model), 0, also
        # No autograph (as Keras's own compiled functions): these functions' loops and branches
        # are tf.while_loop / tf.cond or Python's, and converting the model's call tree takes
        # longer than the trace itself.
        self._kwargs = {"autograph": False, **tf_function_kwargs}
        self._key, self._fn = None, None

        def counted(*args, **kwargs):  # a closure of its own: TensorFlow's retracing warning
            self.traces += 1  # counts traces per Python function, across every instance
            return fn(*args, **kwargs)

        self._counted = counted

    @property
    def model(self):
        return self._model()

    def __call__(self, *args, **kwargs):
        key = (structure(self.model), tuple(f() for f in self._also))
        if key != self._key:
            self._fn, self._key = tf.function(self._counted, **self._kwargs), key
        return self._fn(*args, **kwargs)


_HELPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def for_model(model, name: str, make: Callable[[], object]):
    """The helper `name` of `model`: made by `make()` on first use, then kept until the model is
    garbage-collected (one trace per model structure, not one per call). A helper must hold the
    model weakly: a strong reference from the table's value would keep its key alive forever."""
    helpers = _HELPERS.setdefault(model, {})
    if name not in helpers:
        helpers[name] = make()
    return helpers[name]

"""Each accessor of `gpt2_tf/core/compat.py` on the installed Keras, with real objects: a new
Keras that renames one of the private attributes fails here first."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.core import compat


def test_kernel_variable_is_the_stored_kernel_under_lora():
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    stored = compat.kernel_variable(dense)
    assert isinstance(stored, keras.Variable) and stored.shape == (4, 3)
    assert stored is dense.kernel  # no LoRA: the property is the variable
    dense.enable_lora(2)
    dense.lora_kernel_b.assign(np.ones((2, 3), "float32"))
    assert compat.kernel_variable(dense) is stored and not stored.trainable
    merged = np.asarray(dense.kernel)  # the property now merges the adapters in
    assert not np.allclose(merged, np.asarray(stored))


def test_no_autocast_keeps_a_float32_variable_float32():
    v = keras.Variable(np.ones((2, 2), "float32"))
    with keras.src.backend.AutocastScope("bfloat16"):  # what a mixed-precision layer call sets
        assert tf.convert_to_tensor(v.value).dtype == tf.bfloat16
        with compat.no_autocast():
            assert tf.convert_to_tensor(v.value).dtype == tf.float32


def test_adam_slots_and_weight_decay():
    a = keras.Variable(np.ones((3,), "float32"), name="kernel")
    b = keras.Variable(np.ones((2,), "float32"), name="bias")
    opt = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build([a, b])
    opt.apply([tf.constant([1.0, 2.0, 3.0]), tf.constant([1.0, 1.0])], [a, b])
    m, v = compat.adam_slots(opt, a)
    assert m.shape == v.shape == (3,)
    # After one step from zero: m = (1 - beta_1) g, v = (1 - beta_2) g^2.
    np.testing.assert_allclose(np.asarray(m), 0.1 * np.array([1.0, 2.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v), 0.001 * np.array([1.0, 4.0, 9.0]), rtol=1e-5)
    assert compat.adam_slots(opt, b)[0].shape == (2,)
    assert compat.uses_weight_decay(opt, a) is True
    assert compat.uses_weight_decay(opt, b) is False


def test_loss_scale():
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=128.0)
    opt.build([keras.Variable(np.ones((2,), "float32"))])  # the scale variable is made here
    assert hasattr(opt, "dynamic_scale")
    assert float(compat.loss_scale(opt)) == 128.0
    assert compat.loss_scale(keras.optimizers.SGD()) == 1.0


def test_the_overridden_optimizer_hooks_still_exist():
    """PreReducedAdamW overrides these two private methods; if Keras drops them, the overrides
    silently stop hooking anything."""
    for name in ("_all_reduce_sum_gradients", "_apply_weight_decay"):
        assert callable(getattr(keras.optimizers.AdamW, name, None)), name


def test_hub_decoder_parts():
    keras_hub = pytest.importorskip("keras_hub")
    layer = keras_hub.layers.TransformerDecoder(intermediate_dim=8, num_heads=2)
    layer.build((None, 3, 4))
    parts = compat.hub_decoder_parts(layer)
    assert set(parts) == {"attn", "ln_1", "ln_2", "c_fc", "c_proj"}
    assert parts["c_fc"].kernel.shape == (4, 8) and parts["c_proj"].kernel.shape == (8, 4)
    assert parts["ln_1"].gamma.shape == parts["ln_2"].gamma.shape == (4,)
    assert parts["attn"].query_dense.kernel.shape == (4, 2, 2)

"""LoRA: frozen base, exact parameter counts, identity at init, merge, adapter files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import (
    GPT2Classifier,
    GPT2Config,
    GPT2LanguageModel,
    enable_lora,
    load_lora,
    merge_lora,
)
from gpt2_tf.model.lora import save_lora

CONFIG = GPT2Config.from_preset("tiny")
E, L = CONFIG.n_embd, CONFIG.n_layer
INPUTS = {
    "token_ids": np.array([[464, 2068, 7586, 21831], [15496, 995, 0, 0]], "int32"),
    "padding_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], "int32"),
}


def randomize_adapters(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        if "lora_kernel_b" in v.path:
            v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))


@pytest.mark.parametrize(
    "targets, per_layer",
    [
        (("c_attn",), (E + 3 * E)),
        (
            ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"),
            (E + 3 * E) + (E + E) + (E + 4 * E) + (4 * E + E),
        ),
    ],
)
def test_trainable_count_is_the_hand_count(targets, per_layer):
    rank = 4
    lm = enable_lora(GPT2LanguageModel(CONFIG), rank, targets=targets)
    assert sum(int(np.prod(v.shape)) for v in lm.trainable_weights) == L * rank * per_layer
    clf = enable_lora(GPT2Classifier(CONFIG, num_classes=3), rank, targets=targets)
    head = E * 3  # the score head stays trainable, no bias
    assert sum(int(np.prod(v.shape)) for v in clf.trainable_weights) == L * rank * per_layer + head


def test_identity_at_init_and_frozen_base():
    keras.utils.set_random_seed(3)
    model = GPT2Classifier(CONFIG, num_classes=2)
    before = np.asarray(model(INPUTS))
    enable_lora(model, 8, alpha=16, targets=("c_attn", "c_fc"))
    np.testing.assert_array_equal(np.asarray(model(INPUTS)), before)
    trainable = {v.path for v in model.trainable_weights}
    assert all(
        "lora_kernel" in p or p.startswith("gpt2_classifier/score") or "score" in p
        for p in trainable
    )
    assert not any("bias" in p or "gamma" in p or "embeddings" in p for p in trainable)


def test_merge_equals_adapted_model():
    keras.utils.set_random_seed(4)
    model = enable_lora(GPT2LanguageModel(CONFIG), 4, alpha=8, targets=("c_attn", "mlp.c_proj"))
    randomize_adapters(model)
    adapted = np.asarray(model(INPUTS))
    assert np.abs(adapted - np.asarray(GPT2LanguageModel(CONFIG)(INPUTS))).max() > 1e-3
    merge_lora(model)
    np.testing.assert_allclose(np.asarray(model(INPUTS)), adapted, atol=1e-5)
    assert not any("lora" in v.path for v in model.weights)
    assert model.count_params() == GPT2LanguageModel(CONFIG).count_params()
    assert len(model.trainable_weights) == len(model.weights)


def test_adapter_file_round_trip(tmp_path):
    keras.utils.set_random_seed(5)
    base = GPT2Classifier(CONFIG, num_classes=3)
    base.save_pretrained(str(tmp_path / "base"))
    tuned = enable_lora(GPT2Classifier.from_pretrained(str(tmp_path / "base")), 4)
    randomize_adapters(tuned)
    tuned.score.kernel.assign(tuned.score.kernel * 2.0)  # the head trains too
    path = str(tmp_path / "adapters.safetensors")
    save_lora(tuned, path)
    full_size = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert (tmp_path / "adapters.safetensors").stat().st_size < full_size / 50
    fresh = GPT2Classifier.from_pretrained(str(tmp_path / "base"))
    load_lora(fresh, path)  # enables LoRA from the file's rank and targets
    np.testing.assert_allclose(np.asarray(fresh(INPUTS)), np.asarray(tuned(INPUTS)), atol=1e-6)


def test_wrong_adapter_file_is_refused(tmp_path):
    model = enable_lora(GPT2LanguageModel(CONFIG), 4, targets=("c_attn",))
    path = str(tmp_path / "r4.safetensors")
    save_lora(model, path)
    other_rank = enable_lora(GPT2LanguageModel(CONFIG), 8, targets=("c_attn",))
    with pytest.raises(ValueError, match=r"rank 4.*do not fit this model's LoRA \(rank 8"):
        load_lora(other_rank, path)
    other_targets = enable_lora(GPT2LanguageModel(CONFIG), 4, targets=("c_fc",))
    with pytest.raises(ValueError, match=r"targets \['c_attn'\].*targets \['c_fc'\]"):
        load_lora(other_targets, path)
    (tmp_path / "junk.safetensors").write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(Exception):  # noqa: B017 - a truncated file must not load
        load_lora(GPT2LanguageModel(CONFIG), str(tmp_path / "junk.safetensors"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="LoRA targets \\['q_proj'\\] unknown"):
        enable_lora(GPT2LanguageModel(CONFIG), 4, targets=("q_proj",))
    model = enable_lora(GPT2LanguageModel(CONFIG), 4)
    with pytest.raises(ValueError, match="already enabled"):
        enable_lora(model, 4)
    with pytest.raises(ValueError, match="not enabled"):
        merge_lora(GPT2LanguageModel(CONFIG))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_lora_dense_matches_keras_merged_kernel(policy):
    """Our x·W + s·(x·A)·B path gives Keras's (W + s·A·B) outputs and adapter gradients."""
    import tensorflow as tf

    from gpt2_tf.model.layers import Dense

    rng = np.random.default_rng(6)
    x = tf.constant(rng.normal(size=(5, 7, 16)), tf.float32)
    ours, ref = Dense(12, dtype=policy), keras.layers.Dense(12, dtype=policy)
    for layer in (ours, ref):
        layer.build(x.shape)
        layer.enable_lora(4, lora_alpha=8)
    for mine, theirs in zip(ours.weights, ref.weights):
        value = rng.normal(0, 0.3, mine.shape).astype("float32")
        mine.assign(value)
        theirs.assign(value)
    outs, grads = [], []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        assert layer._kernel.path not in [v.path for v in layer.trainable_weights]
        outs.append(np.asarray(tf.cast(y, tf.float32)))
        grads.append([np.asarray(g) for g in tape.gradient(loss, layer.trainable_weights)])
    tol = dict(rtol=1e-5, atol=1e-5) if policy == "float32" else dict(rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(outs[0], outs[1], **tol)
    for g_ours, g_ref in zip(*grads):
        scale = np.abs(g_ref).max()
        np.testing.assert_allclose(g_ours / scale, g_ref / scale, **tol)


def _greedy_by_forward_passes(model, prompt, steps):
    """Greedy decoding with no cache and no traced function: one plain forward pass a token."""
    ids = list(prompt)
    for _ in range(steps):
        x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32")}
        ids.append(int(np.asarray(model(x))[0, -1].argmax()))
    return ids[len(prompt) :]


def _lm_batch():
    """One (x, y, sample_weight) batch of INPUTS: every next real token is a target."""
    x = {k: tf.constant(v) for k, v in INPUTS.items()}
    y = tf.constant(np.roll(INPUTS["token_ids"], -1, axis=1))
    w = tf.constant(np.roll(INPUTS["padding_mask"], -1, axis=1) * INPUTS["padding_mask"], "float32")
    w = tf.tensor_scatter_nd_update(w, [[0, 3]], [0.0])  # the last token has no next one
    return x, y, w


@pytest.mark.parametrize("change", ["enable", "load", "merge"])
def test_generate_and_perplexity_see_lora_changes_after_a_first_call(change, tmp_path):
    """`generate` and `perplexity_on` keep traced functions on the model; enabling, loading and
    merging LoRA afterwards must change what they compute exactly as it changes forward passes."""
    from gpt2_tf.analyses.evaluate import perplexity_on

    keras.utils.set_random_seed(5)
    model = GPT2LanguageModel(CONFIG)
    prompt, batch = [464, 2068, 7586], _lm_batch()
    if change == "merge":  # adapters in place before the first call; merged after it
        randomize_adapters(enable_lora(model, 4, alpha=8, targets=("c_attn", "c_fc")), seed=1)
    first = model.generate(prompt, max_new_tokens=12, stop_token_ids=())  # same trace key
    first_ppl = perplexity_on(model, [batch])["perplexity"]
    if change == "enable":
        randomize_adapters(enable_lora(model, 4, alpha=8, targets=("c_attn", "c_fc")), seed=1)
    elif change == "load":
        other = enable_lora(GPT2LanguageModel(CONFIG), 4, alpha=8, targets=("c_attn", "c_fc"))
        randomize_adapters(other, seed=1)
        save_lora(other, str(tmp_path / "adapters.safetensors"))
        load_lora(model, str(tmp_path / "adapters.safetensors"))
    else:
        merge_lora(model)
    want = _greedy_by_forward_passes(model, prompt, 12)
    assert model.generate(prompt, max_new_tokens=12, stop_token_ids=()) == want
    ppl = perplexity_on(model, [batch])["perplexity"]
    x, y, w = batch
    nll = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
    np.testing.assert_allclose(ppl, np.exp(float(tf.reduce_sum(nll * w) / tf.reduce_sum(w))), 1e-5)
    if change == "merge":  # merging changes no result
        np.testing.assert_allclose(ppl, first_ppl, rtol=1e-5)
    else:  # the adapters moved the model, and both functions saw it
        assert ppl != pytest.approx(first_ppl, rel=1e-4) and want != first[: len(want)]

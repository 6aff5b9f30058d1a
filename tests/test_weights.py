"""Pretrained weights in and out: Hugging Face, keras-hub, OpenAI checkpoints and our own folders.

Every reference is a tiny model (2 layers, 64 wide, 4 heads, the full 50,257-token vocabulary)
with random values in *every* weight, biases and LayerNorm gammas/betas included, so that a wrong
entry in the name table cannot hide behind zeros or ones. Outputs are compared at the real
positions of a right-padded batch of rows of lengths 9, 5 and 2, with the relative error
max|ours - ref| / max|ref| <= 1e-4.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from gpt2_tf import GPT2Backbone, GPT2Classifier, GPT2Config, GPT2LanguageModel
from gpt2_tf.core import hub
from gpt2_tf.model import weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, LAYERS, WIDTH, HEADS, POSITIONS = 50257, 2, 64, 4, 128
LENGTHS = (9, 5, 2)
TOL = 1e-4
TINY = GPT2Config(
    vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS
)


# ---- helpers ------------------------------------------------------------------------------------
def rel_err(ours, ref, padding_mask) -> float:
    """max|ours - ref| / max|ref| over the real positions of [B, T, ...] arrays."""
    real = np.asarray(padding_mask).astype(bool)
    ours, ref = np.asarray(ours, np.float64)[real], np.asarray(ref, np.float64)[real]
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def assert_close(ours, ref, padding_mask, tol=TOL):
    assert np.asarray(ours).shape == np.asarray(ref).shape
    err = rel_err(ours, ref, padding_mask)
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"


def hf_outputs(model, batch):
    """(logits, last hidden state) of a transformers GPT2LMHeadModel, as numpy."""
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(batch["token_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["padding_mask"], dtype=torch.long),
            output_hidden_states=True,
        )
    return out.logits.numpy(), out.hidden_states[-1].numpy()


def hf_backbone_hidden(model, batch):
    """`GPT2Model.last_hidden_state` of the LM's transformer."""
    with torch.no_grad():
        out = model.transformer(
            input_ids=torch.tensor(batch["token_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["padding_mask"], dtype=torch.long),
        )
    return out.last_hidden_state.numpy()


def ours(model, batch):
    return np.asarray(model(batch))


def tampered_copy(src: str, dst: str, edit) -> str:
    """A copy of the Hugging Face folder `src`, its model.safetensors passed through `edit`."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})
    return dst


def read_checkpoint(folder: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(folder)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def write_checkpoint(folder: str, tensors: dict[str, np.ndarray], hparams_from: str) -> str:
    """An OpenAI-layout folder holding exactly `tensors`, with the hparams of `hparams_from`."""
    os.makedirs(folder)
    shutil.copy(os.path.join(hparams_from, "hparams.json"), folder)
    shutil.copy(os.path.join(hparams_from, "checkpoint"), folder)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=os.path.join(folder, "model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    return folder


def backbone_state(model) -> dict[str, np.ndarray]:
    return {k: v for k, v in weights.state_of(model).items() if k != "score.weight"}


# ---- shared references --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    """[3, 9] right-padded batch of lengths 9, 5, 2 (padding holds <|endoftext|>)."""
    rng = np.random.default_rng(0)
    t = max(LENGTHS)
    token_ids = np.full((len(LENGTHS), t), 50256, np.int32)
    padding_mask = np.zeros((len(LENGTHS), t), np.int32)
    for row, n in enumerate(LENGTHS):
        token_ids[row, :n] = rng.integers(0, VOCAB, n)
        padding_mask[row, :n] = 1
    token_ids[0, 0] = VOCAB - 1  # the last row of the embedding is read too
    return {"token_ids": token_ids, "padding_mask": padding_mask}


@pytest.fixture(scope="module")
def hf(tmp_path_factory, batch):
    """A random transformers GPT2LMHeadModel, its save_pretrained folder and its outputs."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"ln_(1|2|f)\.weight$", name):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    folder = str(tmp_path_factory.mktemp("hf") / "tiny")
    model.save_pretrained(folder)
    logits, _ = hf_outputs(model, batch)
    hidden = hf_backbone_hidden(model, batch)
    return SimpleNamespace(model=model, folder=folder, logits=logits, hidden=hidden)


@pytest.fixture(scope="module")
def hf_lm(hf):
    return GPT2LanguageModel.from_pretrained(hf.folder)


@pytest.fixture(scope="module")
def keras_hub_ref(tmp_path_factory, batch):
    """A random keras-hub GPT2Backbone, its save_to_preset folder, hidden states and logits."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=WIDTH,
        intermediate_dim=4 * WIDTH,
        max_sequence_length=POSITIONS,
    )
    rng = np.random.default_rng(1)
    for w in backbone.weights:
        base = 1.0 if w.path.endswith("gamma") else 0.0
        scale = 0.2 if w.path.endswith("gamma") else 0.1
        w.assign((base + scale * rng.standard_normal(w.shape)).astype("float32"))
    folder = str(tmp_path_factory.mktemp("keras_hub") / "tiny")
    backbone.save_to_preset(folder)
    hidden = np.asarray(backbone(batch, training=False))
    wte = np.asarray(backbone.token_embedding.embeddings)
    return SimpleNamespace(folder=folder, hidden=hidden, logits=hidden @ wte.T)


@pytest.fixture(scope="module")
def openai_folder(tmp_path_factory, hf_lm):
    folder = str(tmp_path_factory.mktemp("openai") / "tiny")
    weights.save_openai_checkpoint(hf_lm, folder)
    return folder


# ---- 1. Hugging Face ----------------------------------------------------------------------------
def test_hf_checkpoint_gives_transformers_logits(hf, hf_lm, batch):
    logits = ours(hf_lm, batch)
    assert logits.dtype == np.float32
    assert_close(logits, hf.logits, batch["padding_mask"])


def test_hf_checkpoint_backbone_gives_gpt2model_hidden_states(hf, batch):
    backbone = GPT2Backbone.from_pretrained(hf.folder)
    assert_close(ours(backbone, batch), hf.hidden, batch["padding_mask"])


def test_hf_config_is_read_from_config_json(hf_lm):
    c = hf_lm.config
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (
        VOCAB,
        POSITIONS,
        WIDTH,
        LAYERS,
        HEADS,
    )


def test_sharded_hf_checkpoint_loads(hf, batch, tmp_path):
    folder = str(tmp_path / "sharded")
    hf.model.save_pretrained(folder, max_shard_size="5MB")
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
    model = GPT2LanguageModel.from_pretrained(folder)
    assert_close(ours(model, batch), hf.logits, batch["padding_mask"])


def test_hf_checkpoint_with_explicit_tied_lm_head_loads(hf, batch, tmp_path):
    def add_head(state):
        state["lm_head.weight"] = state["transformer.wte.weight"].copy()

    folder = tampered_copy(hf.folder, str(tmp_path / "with_head"), add_head)
    model = GPT2LanguageModel.from_pretrained(folder)
    assert_close(ours(model, batch), hf.logits, batch["padding_mask"])


# ---- 2. export to Hugging Face ------------------------------------------------------------------
def test_export_hf_loads_in_transformers_with_same_logits(hf_lm, batch, tmp_path):
    folder = str(tmp_path / "export")
    hf_lm.export_hf(folder)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    logits, _ = hf_outputs(reloaded, batch)
    assert_close(logits, ours(hf_lm, batch), batch["padding_mask"])
    np.testing.assert_array_equal(
        reloaded.lm_head.weight.detach().numpy(), reloaded.transformer.wte.weight.detach().numpy()
    )


def test_export_hf_config_round_trips(hf_lm, tmp_path):
    folder = str(tmp_path / "export")
    hf_lm.export_hf(folder)
    hf_config = transformers.GPT2Config.from_pretrained(folder)
    c = hf_lm.config
    assert hf_config.n_layer == c.n_layer
    assert hf_config.n_embd == c.n_embd
    assert hf_config.n_head == c.n_head
    assert hf_config.n_positions == c.n_positions
    assert hf_config.vocab_size == c.vocab_size
    assert hf_config.layer_norm_epsilon == c.layer_norm_epsilon
    assert hf_config.eos_token_id == c.eos_token_id
    assert GPT2Config.from_file(folder) == c
    assert GPT2LanguageModel.from_pretrained(folder).config == c


# ---- 3. keras-hub -------------------------------------------------------------------------------
def test_keras_hub_preset_backbone_gives_keras_hub_hidden_states(keras_hub_ref, batch):
    backbone = GPT2Backbone.from_pretrained(keras_hub_ref.folder)
    assert backbone.config.n_inner is None
    assert_close(ours(backbone, batch), keras_hub_ref.hidden, batch["padding_mask"])


def test_keras_hub_preset_lm_gives_tied_head_logits(keras_hub_ref, batch):
    model = GPT2LanguageModel.from_pretrained(keras_hub_ref.folder)
    assert_close(ours(model, batch), keras_hub_ref.logits, batch["padding_mask"])


# ---- 4. OpenAI checkpoint -----------------------------------------------------------------------
def test_openai_checkpoint_uses_openai_names_and_shapes(openai_folder):
    e, inner = WIDTH, 4 * WIDTH
    expected = {"model/wte": [VOCAB, e], "model/wpe": [POSITIONS, e]}
    for i in range(LAYERS):
        p = f"model/h{i}"
        expected.update({
            f"{p}/ln_1/g": [e], f"{p}/ln_1/b": [e], f"{p}/ln_2/g": [e], f"{p}/ln_2/b": [e],
            f"{p}/attn/c_attn/w": [1, e, 3 * e], f"{p}/attn/c_attn/b": [3 * e],
            f"{p}/attn/c_proj/w": [1, e, e], f"{p}/attn/c_proj/b": [e],
            f"{p}/mlp/c_fc/w": [1, e, inner], f"{p}/mlp/c_fc/b": [inner],
            f"{p}/mlp/c_proj/w": [1, inner, e], f"{p}/mlp/c_proj/b": [e],
        })  # fmt: skip
    expected.update({"model/ln_f/g": [e], "model/ln_f/b": [e]})
    assert dict(tf.train.list_variables(openai_folder)) == expected


def test_openai_checkpoint_hparams_json(openai_folder):
    with open(os.path.join(openai_folder, "hparams.json"), encoding="utf-8") as f:
        hparams = json.load(f)
    assert hparams == {
        "n_vocab": VOCAB,
        "n_ctx": POSITIONS,
        "n_embd": WIDTH,
        "n_head": HEADS,
        "n_layer": LAYERS,
    }


def test_openai_checkpoint_values_are_hf_values(openai_folder, hf):
    tensors = read_checkpoint(openai_folder)
    hf_state = {k: v.detach().numpy() for k, v in hf.model.transformer.state_dict().items()}
    np.testing.assert_array_equal(tensors["model/wte"], hf_state["wte.weight"])
    np.testing.assert_array_equal(
        tensors["model/h1/attn/c_attn/w"][0], hf_state["h.1.attn.c_attn.weight"]
    )
    np.testing.assert_array_equal(tensors["model/h0/ln_2/g"], hf_state["h.0.ln_2.weight"])
    np.testing.assert_array_equal(tensors["model/ln_f/b"], hf_state["ln_f.bias"])


def test_openai_checkpoint_loads_with_hf_logits(openai_folder, hf, batch):
    model = GPT2LanguageModel.from_pretrained(openai_folder)
    assert_close(ours(model, batch), hf.logits, batch["padding_mask"])


# ---- 5. failing loudly --------------------------------------------------------------------------
def test_wrong_shape_error_names_key_and_both_shapes(hf, tmp_path):
    def transpose_qkv(state):
        key = "transformer.h.0.attn.c_attn.weight"
        state[key] = np.ascontiguousarray(state[key].T)

    folder = tampered_copy(hf.folder, str(tmp_path / "bad"), transpose_qkv)
    pattern = r"h\.0\.attn\.c_attn\.weight.*\(192, 64\).*\(64, 192\)"
    with pytest.raises(ValueError, match=pattern):
        GPT2LanguageModel.from_pretrained(folder)


def test_wrong_shape_bias_error_names_key_and_both_shapes(hf, tmp_path):
    def shorten(state):
        key = "transformer.h.1.mlp.c_fc.bias"
        state[key] = state[key][:-1].copy()

    folder = tampered_copy(hf.folder, str(tmp_path / "bad"), shorten)
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.bias.*\(255,\).*\(256,\)"):
        GPT2Backbone.from_pretrained(folder)


def test_missing_key_error_names_it(hf, tmp_path):
    folder = tampered_copy(
        hf.folder, str(tmp_path / "bad"), lambda s: s.pop("transformer.h.1.ln_2.bias")
    )
    with pytest.raises(KeyError, match=r"missing keys \['h\.1\.ln_2\.bias'\]"):
        GPT2LanguageModel.from_pretrained(folder)


def test_unexpected_key_error_names_it(hf, tmp_path):
    def add(state):
        state["transformer.h.0.attn.c_attn.lora_a"] = np.zeros((64, 4), np.float32)

    folder = tampered_copy(hf.folder, str(tmp_path / "bad"), add)
    with pytest.raises(KeyError, match=r"unexpected keys \['h\.0\.attn\.c_attn\.lora_a'\]"):
        GPT2LanguageModel.from_pretrained(folder)


def test_untied_lm_head_is_refused(hf, tmp_path):
    def untie(state):
        state["lm_head.weight"] = state["transformer.wte.weight"] + 1.0

    folder = tampered_copy(hf.folder, str(tmp_path / "bad"), untie)
    with pytest.raises(ValueError, match=r"lm_head\.weight differs from wte\.weight"):
        GPT2LanguageModel.from_pretrained(folder)


def test_folder_without_safetensors_is_refused(hf, tmp_path):
    folder = str(tmp_path / "bin_only")
    shutil.copytree(hf.folder, folder)
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT2LanguageModel.from_pretrained(folder)


def test_openai_checkpoint_extra_variable_error_names_it(openai_folder, tmp_path):
    tensors = read_checkpoint(openai_folder)
    tensors["model/h0/attn/extra"] = np.zeros((3,), np.float32)
    folder = write_checkpoint(str(tmp_path / "bad"), tensors, openai_folder)
    with pytest.raises(KeyError, match=r"model/h0/attn/extra"):
        GPT2LanguageModel.from_pretrained(folder)


def test_openai_checkpoint_missing_variable_error_names_it(openai_folder, tmp_path):
    tensors = read_checkpoint(openai_folder)
    del tensors["model/h1/mlp/c_proj/b"]
    folder = write_checkpoint(str(tmp_path / "bad"), tensors, openai_folder)
    with pytest.raises(KeyError, match=r"missing checkpoint variables \[.model/h1/mlp/c_proj/b.\]"):
        GPT2LanguageModel.from_pretrained(folder)


# ---- 6. classifier folders, hub ids, bad paths --------------------------------------------------
def test_classifier_round_trip_keeps_head_settings_and_outputs(batch, tmp_path):
    keras.utils.set_random_seed(0)
    clf = GPT2Classifier(TINY, num_classes=3, pooling="mean")
    folder = str(tmp_path / "clf")
    clf.save_pretrained(folder)
    loaded = GPT2Classifier.from_pretrained(folder)
    assert (loaded.num_classes, loaded.pooling) == (3, "mean")
    before, after = ours(clf, batch), ours(loaded, batch)
    assert before.shape == (len(LENGTHS), 3)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"score\.weight.*3 classes"):
        GPT2Classifier.from_pretrained(folder, num_classes=5)
    lm_state = weights.state_of(GPT2LanguageModel.from_pretrained(folder))  # head dropped
    for name, value in backbone_state(clf).items():
        np.testing.assert_array_equal(lm_state[name], value, err_msg=name)


def test_classifier_from_lm_folder_gets_fresh_head_and_same_backbone(hf, hf_lm):
    keras.utils.set_random_seed(0)
    clf = GPT2Classifier.from_pretrained(hf.folder, num_classes=4, pooling="mean")
    assert (clf.num_classes, clf.pooling) == (4, "mean")
    reference = backbone_state(hf_lm)
    state = weights.state_of(clf)
    assert set(state) == {*reference, "score.weight"}
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    head = state["score.weight"]
    assert head.shape == (4, WIDTH)
    assert 0.005 < head.std() < 0.05  # the RandomNormal(0.02) init, not zeros or copied weights
    default = GPT2Classifier.from_pretrained(hf.folder)
    assert (default.num_classes, default.pooling) == (2, "last")


@pytest.mark.parametrize("hub_id", ["openai-community/gpt2", "gpt2"])
def test_hub_id_offline_with_empty_cache_raises_offline_error(hub_id, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "hf_home" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    # huggingface_hub reads its cache folder at import time; point the live constant there too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)
    start = time.monotonic()
    with pytest.raises(hub.OfflineError, match="local folder") as info:
        GPT2LanguageModel.from_pretrained(hub_id)
    assert time.monotonic() - start < 10
    assert hub_id in str(info.value)
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("path", ["./no/such/dir", "no/such/dir"])
def test_missing_local_path_raises_file_not_found(path):
    with pytest.raises(FileNotFoundError, match=re.escape(repr(path))):
        GPT2LanguageModel.from_pretrained(path)


def test_folder_that_is_no_checkpoint_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a GPT-2 checkpoint folder"):
        GPT2LanguageModel.from_pretrained(str(tmp_path))


def test_unknown_loader_argument_is_refused(hf):
    with pytest.raises(TypeError, match="num_classes"):
        GPT2LanguageModel.from_pretrained(hf.folder, num_classes=3)


# ---- 7. mixed precision -------------------------------------------------------------------------
def test_mixed_bfloat16_load_keeps_float32_variables_and_logits(hf, hf_lm, batch):
    model = GPT2LanguageModel.from_pretrained(hf.folder, dtype="mixed_bfloat16")
    assert model.compute_dtype == "bfloat16"
    assert {v.dtype for v in model.weights} == {"float32"}
    logits = ours(model, batch)
    assert logits.dtype == np.float32
    assert_close(logits, ours(hf_lm, batch), batch["padding_mask"], tol=5e-2)
    state = weights.state_of(model)
    for name, value in weights.state_of(hf_lm).items():  # loaded exactly, not through bfloat16
        np.testing.assert_array_equal(state[name], value, err_msg=name)

"""Pretrained weights in and out, through one explicit name table.

Every format is read into a *state*: a dict from Hugging Face's GPT-2 names
(`h.0.attn.c_attn.weight`, no `transformer.` prefix) to numpy arrays. `assign_state` then checks
it against the table of the model's variables: a missing, unexpected or mis-shaped key raises an
error that names it.

Formats: Hugging Face (`config.json` + `model.safetensors`, also sharded), OpenAI's TensorFlow
checkpoint (`hparams.json` + `model.ckpt.*`), a keras-hub preset folder, and our own
`save_pretrained` folder (Hugging Face's format plus a `gpt2_tf` entry in `config.json`).
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from gpt2_tf.core import hub
from gpt2_tf.core.compat import hub_decoder_parts, kernel_variable
from gpt2_tf.model.config import GPT2Config

log = logging.getLogger(__name__)

HF_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
]
# Non-parameter buffers that older Hugging Face checkpoints carry (the causal mask); known by name.
HF_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


# ---- the table ----------------------------------------------------------------------------------
def _layer_entries(prefix: str, layer, kind: str):
    if kind == "ln":
        return [(f"{prefix}.weight", layer, "gamma"), (f"{prefix}.bias", layer, "beta")]
    return [(f"{prefix}.weight", layer, "kernel"), (f"{prefix}.bias", layer, "bias")]


def name_table(model) -> list[tuple[str, object, str]]:
    """(hf_name, layer, attribute) for every weight of `model`, in Hugging Face's layout.

    Keras `Dense` kernels are [in, out] like Hugging Face's Conv1D, so only the classifier head
    (a torch Linear, [out, in]) is transposed, in `_to_hf` / `_from_hf`.
    """
    bb = model if hasattr(model, "blocks") else model.backbone
    table = [("wte.weight", bb.wte, "embeddings"), ("wpe.weight", bb.wpe, "embeddings")]
    for i, b in enumerate(bb.blocks):
        p = f"h.{i}"
        table += _layer_entries(f"{p}.ln_1", b.ln_1, "ln")
        table += _layer_entries(f"{p}.attn.c_attn", b.attn.c_attn, "dense")
        table += _layer_entries(f"{p}.attn.c_proj", b.attn.c_proj, "dense")
        table += _layer_entries(f"{p}.ln_2", b.ln_2, "ln")
        table += _layer_entries(f"{p}.mlp.c_fc", b.mlp.c_fc, "dense")
        table += _layer_entries(f"{p}.mlp.c_proj", b.mlp.c_proj, "dense")
    table += _layer_entries("ln_f", bb.ln_f, "ln")
    if hasattr(model, "score"):
        table.append(("score.weight", model.score, "kernel"))
    return table


def _variable(layer, attr):
    # With LoRA on, `Dense.kernel` is the merged view; the stored variable is another.
    return kernel_variable(layer) if attr == "kernel" else getattr(layer, attr)


def _to_hf(name, value):
    return value.T if name == "score.weight" else value


def state_of(model) -> dict[str, np.ndarray]:
    """The model's weights as a Hugging Face-named state (LoRA adapters folded in)."""
    return {n: _to_hf(n, np.asarray(getattr(layer, a))) for n, layer, a in name_table(model)}


def assign_state(model, state: dict[str, np.ndarray], source: str, allow_missing=()) -> None:
    """Copies `state` into `model`; every key used, every shape checked, nothing skipped."""
    table = {n: (layer, a) for n, layer, a in name_table(model)}
    state = dict(state)
    tied = state.pop("lm_head.weight", None)
    if tied is not None and "wte.weight" in state and not np.array_equal(tied, state["wte.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; GPT-2's head is tied")
    for name in [k for k in state if HF_BUFFERS.fullmatch(k)]:
        state.pop(name)
    missing = [n for n in table if n not in state and n not in allow_missing]
    unexpected = [n for n in state if n not in table]
    if missing or unexpected:
        raise KeyError(
            f"{source}: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    for name, (layer, attr) in table.items():
        if name not in state:
            continue
        var = _variable(layer, attr)
        value = state[name].T if name == "score.weight" else state[name]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(
                f"{source}: key {name!r} has shape {tuple(state[name].shape)}, the "
                f"model expects {tuple(_to_hf(name, np.zeros(var.shape)).shape)}"
            )
        var.assign(value.astype(var.dtype))


# ---- readers: each returns (config, state, head info) ------------------------------------------
def _strip(key: str) -> str:
    return key[len("transformer.") :] if key.startswith("transformer.") else key


def read_hf(folder: str):
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    config = GPT2Config.from_hf_dict(raw, source=os.path.join(folder, "config.json"))
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{folder}: no model.safetensors (PyTorch .bin files are not read; "
            "convert them with transformers' save_pretrained(safe_serialization=True))"
        )
    state = {}
    for name in files:
        state.update({_strip(k): v for k, v in _load_safetensors(os.path.join(folder, name))})
    return config, state, raw.get("gpt2_tf", {})


def _load_safetensors(path: str):
    """The (name, array) pairs of a safetensors file; a damaged one is an error naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path).items()
    except (SafetensorError, OSError, ValueError) as e:
        raise OSError(
            f"{path}: cannot read the weights ({e}); the file is damaged or was cut short: "
            "download or save it again"
        ) from e


def openai_name(hf_name: str) -> str:
    """`h.0.attn.c_attn.weight` -> `model/h0/attn/c_attn/w`; LayerNorm weight/bias -> g/b."""
    parts = hf_name.split(".")
    if parts[0] == "h":
        parts = [f"h{parts[1]}", *parts[2:]]
    is_ln = parts[-2].startswith("ln")
    suffix = {"weight": "g" if is_ln else "w", "bias": "b"}[parts[-1]]
    if parts[0] in ("wte", "wpe"):
        return f"model/{parts[0]}"
    return "/".join(["model", *parts[:-1], suffix])


def read_openai(folder: str):
    import tensorflow as tf

    config = GPT2Config.from_file(os.path.join(folder, "hparams.json"))
    reader = tf.train.load_checkpoint(folder)
    shapes = reader.get_variable_to_shape_map()
    by_openai = {openai_name(n): n for n in hf_names(config)}
    state, unexpected = {}, []
    for var in shapes:
        if var not in by_openai:
            unexpected.append(var)
            continue
        value = reader.get_tensor(var)
        # Conv1D kernels are stored [1, in, out]
        state[by_openai[var]] = value[0] if value.ndim == 3 else value
    missing = [name for name, hf in by_openai.items() if hf not in state]
    if unexpected or missing:
        raise KeyError(
            f"{folder}: missing checkpoint variables {sorted(missing)[:10]}; "
            f"unexpected checkpoint variables {sorted(unexpected)[:10]}"
        )
    return config, state, {}


def read_keras_hub(folder: str):
    import keras_hub

    kh = keras_hub.models.GPT2Backbone.from_preset(folder)
    e = kh.hidden_dim
    config = GPT2Config(
        vocab_size=kh.vocabulary_size,
        n_positions=kh.max_sequence_length,
        n_embd=e,
        n_layer=kh.num_layers,
        n_head=kh.num_heads,
        n_inner=kh.intermediate_dim if kh.intermediate_dim != 4 * e else None,
    )
    npy = lambda v: np.asarray(v.numpy() if hasattr(v, "numpy") else v)  # noqa: E731
    state = {
        "wte.weight": npy(kh.token_embedding.embeddings),
        "wpe.weight": npy(kh.position_embedding.position_embeddings),
        "ln_f.weight": npy(kh.layer_norm.gamma),
        "ln_f.bias": npy(kh.layer_norm.beta),
    }
    for i, layer in enumerate(kh.transformer_layers):
        parts, p = hub_decoder_parts(layer), f"h.{i}"
        att = parts["attn"]
        qkv = (att.query_dense, att.key_dense, att.value_dense)  # kernels [E, H, D], biases [H, D]
        state[f"{p}.attn.c_attn.weight"] = np.concatenate(
            [npy(d.kernel).reshape(e, e) for d in qkv], 1
        )
        state[f"{p}.attn.c_attn.bias"] = np.concatenate([npy(d.bias).reshape(e) for d in qkv])
        state[f"{p}.attn.c_proj.weight"] = npy(att.output_dense.kernel).reshape(e, e)  # [H, D, E]
        state[f"{p}.attn.c_proj.bias"] = npy(att.output_dense.bias)
        for name in ("ln_1", "ln_2"):
            ln = parts[name]
            state[f"{p}.{name}.weight"], state[f"{p}.{name}.bias"] = npy(ln.gamma), npy(ln.beta)
        for name in ("c_fc", "c_proj"):
            d = parts[name]
            state[f"{p}.mlp.{name}.weight"], state[f"{p}.mlp.{name}.bias"] = (
                npy(d.kernel),
                npy(d.bias),
            )
    return config, state, {}


def hf_names(config: GPT2Config) -> list[str]:
    """The table's backbone names for a config, without building a model."""
    names = ["wte.weight", "wpe.weight"]
    for i in range(config.n_layer):
        for sub in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names += [f"h.{i}.{sub}.weight", f"h.{i}.{sub}.bias"]
    return [*names, "ln_f.weight", "ln_f.bias"]


def detect_format(folder: str) -> str:
    has = lambda name: os.path.exists(os.path.join(folder, name))  # noqa: E731
    if has("hparams.json") and (
        has("checkpoint") or any(f.startswith("model.ckpt") for f in os.listdir(folder))
    ):
        return "openai"
    if has("config.json"):
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        if str(raw.get("module", "")).startswith("keras_hub") or "registered_name" in raw:
            return "keras_hub"
        return "hf"
    raise FileNotFoundError(
        f"{folder}: not a GPT-2 checkpoint folder (expected config.json + "
        "model.safetensors, hparams.json + model.ckpt.*, or a keras-hub preset)"
    )


READERS = {"hf": read_hf, "openai": read_openai, "keras_hub": read_keras_hub}


# ---- public entry points -----------------------------------------------------------------------
def load_pretrained(cls, path: str, dtype=None, **head_kwargs):
    """Builds `cls` (backbone, LM or classifier) from a folder or hub id and loads its weights."""
    folder = hub.resolve(path, HF_PATTERNS, what=f"{cls.__name__} weights")
    config, state, head = READERS[detect_format(folder)](folder)
    kwargs = {"dtype": dtype} if dtype else {}
    allow_missing = ()
    if cls.__name__ == "GPT2Classifier":
        kwargs["num_classes"] = head_kwargs.pop("num_classes", head.get("num_classes", 2))
        kwargs["pooling"] = head_kwargs.pop("pooling", head.get("pooling", "last"))
        if "score.weight" not in state:
            log.info("%s has no classifier head: `score` starts from random weights", folder)
            allow_missing = ("score.weight",)
        elif state["score.weight"].shape[0] != kwargs["num_classes"]:
            raise ValueError(
                f"{folder}: key 'score.weight' has {state['score.weight'].shape[0]} "
                f"classes, num_classes={kwargs['num_classes']} was asked for"
            )
    elif "score.weight" in state:
        state.pop("score.weight")  # a classifier's backbone loads as a plain LM / backbone
    if head_kwargs:
        raise TypeError(f"load_pretrained: unexpected arguments {sorted(head_kwargs)}")
    model = cls(config, **kwargs)
    assign_state(model, state, source=folder, allow_missing=allow_missing)
    return model


def save_pretrained(model, folder: str, tokenizer=None) -> None:
    """Hugging Face's layout: `config.json` + `model.safetensors` (+ tokenizer files)."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    config = model.config.to_hf_dict()
    if hasattr(model, "score"):
        config["architectures"] = ["GPT2ForSequenceClassification"]
        config["num_labels"] = model.num_classes
        config["gpt2_tf"] = {"num_classes": model.num_classes, "pooling": model.pooling}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    state = state_of(model)
    prefixed = {
        (k if k == "score.weight" else f"transformer.{k}"): np.ascontiguousarray(v, np.float32)
        for k, v in state.items()
    }
    save_file(prefixed, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def export_hf(model, folder: str, tokenizer=None) -> None:
    """A folder `transformers.GPT2LMHeadModel.from_pretrained` loads (float32 weights)."""
    save_pretrained(model, folder, tokenizer)
    with open(os.path.join(folder, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"bos_token_id": model.config.eos_token_id, "eos_token_id": model.config.eos_token_id},
            f,
            indent=2,
        )


def save_openai_checkpoint(model, folder: str) -> None:
    """OpenAI's layout: `hparams.json` + `model.ckpt.*`; Conv1D kernels stored [1, in, out]."""
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    model.config.save_openai(folder)
    names, tensors = [], []
    for name, value in state_of(model).items():
        if name == "score.weight":
            continue
        is_conv = name.endswith(".weight") and ".c_" in name
        names.append(openai_name(name))
        tensors.append(tf.constant(value[None] if is_conv else value))
    prefix = os.path.join(folder, "model.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors
    )
    with open(os.path.join(folder, "checkpoint"), "w", encoding="utf-8") as f:
        f.write('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')

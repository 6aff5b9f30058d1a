"""LoRA on a built GPT-2: low-rank adapters on chosen projections, everything else frozen.

Built on Keras 3's own `Dense.enable_lora(rank, lora_alpha)` (kernel frozen, `lora_kernel_a`
[in, r] he-uniform, `lora_kernel_b` [r, out] zeros, so outputs are unchanged at the start). On top
of it: target selection by GPT-2 name, freezing of biases and LayerNorms too, folding the adapters
back into the kernels, and saving the adapters alone (PEFT-style, with the trained head).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from gpt2_tf.core.compat import kernel_variable

# Target name -> (sub-layer of the block, Dense inside it). Names are OpenAI's/PEFT's for GPT-2.
TARGETS = {
    "c_attn": ("attn", "c_attn"),  # fused query/key/value projection
    "attn.c_proj": ("attn", "c_proj"),  # attention output
    "c_fc": ("mlp", "c_fc"),  # MLP up-projection
    "mlp.c_proj": ("mlp", "c_proj"),  # MLP down-projection
}
DEFAULT_TARGETS = ("c_attn",)  # PEFT's default for GPT-2
FORMAT = "gpt2_tf.model.lora.v1"


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    keep_trainable: tuple[str, ...]


def _backbone(model):
    return model if hasattr(model, "blocks") else model.backbone


def _check_targets(targets) -> tuple[str, ...]:
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets {unknown or '()'} unknown; choose among {list(TARGETS)}")
    return tuple(t for t in TARGETS if t in targets)  # canonical order


def lora_layers(model, targets) -> dict[str, object]:
    """`h3.c_attn` -> that block's Dense, for every block and target."""
    out = {}
    for i, block in enumerate(_backbone(model).blocks):
        for t in _check_targets(targets):
            sub, dense = TARGETS[t]
            out[f"h{i}.{t}"] = getattr(getattr(block, sub), dense)
    return out


def _keep_layers(model, keep_trainable):
    return [getattr(model, name) for name in keep_trainable]


def enable_lora(
    model,
    rank: int,
    alpha: float | None = None,
    targets=DEFAULT_TARGETS,
    keep_trainable: tuple[str, ...] | None = None,
):
    """Adds rank-`rank` adapters to `targets` and freezes every other weight.

    `keep_trainable` names top-level layers that stay trainable; by default a classifier's
    `score` head. Scale is `alpha / rank` (alpha defaults to rank, as in Keras).
    """
    if getattr(model, "lora_settings", None) is not None:
        raise ValueError("LoRA is already enabled on this model")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    targets = _check_targets(targets)
    if keep_trainable is None:
        keep_trainable = ("score",) if hasattr(model, "score") else ()
    for v in model.variables:
        v.trainable = False
    for dense in lora_layers(model, targets).values():
        dense.enable_lora(rank, lora_alpha=alpha)  # adds trainable lora_kernel_a/b
    for layer in _keep_layers(model, keep_trainable):
        for v in layer.variables:
            v.trainable = True
    model.lora_settings = LoraSettings(rank, float(alpha or rank), targets, tuple(keep_trainable))
    return model


def merge_lora(model):
    """Folds each adapter into its kernel (W + alpha/r * A @ B, in float32) and removes it."""
    settings = _settings(model)
    for dense in lora_layers(model, settings.targets).values():
        a, b = np.asarray(dense.lora_kernel_a), np.asarray(dense.lora_kernel_b)
        stored = kernel_variable(dense)
        kernel = np.asarray(stored, np.float32) + (dense.lora_alpha / dense.lora_rank) * (a @ b)
        stored.assign(kernel.astype(stored.dtype))
        del dense.lora_kernel_a, dense.lora_kernel_b  # Keras untracks deleted variables
        dense.lora_enabled, dense.lora_rank = False, None
    for v in model.variables:
        v.trainable = True
    model.lora_settings = None
    return model


def _settings(model) -> LoraSettings:
    settings = getattr(model, "lora_settings", None)
    if settings is None:
        raise ValueError("LoRA is not enabled on this model (call enable_lora first)")
    return settings


def lora_state(model) -> dict[str, np.ndarray]:
    """The adapters (`h0.c_attn.lora_a` [in, r], `.lora_b` [r, out]) and the kept layers."""
    return {k: np.asarray(v) for k, v in _state_variables(model).items()}


def save_lora(model, path: str) -> None:
    """Writes the adapters alone to a safetensors file, with rank, alpha and targets."""
    from safetensors.numpy import save_file

    s = _settings(model)
    meta = {
        "format": FORMAT,
        "rank": str(s.rank),
        "alpha": str(s.alpha),
        "targets": json.dumps(list(s.targets)),
        "keep_trainable": json.dumps(list(s.keep_trainable)),
        "n_layer": str(len(_backbone(model).blocks)),
    }
    save_file(
        {k: np.ascontiguousarray(v) for k, v in lora_state(model).items()}, path, metadata=meta
    )


def _read_lora(path: str):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gpt2_tf LoRA file (format {meta.get('format')!r})")
    settings = LoraSettings(
        int(meta["rank"]),
        float(meta["alpha"]),
        tuple(json.loads(meta["targets"])),
        tuple(json.loads(meta["keep_trainable"])),
    )
    return settings, load_file(path)


def load_lora(model, path: str):
    """Loads adapters saved by `save_lora`; enables LoRA from the file if the model has none.

    A model whose LoRA has another rank, alpha or target set is refused, naming both.
    """
    settings, state = _read_lora(path)
    current = getattr(model, "lora_settings", None)
    if current is None:
        enable_lora(model, settings.rank, settings.alpha, settings.targets, settings.keep_trainable)
    elif (current.rank, current.alpha, current.targets) != (
        settings.rank,
        settings.alpha,
        settings.targets,
    ):
        raise ValueError(
            f"{path}: adapters of rank {settings.rank}, alpha {settings.alpha}, targets "
            f"{list(settings.targets)} do not fit this model's LoRA (rank {current.rank}, alpha "
            f"{current.alpha}, targets {list(current.targets)})"
        )
    expected = lora_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{path}: missing keys {missing[:10]}; unexpected keys {unexpected[:10]}")
    variables = _state_variables(model)
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{path}: key {key!r} has shape {value.shape}, the model expects "
                f"{expected[key].shape}"
            )
        variables[key].assign(value)
    return model


def _state_variables(model) -> dict[str, object]:
    s = _settings(model)
    out = {}
    for name, dense in lora_layers(model, s.targets).items():
        out[f"{name}.lora_a"], out[f"{name}.lora_b"] = dense.lora_kernel_a, dense.lora_kernel_b
    for layer_name in s.keep_trainable:
        for v in getattr(model, layer_name).variables:
            out[f"{layer_name}.{v.name}"] = v
    return out

"""GPT2Config: the model's hyper-parameters, with OpenAI's presets and the two file formats.

Field names follow Hugging Face's `GPT2Config` so that a `config.json` maps one to one; OpenAI's
`hparams.json` (`n_vocab`, `n_ctx`, ...) is translated on read and write.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# OpenAI's released sizes; `tiny` is for tests (full vocabulary, so the real tokenizer fits).
PRESETS: dict[str, dict[str, int]] = {
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
    "355M": dict(n_layer=24, n_head=16, n_embd=1024),
    "774M": dict(n_layer=36, n_head=20, n_embd=1280),
    "1558M": dict(n_layer=48, n_head=25, n_embd=1600),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=128),
}

# Hugging Face hub ids of the presets, so that `--init_from 124M` and `gpt2` mean the same shape.
HUB_IDS = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd, as in every OpenAI release
    dropout: float = 0.0  # one rate for embeddings, attention probabilities and residuals
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int = 50256

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPT2Config.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_inner is not None and self.n_inner <= 0:
            raise ValueError(f"GPT2Config.n_inner must be positive or None, got {self.n_inner}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPT2Config.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(
                f"GPT2Config.eos_token_id ({self.eos_token_id}) is outside the vocabulary "
                f"(size {self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPT2Config:
        if name not in PRESETS:
            raise ValueError(f"Unknown GPT2Config preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> GPT2Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- Hugging Face config.json -------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": "gelu_new",
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "bos_token_id": self.eos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": True,
            "scale_attn_weights": True,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> GPT2Config:
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{source}: model_type is {d.get('model_type')!r}, expected 'gpt2'")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{source}: activation_function {act!r} is not GPT-2's tanh GELU")
        for flag, want in (
            ("scale_attn_by_inverse_layer_idx", False),
            ("reorder_and_upcast_attn", False),
        ):
            if d.get(flag, want) != want:
                raise ValueError(f"{source}: {flag}={d[flag]!r} is not supported")
        eos = d.get("eos_token_id", 50256)
        return cls(
            vocab_size=d["vocab_size"],
            n_positions=d.get("n_positions", d.get("n_ctx", 1024)),
            n_embd=d["n_embd"],
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            n_inner=d.get("n_inner"),
            dropout=float(d.get("resid_pdrop", 0.0)),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            eos_token_id=eos if isinstance(eos, int) else 50256,
        )

    # ---- OpenAI hparams.json ------------------------------------------------------------------
    def to_openai_hparams(self) -> dict[str, int]:
        return {
            "n_vocab": self.vocab_size,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_layer": self.n_layer,
        }

    @classmethod
    def from_openai_hparams(cls, d: dict[str, Any], source: str = "hparams.json") -> GPT2Config:
        missing = [k for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer") if k not in d]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        return cls(
            vocab_size=d["n_vocab"],
            n_positions=d["n_ctx"],
            n_embd=d["n_embd"],
            n_head=d["n_head"],
            n_layer=d["n_layer"],
        )

    # ---- files --------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str) -> GPT2Config:
        """Reads a Hugging Face `config.json` or an OpenAI `hparams.json` (or a folder with one)."""
        if os.path.isdir(path):
            for name in ("config.json", "hparams.json"):
                if os.path.exists(os.path.join(path, name)):
                    path = os.path.join(path, name)
                    break
            else:
                raise FileNotFoundError(f"{path}: no config.json or hparams.json in this folder")
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if "n_vocab" in d:
            return cls.from_openai_hparams(d, source=path)
        return cls.from_hf_dict(d, source=path)

    def save_hf(self, folder: str) -> str:
        return _write_json(folder, "config.json", self.to_hf_dict())

    def save_openai(self, folder: str) -> str:
        return _write_json(folder, "hparams.json", self.to_openai_hparams())


def _write_json(folder: str, name: str, obj: dict) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    return path

"""GPT2Tokenizer: OpenAI's byte-level BPE, exact to the reference encoder.

The Python path runs on Hugging Face `tokenizers` (Rust), built from the vocabulary and merges
alone, so `<|endoftext|>` inside ordinary text stays ordinary text unless `allow_special=True`.
The in-graph path (`graph()`, see `tokenizer_graph.py`) gives the same ids inside a SavedModel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence

from gpt2_tf.core import hub
from gpt2_tf.tokenizer.vocab import (
    EOT,
    HF_FILES,
    OPENAI_FILES,
    TOKENIZER_JSON,
    default_source,
)


def _read_merges(path: str) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(
                    f"{path}: line {lineno}: a merge must be two symbols, got {line!r}"
                )
            merges.append((parts[0], parts[1]))
    return merges


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _from_tokenizer_json(path: str):
    """(encoder, merges, specials) of a byte-level BPE `tokenizer.json`; other kinds are refused."""
    d = _read_json(path)
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    if (
        model.get("type") != "BPE"
        or pre.get("type") != "ByteLevel"
        or not pre.get("use_regex", True)
    ):
        raise ValueError(
            f"{path}: model {model.get('type')!r} with pre_tokenizer {pre.get('type')!r} is not "
            "GPT-2's byte-level BPE; gpt2_tf supports only that tokenizer"
        )
    if pre.get("add_prefix_space"):
        raise ValueError(f"{path}: pre_tokenizer.add_prefix_space=true is not GPT-2's behaviour")
    # Settings that change ids; GPT-2 files have none of them, and silently ignoring one would
    # give ids that differ from transformers'.
    changes = {
        "normalizer": d.get("normalizer"),
        "model.dropout": model.get("dropout"),
        "model.byte_fallback": model.get("byte_fallback"),
        "model.ignore_merges": model.get("ignore_merges"),
        "non-special added_tokens": [
            t["content"] for t in d.get("added_tokens", []) if not t.get("special")
        ],
    }
    used = {k: v for k, v in changes.items() if v}
    if used:
        raise ValueError(
            f"{path}: {used} would change the ids; gpt2_tf reads GPT-2's byte-level "
            "BPE without them"
        )
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    specials = {t["content"]: t["id"] for t in d.get("added_tokens", []) if t.get("special")}
    return model["vocab"], merges, specials


class GPT2Tokenizer:
    """Byte-level BPE with OpenAI's pre-tokenizing regex.

    `encode(text)` treats all text as ordinary text; `encode(text, allow_special=True)` maps the
    special tokens (`<|endoftext|>`) to their ids, as tiktoken's `allowed_special="all"` does.
    """

    def __init__(
        self,
        encoder: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: dict[str, int] | None = None,
        source: str | None = None,
    ):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self.encoder = dict(encoder)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens or {})
        if EOT in self.encoder:
            self.special_tokens.setdefault(EOT, self.encoder[EOT])
        if EOT not in self.special_tokens:
            raise ValueError(f"{source or 'tokenizer'}: no {EOT} token in the vocabulary")
        self.source = source
        bpe = models.BPE(vocab=self.encoder, merges=self.merges)
        self._tok = Tokenizer(bpe)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        self._decoder_table = {i: t for t, i in self.encoder.items()}
        self._special_re = re.compile(
            "|".join(map(re.escape, sorted(self.special_tokens, key=len, reverse=True)))
        )

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | None = None) -> GPT2Tokenizer:
        """A folder with `encoder.json`+`vocab.bpe`, `vocab.json`+`merges.txt` or `tokenizer.json`,
        or a hub id. None means GPT-2's own vocabulary (see `vocab.default_source`)."""
        path = path or default_source()
        folder = hub.resolve(path, [*HF_FILES, TOKENIZER_JSON], what="tokenizer")
        has = lambda *names: all(os.path.exists(os.path.join(folder, n)) for n in names)  # noqa: E731
        if has(*OPENAI_FILES) or has(*HF_FILES):
            enc_name, merges_name = OPENAI_FILES if has(*OPENAI_FILES) else HF_FILES
            encoder = _read_json(os.path.join(folder, enc_name))
            merges = _read_merges(os.path.join(folder, merges_name))
            return cls(encoder, merges, source=folder)
        if has(TOKENIZER_JSON):
            encoder, merges, specials = _from_tokenizer_json(os.path.join(folder, TOKENIZER_JSON))
            return cls(encoder, merges, specials, source=folder)
        raise FileNotFoundError(
            f"{folder}: no tokenizer files; expected {' + '.join(OPENAI_FILES)}, "
            f"{' + '.join(HF_FILES)} or {TOKENIZER_JSON}"
        )

    def save_pretrained(self, folder: str) -> None:
        """Writes Hugging Face's `vocab.json` + `merges.txt` (+ a `tokenizer_config.json`)."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({**self.encoder, **self.special_tokens}, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": 1024,
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "add_prefix_space": False,
        }
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.special_tokens[EOT]

    @property
    def vocab_size(self) -> int:
        return max([*self.encoder.values(), *self.special_tokens.values()]) + 1

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the vocabulary, merges and special tokens: the same for OpenAI's and Hugging
        Face's file layouts. Prepared data records it, and loaders check it (hashing 50k entries
        takes ~0.4 s, so once per tokenizer)."""
        h = hashlib.sha256(json.dumps(self.encoder, sort_keys=True).encode())
        h.update("\n".join(f"{a} {b}" for a, b in self.merges).encode())
        h.update(json.dumps(self.special_tokens, sort_keys=True).encode())
        return h.hexdigest()

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if not allow_special:
            return self._tok.encode(text, add_special_tokens=False).ids
        ids, start = [], 0
        for m in self._special_re.finditer(text):
            ids += self._encode_plain(text[start : m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        return ids + self._encode_plain(text[start:])

    def _encode_plain(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids if text else []

    def encode_batch(self, texts: Iterable[str], allow_special: bool = False) -> list[list[int]]:
        texts = list(texts)
        if allow_special:
            return [self.encode(t, allow_special=True) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [
            i for i in ids if i not in self._decoder_table and i not in self.special_tokens.values()
        ]
        if bad:
            raise ValueError(
                f"decode: id(s) {bad[:5]} outside the vocabulary (size {self.vocab_size})"
            )
        # Special ids outside the BPE vocabulary (tokenizer.json variants) are spliced in as text.
        outside = {i: t for t, i in self.special_tokens.items() if i not in self._decoder_table}
        if not outside:
            return self._tok.decode(ids, skip_special_tokens=False)
        parts, run = [], []
        for i in ids:
            if i in outside:
                parts += [self._tok.decode(run, skip_special_tokens=False), outside[i]]
                run = []
            else:
                run.append(i)
        return "".join(parts) + self._tok.decode(run, skip_special_tokens=False)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def id_to_token(self, i: int) -> str:
        return self._decoder_table[i]

    # ---- in-graph path ------------------------------------------------------------------------
    @functools.cached_property
    def graph(self):
        """The TensorFlow path (strings in, ids out, and back), built once per tokenizer."""
        from gpt2_tf.tokenizer.graph import GraphTokenizer

        return GraphTokenizer(self.encoder, self.merges, self.special_tokens)

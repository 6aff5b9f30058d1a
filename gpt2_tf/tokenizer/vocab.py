"""GPT-2's vocabulary files: their names, the copy shipped with gpt2_tf, the byte-to-character
map of byte-level BPE. Shared by the Python tokenizer (`bpe.py`) and the in-graph one
(`graph.py`)."""

from __future__ import annotations

import functools
import os

EOT = "<|endoftext|>"
OPENAI_FILES = ("encoder.json", "vocab.bpe")
HF_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's map from each byte to a printable character (so BPE works on text, not bytes)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# OpenAI's GPT-2 vocabulary files, shipped with the package (see assets/gpt2/README.md).
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpt2")


def default_source() -> str:
    """GPT-2's vocabulary: $GPT2_TF_TOKENIZER when set, else OpenAI's two files shipped inside
    gpt2_tf, so the default works offline on any machine. The hub id `gpt2` works when online."""
    return os.environ.get("GPT2_TF_TOKENIZER") or BUNDLED

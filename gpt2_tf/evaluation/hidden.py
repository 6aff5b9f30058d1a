"""The last hidden states of many short token sequences, computed in packed rows.

Answer scoring and GPT-2 sentence embeddings run many short texts through the backbone. Padded to
the longest of a batch, most of the compute goes to padding; packed (`data.packing.pack_sequences`:
several sequences a row, attention within each, positions from 0) it goes to real tokens, and
each sequence gets exactly the hidden states it gets alone.
"""

from __future__ import annotations

import weakref

import numpy as np

from gpt2_tf.core.compiled import ModelFunction, for_model
from gpt2_tf.data.packing import pack_sequences
from gpt2_tf.model import speed

# Tokens a packed row holds (more when one sequence is longer; at most the model's context):
# long enough to hold several short texts, short enough that the [T, T] attention of a row
# stays a small part of its compute.
ROW_TOKENS = 256


def _backbone_step(backbone) -> ModelFunction:
    ref = weakref.ref(backbone)

    def make():
        fn = lambda x: ref()(x)  # noqa: E731 - inference: no dropout
        return ModelFunction(backbone, fn, also=(speed.enabled,), reduce_retracing=True)

    return for_model(backbone, "packed_hidden_states", make)


def hidden_states(model, sequences, batch_rows: int = 16, row_tokens: int = ROW_TOKENS):
    """Each sequence's last hidden states, numpy [len(sequence), n_embd] in the model's compute
    dtype, from packed rows of `row_tokens` (rounded up to the longest sequence, a multiple of 8),
    `batch_rows` rows a forward pass. `model` is a GPT-2 backbone or a model that has one."""
    backbone = getattr(model, "backbone", model)
    limit = backbone.config.n_positions
    longest = max(map(len, sequences), default=0)
    if longest > limit:
        raise ValueError(f"a sequence of {longest} tokens exceeds the model's n_positions {limit}")
    width = min(limit, max(-(-longest // 8) * 8, row_tokens))
    x, where = pack_sequences(sequences, width)
    members: dict[int, list[int]] = {}
    for i, (row, _) in enumerate(where):
        members.setdefault(row, []).append(i)
    step, out = _backbone_step(backbone), [None] * len(sequences)
    for first in range(0, len(x["token_ids"]), batch_rows):
        batch = {k: v[first : first + batch_rows] for k, v in x.items()}
        hidden = np.asarray(step(batch))  # [rows, width, E]
        for row in range(first, first + len(batch["token_ids"])):
            for i in members[row]:
                start = where[i][1]
                out[i] = hidden[row - first, start : start + len(sequences[i])]
    return out
